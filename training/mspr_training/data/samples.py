"""Posed image samples shared by every dataset reader.

Every reader returns poses as ``T_scene_cam`` (camera optical frame -> scene frame, see
docs/architecture.md): ``position`` is the camera centre (3,), ``orientation`` the unit quaternion
x, y, z, w of ``R_scene_cam`` in the canonical sign of ``mspr_ros.geometry.quaternions``.
"""
from dataclasses import dataclass
import functools
from pathlib import Path
import re

import cv2
import numpy as np

from mspr_ros.camera.model import CameraModel
from mspr_ros.camera.reprojection import Reprojection
from mspr_ros.geometry.transforms import Transform

#: Largest accepted deviation of a file's quaternion norm from 1 (files store ~6 decimals; a
#: larger error means wrong columns, not rounding).
QUATERNION_NORM_TOLERANCE = 1e-2


class DatasetError(Exception):
    """Malformed dataset input; the message names the file and, where it applies, the line."""


#: A split name, as it appears inside a split file's name (``dataset_<split>.txt``,
#: ``<Split>Split.txt``): letters, digits, '_' and '-', so that it names a file in the scene
#: folder.
SPLIT_NAME = re.compile(r'^[A-Za-z0-9_-]+$')


def checked_split(split: str) -> str:
    """Return ``split``, or raise ValueError when it cannot be part of a split file's name.

    Besides the datasets' own 'train' and 'test', a split of one's own (walks recorded where the
    robot works, to calibrate the covariance on: ``mspr-export --calibration-split``) is read
    from a split file named the same way.
    """
    if not isinstance(split, str) or not SPLIT_NAME.match(split):
        raise ValueError(f'split must be a name of letters, digits, _ and -, got {split!r}')
    return split


def where(path, line=None):
    """Return ``'path'`` or ``'path:line'`` for error messages."""
    return f'{path}:{line}' if line is not None else f'{path}'


@dataclass(frozen=True, eq=False)
class PoseSample:
    """One posed image of a scene.

    Attributes:
        scene: scene name.
        sequence: sequence name inside the scene (e.g. ``seq1``, ``seq-03``, a bag file name).
        position: camera centre in the scene frame, metres, float64 (3,).
        orientation: unit quaternion x, y, z, w of ``R_scene_cam`` with w >= 0, float64 (4,).
        image_path: image file, or None when the pixels are held in ``image``.
        image: H x W x 3 uint8 RGB pixels (bag samples), or None when read from ``image_path``.
        stamp_ns: capture time in nanoseconds (bag samples), else None.
        frame: camera frame id of the image (bag samples: ``header.frame_id``), else ''.
        camera: the camera the image was taken with, at the image's size, or None when the
            dataset does not say (``mspr_training.data.cameras``).
        source_camera: set when the stored pixels come from another camera than ``camera``
            (mixed-camera training): :func:`load_rgb` reprojects them into ``camera``.
    """

    scene: str
    sequence: str
    position: np.ndarray
    orientation: np.ndarray
    image_path: Path | None = None
    image: np.ndarray | None = None
    stamp_ns: int | None = None
    frame: str = ''
    camera: CameraModel | None = None
    source_camera: CameraModel | None = None

    def matrix(self) -> np.ndarray:
        """Return ``T_scene_cam`` as a 4 x 4 float64 homogeneous matrix."""
        return Transform(self.position, self.orientation).as_matrix()


def checked_quaternion(values, path, line=None) -> np.ndarray:
    """Return ``values`` (4,) normalised; DatasetError when not finite or far from unit norm."""
    quat = np.asarray(values, dtype=np.float64)
    norm = float(np.linalg.norm(quat))
    if not np.all(np.isfinite(quat)) or abs(norm - 1.0) > QUATERNION_NORM_TOLERANCE:
        raise DatasetError(
            f'{where(path, line)}: quaternion {quat.tolist()} is not a unit quaternion '
            f'(norm {norm:.6g})')
    return quat / norm


def parse_floats(tokens, path, line=None, what='value') -> np.ndarray:
    """Parse string tokens into float64, DatasetError naming the first non-numeric token."""
    values = []
    for token in tokens:
        try:
            value = float(token)
        except ValueError:
            raise DatasetError(
                f'{where(path, line)}: {what} {token!r} is not a number') from None
        if not np.isfinite(value):
            raise DatasetError(f'{where(path, line)}: {what} {token!r} is not finite')
        values.append(value)
    return np.asarray(values, dtype=np.float64)


def require_image(path: Path, source, line=None) -> Path:
    """Return ``path`` if it is a file, else DatasetError naming the listing file and line."""
    if not path.is_file():
        raise DatasetError(f'{where(source, line)}: image {path} does not exist')
    return path


@functools.lru_cache(maxsize=16)
def _reprojection(source: CameraModel, target: CameraModel) -> Reprojection:
    """Build the remap between two cameras once per pair (a dataset has few cameras)."""
    return Reprojection.build(source, target)


def load_rgb(sample: PoseSample) -> np.ndarray:
    """Return the sample's pixels as an H x W x 3 uint8 RGB array.

    Bag samples return their decoded ``image``; file samples are decoded with OpenCV. A missing
    or undecodable file raises DatasetError naming it. With ``source_camera`` set, the pixels
    are reprojected into ``camera`` (``mspr_ros.camera.reprojection``, as the node does).
    """
    rgb = _stored_rgb(sample)
    if sample.source_camera is None:
        return rgb
    try:
        return _reprojection(sample.source_camera, sample.camera).apply(rgb)
    except ValueError as error:
        raise DatasetError(f'{sample.image_path or sample.scene}: {error}') from error


def _stored_rgb(sample: PoseSample) -> np.ndarray:
    """Return the pixels as stored (decoded, never reprojected)."""
    if sample.image is not None:
        return sample.image
    if sample.image_path is None:
        raise DatasetError(f'sample of scene {sample.scene!r} has neither image nor image_path')
    path = Path(sample.image_path)
    if not path.is_file():
        raise DatasetError(f'{path}: image file does not exist')
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f'{path}: cannot decode image')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
