"""The camera the network saw in training, per scene: what ``mspr-export`` writes in the bundle.

Each training sample carries the camera its dataset states (``mspr_training.data.cameras``); the
evaluation transform (shorter side to ``resize``, centre crop) turns it into the pinhole of the
``crop x crop`` network input (``mspr_ros.camera.model.network_camera``). A scene's training
camera is the median of its images' network cameras. The node reprojects a robot's camera into
it, so it is recorded only when it means something:

- every image of the scene states its camera, and none has lens distortion (a distorted image
  fed as it is has no pinhole to reproject into);
- the images agree: a focal-length or principal-point spread above
  :data:`MIXED_CAMERA_SPREAD` is reported as a mixed-camera scene (the median is still
  recorded: it is what most images looked like).

Otherwise the scene gets no camera and the reason is logged and kept in the provenance.
"""
from dataclasses import dataclass
import logging
from typing import Any, Iterable, Sequence

import numpy as np

from mspr_ros.camera.model import CameraModel, network_camera
from mspr_ros.preprocess import PreprocessingConfig
from mspr_training.data import DatasetError
from mspr_training.datasets import read_split

LOGGER = logging.getLogger(__name__)

#: Relative spread of the focal length (and of the principal point, relative to the crop) above
#: which a scene's images count as taken with different cameras. Cambridge's per-image
#: reconstructions vary by a fraction of this; a second lens varies by far more.
MIXED_CAMERA_SPREAD = 0.02


@dataclass(frozen=True)
class SceneCamera:
    """The training camera of one scene, or why there is none.

    Attributes:
        camera: the network-input pinhole (crop x crop), or None.
        images: how many training images the scene has.
        distinct: how many distinct cameras they state.
        spread: largest relative deviation of a focal length or principal point from the median.
        reason: why ``camera`` is None, or a warning about a mixed-camera scene; None when clean.
    """

    camera: CameraModel | None
    images: int
    distinct: int
    spread: float
    reason: str | None

    def summary(self) -> dict[str, Any]:
        """Return the JSON-ready record for the bundle provenance."""
        return {'camera': None if self.camera is None else self.camera.to_dict(),
                'images': self.images, 'distinct_cameras': self.distinct,
                'spread': round(self.spread, 6), 'note': self.reason}


def scene_camera(cameras: Sequence[CameraModel | None], preprocessing: PreprocessingConfig
                 ) -> SceneCamera:
    """Return the training camera of one scene's images (``cameras``: one per image)."""
    count = len(cameras)
    unknown = sum(camera is None for camera in cameras)
    known = [camera for camera in cameras if camera is not None]
    distinct = set(known)
    if not count:
        return SceneCamera(None, 0, 0, 0.0, 'the scene has no training images')
    if unknown:
        return SceneCamera(None, count, len(distinct), 0.0,
                           f'{unknown} of {count} training images state no camera')
    distorted = sorted({c.distortion_model for c in distinct if not c.is_pinhole})
    if distorted:
        return SceneCamera(None, count, len(distinct), 0.0,
                           f'training images have lens distortion ({", ".join(distorted)}): the '
                           'network learnt a distorted view, which no pinhole describes')
    by_camera = {camera: network_camera(camera, preprocessing.resize, preprocessing.crop)
                 for camera in distinct}
    values = np.array([[by_camera[c].fx, by_camera[c].fy, by_camera[c].cx, by_camera[c].cy]
                       for c in known])
    median = np.median(values, axis=0)
    crop = preprocessing.crop
    spread = float(max(np.max(np.abs(values[:, :2] - median[:2]) / median[:2]),
                       np.max(np.abs(values[:, 2:] - median[2:]) / crop)))
    camera = CameraModel.pinhole(crop, crop, *median)
    reason = None
    if spread > MIXED_CAMERA_SPREAD:
        reason = (f'{len(distinct)} cameras with a spread of {100 * spread:.1f} % (more than '
                  f'{100 * MIXED_CAMERA_SPREAD:.0f} %): the recorded camera is their median')
    return SceneCamera(camera, count, len(distinct), spread, reason)


def training_cameras(samples: Iterable[Any], scene_names: Sequence[str],
                     preprocessing: PreprocessingConfig) -> dict[str, SceneCamera]:
    """Return every scene's :class:`SceneCamera` from its training samples, logging problems."""
    cameras: dict[str, list] = {name: [] for name in scene_names}
    for sample in samples:
        cameras.setdefault(sample.scene, []).append(sample.camera)
    result = {name: scene_camera(cameras[name], preprocessing) for name in scene_names}
    for name, record in result.items():
        if record.reason:
            LOGGER.warning('training camera of scene %r: %s', name, record.reason)
    return result


def bundle_cameras(records: dict[str, SceneCamera]) -> dict[str, CameraModel]:
    """Return the cameras a bundle stores: the scenes whose training camera is known."""
    return {name: record.camera for name, record in records.items() if record.camera is not None}


def checkpoint_cameras(state: dict[str, Any], cfg: Any, root: Any
                       ) -> tuple[dict[str, CameraModel], dict[str, Any]]:
    """Return the bundle's training cameras and their provenance record.

    A checkpoint written since training records its cameras carries them; for an older one
    they are computed from the training split when the data is at hand, else none is recorded
    (the node then says it cannot check the camera).
    """
    records = state.get('training_camera')
    origin = 'recorded by mspr-train from the training images'
    if records is None:
        try:
            samples = read_split(cfg.data, cfg.data.train_split, root)
        except DatasetError as error:
            LOGGER.warning('no training camera in the checkpoint and no training data to '
                           'read it from (%s): the bundle records none', error)
            return {}, {'origin': f'unknown: {error}', 'scenes': {}}
        computed = training_cameras([s for scene in samples.values() for s in scene],
                                    list(state['scene_names']),
                                    cfg.augmentation.preprocessing())
        records = {name: record.summary() for name, record in computed.items()}
        origin = 'computed by mspr-export from the training images (older checkpoint)'
    cameras = {name: CameraModel.from_dict(record['camera'])
               for name, record in records.items() if record['camera'] is not None}
    return cameras, {'origin': origin, 'scenes': records}
