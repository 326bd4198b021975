"""The camera each dataset format says its images were taken with.

A pose regressor learns where things appear in the image, so the camera is part of what it
learns; training records it (``mspr_training.training_camera``) and the node brings other cameras
to it. Each format states its camera differently:

- **7-Scenes** ships no intrinsics file. Its authors (Shotton et al., CVPR 2013, and the dataset
  page) give the Kinect colour camera as focal length 585 px and principal point (320, 240) at
  640 x 480, without distortion: :data:`SEVEN_SCENES_CAMERA`. A ``camera.json`` in the scene
  folder (our extension, :func:`read_camera_file`; ``mspr-synth`` writes one, and a user whose
  recording in this layout came from another camera writes one) takes precedence.
- **Cambridge Landmarks** ships ``<Scene>/reconstruction.nvm``, the VisualSFM reconstruction:
  one line per image with its focal length in pixels (square pixels, principal point at the
  image centre, as VisualSFM models cameras). :func:`read_nvm_focals` reads it; the focal is
  taken in pixels of the images as they are stored beside it (a dataset copy whose images were
  resized needs its NVM focal scaled alike). Without the file the camera is unknown: the
  bundle then records none for the scene, and says so.
- **rosbag2 recordings** carry ``sensor_msgs/CameraInfo`` beside the image topic
  (``mspr_training.data.rosbag``).
- **MS-Transformer label CSVs** name no camera: unknown.
"""
import functools
import json
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image

from mspr_ros.camera.model import CameraModel
from mspr_training.data.samples import DatasetError, where

#: The 7-Scenes colour camera as its authors state it (585 px, (320, 240), 640 x 480).
SEVEN_SCENES_CAMERA = CameraModel(640, 480, 585.0, 585.0, 320.0, 240.0)
#: Our per-scene camera file: ``CameraModel.to_dict()`` as JSON.
CAMERA_FILE = 'camera.json'
NVM_FILE = 'reconstruction.nvm'
LOGGER = logging.getLogger(__name__)


def read_camera_file(path) -> CameraModel:
    """Return the camera a ``camera.json`` states; DatasetError naming the file otherwise."""
    path = Path(path)
    try:
        return CameraModel.from_dict(json.loads(path.read_text()))
    except OSError as error:
        raise DatasetError(f'{path}: cannot read the camera file: {error}') from error
    except (TypeError, ValueError) as error:
        raise DatasetError(f'{path}: not a camera description: {error}') from error


@functools.lru_cache(maxsize=4096)
def image_size(path) -> tuple[int, int]:
    """Return (width, height) of an image file from its header (the pixels are not decoded)."""
    try:
        with Image.open(path) as image:
            return image.size
    except OSError as error:
        raise DatasetError(f'{path}: cannot read the image size: {error}') from error


def camera_for_image(camera: CameraModel, image_path) -> CameraModel | None:
    """Return ``camera`` scaled to the size of the image at ``image_path``, or None.

    A dataset's documented camera describes its images at their shipped size; a copy resized
    by a constant factor keeps the geometry, scaled. Another aspect ratio is not a resize of
    that camera: the images' camera is then unknown (None), with a warning.
    """
    width, height = image_size(image_path)
    if (width, height) == (camera.width, camera.height):
        return camera
    if not math.isclose(width / height, camera.width / camera.height, rel_tol=0.01):
        LOGGER.warning('%s: image is %d x %d, not a resize of the %d x %d camera the dataset '
                       'states: its camera is unknown', image_path, width, height, camera.width,
                       camera.height)
        return None
    return camera.scaled(width, height)


def seven_scenes_camera(scene_dir) -> CameraModel:
    """Return the scene's ``camera.json`` camera, else the 7-Scenes Kinect camera."""
    path = Path(scene_dir) / CAMERA_FILE
    return read_camera_file(path) if path.is_file() else SEVEN_SCENES_CAMERA


def _stem(name: str) -> str:
    """Return an image name without its extension: the NVM lists ``.jpg`` for ``.png`` files."""
    path = Path(name.replace('\\', '/'))
    return path.with_suffix('').as_posix()


def read_nvm_focals(path) -> dict[str, float]:
    """Return ``{image path without extension: focal length px}`` from an NVM_V3 file.

    Reads the header and the first model's camera list, one line per camera:
    ``<image> <focal> <qw qx qy qz> <cx cy cz> <radial distortion> 0``; the points that follow
    are not needed. DatasetError names the file and line of a malformed entry.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise DatasetError(f'{path}: cannot read: {error}') from error
    if not lines or not lines[0].startswith('NVM_V3'):
        raise DatasetError(f'{where(path, 1)}: not an NVM_V3 file')
    number = 1
    while number < len(lines) and not lines[number].strip():
        number += 1
    try:
        count = int(lines[number].split()[0])
    except (IndexError, ValueError):
        raise DatasetError(f'{where(path, number + 1)}: expected the camera count') from None
    focals = {}
    for line in range(number + 1, number + 1 + count):
        fields = lines[line].split() if line < len(lines) else []
        try:
            focal = float(fields[1])
        except (IndexError, ValueError):
            raise DatasetError(f'{where(path, line + 1)}: expected "<image> <focal> ..."'
                               ) from None
        if not math.isfinite(focal) or focal <= 0:
            raise DatasetError(f'{where(path, line + 1)}: focal length {fields[1]} is not '
                               'positive')
        focals[_stem(fields[0])] = focal
    return focals


class CambridgeCameras:
    """The camera of each image of a Cambridge scene, from its ``reconstruction.nvm``."""

    def __init__(self, scene_dir) -> None:
        """Read the scene's NVM file when it has one (else every camera is unknown)."""
        path = Path(scene_dir) / NVM_FILE
        self.path = path if path.is_file() else None
        self._focals = read_nvm_focals(path) if self.path else {}

    def camera(self, relative_image: str, image_path) -> CameraModel | None:
        """Return the image's pinhole, or None when the NVM does not list it."""
        focal = self._focals.get(_stem(relative_image))
        if focal is None:
            return None
        width, height = image_size(image_path)
        return CameraModel(width, height, focal, focal, (width - 1) / 2.0, (height - 1) / 2.0)


class BagCameras:
    """The cameras a bag's ``sensor_msgs/CameraInfo`` topic states over time.

    An image takes the camera of the ``camera_info`` with its stamp (the image_transport
    pairing); a driver that publishes ``camera_info`` less often than images gives the latest
    one at or before the image, and an image before the first one gets the first.
    """

    def __init__(self, stamps_ns: list[int], cameras: list[CameraModel], topic: str) -> None:
        """Hold ``cameras`` (stamp-sorted) read from ``topic``."""
        order = np.argsort(np.asarray(stamps_ns, dtype=np.int64), kind='stable')
        self.stamps_ns = np.asarray(stamps_ns, dtype=np.int64)[order]
        self.cameras = [cameras[i] for i in order]
        self.topic = topic

    def __len__(self) -> int:
        """Return how many messages stated a camera."""
        return len(self.cameras)

    def at(self, stamp_ns: int) -> CameraModel | None:
        """Return the camera of an image stamped ``stamp_ns`` (None when the bag has none)."""
        if not self.cameras:
            return None
        index = int(np.searchsorted(self.stamps_ns, stamp_ns, side='right')) - 1
        return self.cameras[max(index, 0)]
