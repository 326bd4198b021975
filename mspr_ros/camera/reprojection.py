"""Bring an image from a robot's camera into the pinhole a network was trained with (ROS-free).

The network learnt from one pinhole camera after the evaluation transform (shorter side to
``resize``, centre crop ``crop``; :func:`mspr_ros.camera.model.network_camera` gives that
pinhole). A robot camera may be wider, of another resolution and have lens distortion. A
:class:`Reprojection` maps each pixel of the training pinhole (the *target*) to where its ray
falls in the robot's image (the *source*), once per camera pair, and :meth:`Reprojection.apply`
then costs one ``cv2.remap`` per frame (and one ``cv2.resize`` first when the source is much
finer than the target, so that the remap's bilinear sampling does not alias).

The mapping is rotation-free: the target looks along the source's optical axis. Target pixels
that the source does not see (outside its image, or beyond the radius where a strong distortion
polynomial folds back on itself) come out black, and :attr:`Reprojection.coverage` counts them
out. Imports numpy, OpenCV and the camera model only.
"""
from collections import OrderedDict
from dataclasses import dataclass, field
import math
import threading
from typing import Optional

import cv2
import numpy as np

from mspr_ros.camera.model import CameraModel

#: A source camera *covers* the training field of view when it sees at least this fraction of
#: the target pixels. A 2 % sliver at the corners is within what the centre crop already varies
#: between images of other aspect ratios; more would mean the network sees black where it learnt
#: scenery.
MIN_COVERAGE = 0.98

#: A target pixel is valid only if undistorting the source position it maps to gives back its own
#: ray within this many target pixels. Past the radius where a distortion polynomial turns, rays
#: map to source pixels of other rays (folded content); the round trip tells them apart.
ROUND_TRIP_TOLERANCE_PX = 0.5

#: Map value given to invalid target pixels: far enough outside any image that bilinear sampling
#: with BORDER_CONSTANT reads only the border value 0, and well inside the int16 range of the
#: fixed-point maps.
_OUTSIDE = -1000.0

#: The prescale shrinks the source when its focal length is at least this many times the
#: target's: bilinear sampling of a finer image skips pixels and aliases.
_PRESCALE_FROM = 2


@dataclass(frozen=True)
class Reprojection:
    """Maps from a source camera's image to a pinhole target, computed once by :meth:`build`.

    Attributes:
        source: the camera whose images :meth:`apply` takes (``source.width x source.height``).
        target: the pinhole :meth:`apply` renders (``target.width x target.height``).
        prescale: integer factor the source image is shrunk by (``cv2.INTER_AREA``) before the
            remap; 1 for none.
        coverage: fraction of target pixels the source sees (the others are black).
    """

    source: CameraModel
    target: CameraModel
    prescale: int
    coverage: float
    _map1: np.ndarray = field(compare=False, repr=False)
    _map2: np.ndarray = field(compare=False, repr=False)
    _valid: np.ndarray = field(compare=False, repr=False)

    @classmethod
    def build(cls, source: CameraModel, target: CameraModel,
              prescale: Optional[int] = None) -> 'Reprojection':
        """Compute the maps from ``source`` images to the pinhole ``target``.

        Args:
            source: the robot's camera, any distortion model.
            target: a pinhole (usually :func:`~mspr_ros.camera.model.network_camera`).
            prescale: integer shrink factor of the source before the remap; ``None`` chooses
                ``floor(min(source.fx / target.fx, source.fy / target.fy))`` when that is at
                least 2, else 1.

        Raises:
            ValueError: ``target`` has distortion, or ``prescale`` is not a positive integer
                that leaves a non-empty image.
        """
        if not target.is_pinhole:
            raise ValueError(f'the reprojection target must be a pinhole, got distortion model '
                             f'{target.distortion_model!r}')
        if prescale is None:
            ratio = min(source.fx / target.fx, source.fy / target.fy)
            prescale = math.floor(ratio) if ratio >= _PRESCALE_FROM else 1
        elif isinstance(prescale, bool) or not isinstance(prescale, int) or prescale < 1:
            raise ValueError(f'prescale must be a positive integer, got {prescale!r}')
        width, height = source.width // prescale, source.height // prescale
        if width < 1 or height < 1:
            raise ValueError(f'prescale {prescale} leaves no image of the {source.width}x'
                             f'{source.height} source')
        sampled = source if prescale == 1 else source.scaled(width, height)
        map_x, map_y = _float_maps(sampled, target)
        valid = _valid_pixels(sampled, target, map_x, map_y)
        map_x[~valid] = _OUTSIDE
        map_y[~valid] = _OUTSIDE
        map1, map2 = cv2.convertMaps(map_x, map_y, cv2.CV_16SC2)
        for array in (map1, map2, valid):
            array.setflags(write=False)
        return cls(source, target, int(prescale), float(valid.mean()), map1, map2, valid)

    @property
    def covers(self) -> bool:
        """Whether the source sees at least :data:`MIN_COVERAGE` of the target pixels."""
        return self.coverage >= MIN_COVERAGE

    @property
    def valid_mask(self) -> np.ndarray:
        """Read-only bool ``target.height x target.width``: the target pixels the source sees."""
        return self._valid

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """Return the ``target.height x target.width x 3`` uint8 image of a source image.

        Bilinear sampling; target pixels the source does not see are black. The result is a new
        C-contiguous array.

        Raises:
            ValueError: ``rgb`` is not a ``source.height x source.width x 3`` uint8 array.
        """
        expected = (self.source.height, self.source.width, 3)
        if not isinstance(rgb, np.ndarray) or rgb.shape != expected or rgb.dtype != np.uint8:
            got = (f'{rgb.shape[1]}x{rgb.shape[0]} image of shape {rgb.shape} and dtype '
                   f'{rgb.dtype}' if isinstance(rgb, np.ndarray) and rgb.ndim >= 2
                   else f'{type(rgb).__name__} {getattr(rgb, "shape", "")}'.rstrip())
            raise ValueError(f'the reprojection takes {self.source.width}x{self.source.height} '
                             f'(width x height) RGB uint8 images of its source camera, got a '
                             f'{got}')
        if not rgb.flags.c_contiguous:
            rgb = np.ascontiguousarray(rgb)
        if self.prescale > 1:
            rgb = cv2.resize(rgb, (self.source.width // self.prescale,
                                   self.source.height // self.prescale),
                             interpolation=cv2.INTER_AREA)
        return cv2.remap(rgb, self._map1, self._map2, cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def _float_maps(source: CameraModel, target: CameraModel) -> tuple[np.ndarray, np.ndarray]:
    """Return float32 maps: the source pixel (x, y) of every target pixel, rotation-free."""
    size = (target.width, target.height)
    if source.distortion_model == 'equidistant':
        return cv2.fisheye.initUndistortRectifyMap(source.matrix(), source.distortion_vector(),
                                                   np.eye(3), target.matrix(), size,
                                                   cv2.CV_32FC1)
    distortion = np.zeros(5) if source.is_pinhole else source.distortion_vector()
    return cv2.initUndistortRectifyMap(source.matrix(), distortion, np.eye(3), target.matrix(),
                                       size, cv2.CV_32FC1)


def _valid_pixels(source: CameraModel, target: CameraModel, map_x: np.ndarray,
                  map_y: np.ndarray) -> np.ndarray:
    """Return the bool mask of target pixels whose source position is inside and not folded.

    Inside: within [0, W - 1] x [0, H - 1], where bilinear sampling reads image pixels only.
    Not folded: undistorting the source position gives back the target pixel's own ray.
    """
    valid = (np.isfinite(map_x) & np.isfinite(map_y) & (map_x >= 0) & (map_y >= 0)
             & (map_x <= source.width - 1) & (map_y <= source.height - 1))
    index = np.flatnonzero(valid)
    if index.size:
        pixels = np.stack([map_x.ravel()[index], map_y.ravel()[index]], axis=1)
        back = source.normalized_coordinates(pixels)
        u = (index % target.width).astype(np.float64)
        v = (index // target.width).astype(np.float64)
        error = np.hypot((back[:, 0] - (u - target.cx) / target.fx) * target.fx,
                         (back[:, 1] - (v - target.cy) / target.fy) * target.fy)
        # NaN (a failed undistortion) compares False: invalid.
        valid.ravel()[index] = error <= ROUND_TRIP_TOLERANCE_PX
    return valid


class ReprojectionCache:
    """The :class:`Reprojection` of each recent (source, target) pair, built once and reused.

    A robot has one camera, rarely a second, so a small LRU suffices. Thread-safe: the node calls
    :meth:`get` from its inference thread. ``builds`` counts the reprojections built.
    """

    def __init__(self, maxsize: int = 4) -> None:
        """Keep at most ``maxsize`` (>= 1) reprojections, the least recently used dropped."""
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f'cache maxsize must be a positive integer, got {maxsize!r}')
        self.maxsize = maxsize
        self.builds = 0
        self._entries: 'OrderedDict[tuple[CameraModel, CameraModel], Reprojection]' = \
            OrderedDict()
        self._lock = threading.Lock()

    def get(self, source: CameraModel, target: CameraModel) -> Reprojection:
        """Return the reprojection from ``source`` to ``target``, building it on first use.

        Raises:
            ValueError: as :meth:`Reprojection.build` (nothing is cached then).
        """
        key = (source, target)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
            # Built under the lock: two threads asking for a new pair build it once.
            entry = Reprojection.build(source, target)
            self.builds += 1
            self._entries[key] = entry
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
            return entry

    def __len__(self) -> int:
        """Return the number of cached reprojections."""
        with self._lock:
            return len(self._entries)
