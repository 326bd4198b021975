"""Reader for the Cambridge Landmarks layout (``<Scene>/dataset_<split>.txt``).

File format: three header lines (``Visual Landmark Dataset V1``, ``ImageFile, Camera Position
[X Y Z W P Q R]``, a blank line), then one row per image: ``seqN/frameXXXXX.png X Y Z W P Q R``.

Convention (VisualSFM / NVM): ``X Y Z`` is the camera centre in the scene frame; ``W P Q R`` is a
w-first quaternion of the **world-to-camera** rotation ``R_cam_scene``. Our convention needs
``R_scene_cam``, so the reader returns ``R_file^T`` (the inverse rotation) and keeps the centre.

Cameras: from the scene's ``reconstruction.nvm`` when it has one (per image;
``mspr_training.data.cameras``), else unknown (``camera=None``).
"""
from pathlib import Path

from scipy.spatial.transform import Rotation

from mspr_ros.geometry.quaternions import quaternion_from_rotation
from mspr_training.data.cameras import CambridgeCameras
from mspr_training.data.samples import (checked_quaternion, checked_split, DatasetError,
                                        parse_floats, PoseSample, require_image, where)

HEADER_LINES = 3
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')


def cambridge_orientation(wpqr, path=None, line=None):
    """Return our xyzw ``R_scene_cam`` quaternion (4,) from a Cambridge w-first ``R_cam_scene``."""
    w, p, q, r = checked_quaternion(wpqr, path, line)
    return quaternion_from_rotation(Rotation.from_quat([p, q, r, w]).inv())


def split_file_name(split: str) -> str:
    """Return the file that lists a split's images in a scene folder."""
    return f'dataset_{checked_split(split)}.txt'


def read_cambridge(scene_dir, split='train', check_images=True) -> list[PoseSample]:
    """Read ``scene_dir/dataset_<split>.txt`` into samples named after the scene folder.

    Args:
        scene_dir: folder of one scene (e.g. ``.../KingsCollege``).
        split: ``'train'``, ``'test'`` or a split of one's own (``dataset_<split>.txt``).
        check_images: require every listed image to exist.

    Raises:
        DatasetError: missing file or header, a row without 8 fields, a non-numeric value, a
            non-unit quaternion or a missing image; the message names the file and line.
    """
    scene_dir = Path(scene_dir)
    listing = scene_dir / split_file_name(split)
    if not listing.is_file():
        raise DatasetError(f'{listing}: split file does not exist')
    lines = listing.read_text().splitlines()
    _check_header(listing, lines)
    cameras = CambridgeCameras(scene_dir)
    samples = []
    for number, text in enumerate(lines[HEADER_LINES:], start=HEADER_LINES + 1):
        fields = text.split()
        if not fields:
            continue
        if len(fields) != 8:
            raise DatasetError(
                f'{where(listing, number)}: expected 8 fields (image X Y Z W P Q R), '
                f'got {len(fields)}')
        values = parse_floats(fields[1:], listing, number)
        image_path = scene_dir / fields[0]
        camera = None
        if check_images:
            require_image(image_path, listing, number)
            camera = cameras.camera(fields[0], image_path)
        samples.append(PoseSample(
            scene=scene_dir.name,
            sequence=Path(fields[0]).parent.as_posix(),
            position=values[:3],
            orientation=cambridge_orientation(values[3:], listing, number),
            image_path=image_path, camera=camera))
    if not samples:
        raise DatasetError(f'{listing}: no image rows after the header')
    return samples


def _check_header(listing, lines):
    """Raise DatasetError unless the first three lines are a header rather than image rows."""
    if len(lines) < HEADER_LINES:
        raise DatasetError(
            f'{listing}: missing the {HEADER_LINES}-line header (file has {len(lines)} lines)')
    for number, text in enumerate(lines[:HEADER_LINES], start=1):
        fields = text.split()
        if fields and fields[0].lower().endswith(IMAGE_SUFFIXES):
            raise DatasetError(
                f'{where(listing, number)}: missing the {HEADER_LINES}-line header '
                f'(found an image row)')
