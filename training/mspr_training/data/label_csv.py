"""Reader for MS-Transformer label CSV files.

Header ``scene,split,seq,img_path,t1,t2,t3,q1,q2,q3,q4``: ``t1..t3`` is the camera centre,
``q1..q4`` a w-first quaternion (``q1 = w``), ``img_path`` relative to the dataset root. The
rotation convention follows the source dataset: Cambridge rows copy the Cambridge text files
(world-to-camera), 7-Scenes rows were converted from camera-to-world matrices.
"""
import csv
from pathlib import Path

from scipy.spatial.transform import Rotation

from mspr_ros.geometry.quaternions import quaternion_from_rotation
from mspr_training.data.samples import (checked_quaternion, DatasetError, parse_floats, PoseSample,
                                        require_image, where)

COLUMNS = ('scene', 'split', 'seq', 'img_path', 't1', 't2', 't3', 'q1', 'q2', 'q3', 'q4')
ROTATIONS = ('camera_to_world', 'world_to_camera', 'auto')
#: Scene names of Cambridge Landmarks; ``rotation='auto'`` treats their rows as world-to-camera.
CAMBRIDGE_SCENES = frozenset(
    ('KingsCollege', 'OldHospital', 'ShopFacade', 'StMarysChurch', 'GreatCourt', 'Street'))


def read_label_csv(csv_path, dataset_root, rotation='auto', check_images=True
                   ) -> list[PoseSample]:
    """Read an MS-Transformer label CSV into samples (rows in file order).

    Args:
        csv_path: the label file.
        dataset_root: folder that ``img_path`` is relative to.
        rotation: how to read ``q1..q4``: ``'camera_to_world'`` (already ``R_scene_cam``),
            ``'world_to_camera'`` (inverted), or ``'auto'``: world-to-camera for the Cambridge
            scene names in ``CAMBRIDGE_SCENES``, camera-to-world for every other scene.
        check_images: require every listed image to exist.

    Raises:
        DatasetError: missing file or header columns, wrong column count, non-numeric value,
            non-unit quaternion or missing image; the message names the file and line.
    """
    if rotation not in ROTATIONS:
        raise ValueError(f'rotation must be one of {ROTATIONS}, got {rotation!r}')
    csv_path = Path(csv_path)
    dataset_root = Path(dataset_root)
    if not csv_path.is_file():
        raise DatasetError(f'{csv_path}: label file does not exist')
    with csv_path.open(newline='') as stream:
        rows = list(csv.reader(stream))
    if not rows:
        raise DatasetError(f'{csv_path}: empty file, expected header {",".join(COLUMNS)}')
    header = [name.strip() for name in rows[0]]
    missing = [name for name in COLUMNS if name not in header]
    if missing:
        raise DatasetError(
            f'{where(csv_path, 1)}: header lacks column(s) {", ".join(missing)}; expected '
            f'{",".join(COLUMNS)}')
    column = {name: header.index(name) for name in COLUMNS}
    samples = []
    for number, row in enumerate(rows[1:], start=2):
        if not row or not ''.join(row).strip():
            continue
        if len(row) != len(header):
            raise DatasetError(
                f'{where(csv_path, number)}: expected {len(header)} columns, got {len(row)}')
        scene = row[column['scene']].strip()
        values = parse_floats([row[column[name]] for name in COLUMNS[4:]], csv_path, number)
        image_path = dataset_root / row[column['img_path']].strip()
        if check_images:
            require_image(image_path, csv_path, number)
        samples.append(PoseSample(
            scene=scene,
            sequence=row[column['seq']].strip(),
            position=values[:3],
            orientation=_orientation(values[3:], scene, rotation, csv_path, number),
            image_path=image_path))
    return samples


def _orientation(wxyz, scene, rotation, path, line):
    """Return the xyzw ``R_scene_cam`` quaternion of a row's w-first ``q1..q4``."""
    w, x, y, z = checked_quaternion(wxyz, path, line)
    file_rotation = Rotation.from_quat([x, y, z, w])
    world_to_camera = rotation == 'world_to_camera' or (
        rotation == 'auto' and scene in CAMBRIDGE_SCENES)
    return quaternion_from_rotation(file_rotation.inv() if world_to_camera else file_rotation)
