"""A camera's intrinsics and lens distortion, from plain fields (ROS-free).

One class, :class:`CameraModel`, describes every camera the project meets: the camera a network
was trained with (always a pinhole), a robot's camera as its ``sensor_msgs/CameraInfo`` states it
(``plumb_bob``, ``rational_polynomial`` or ``equidistant`` distortion), and the rendered world's
cameras. Projection and unprojection go through OpenCV, so the distortion models mean exactly
what the ROS camera calibration (which writes them with OpenCV) means.

Pixel convention (OpenCV, as ``CameraInfo``): pixel (u, v) has its centre at image coordinates
(u, v); the image spans [-0.5, W - 0.5]. An optical-frame point (x, y, z) (x right, y down,
z forward) projects through a pinhole to ``u = fx x / z + cx``, ``v = fy y / z + cy``, with the
distortion applied to the normalised coordinates (x / z, y / z) in between.
"""
from dataclasses import dataclass, fields
import functools
import math
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

#: Distortion models and their coefficient counts; names as ``CameraInfo.distortion_model``.
#: ``none`` is a pinhole. ``plumb_bob``: k1 k2 p1 p2 k3; ``rational_polynomial``: k1 k2 p1 p2
#: k3 k4 k5 k6; ``equidistant``: the fisheye model's k1 k2 k3 k4 (OpenCV ``cv2.fisheye``).
DISTORTION_MODELS = {'none': 0, 'plumb_bob': 5, 'rational_polynomial': 8, 'equidistant': 4}

#: Iterations and tolerance of the iterative undistortion: strong wide-angle distortion needs far
#: more than OpenCV's default of 5 iterations to converge to a hundredth of a pixel.
#: Largest |x / z| of a ray that ray_directions represents (tan 89 deg).
MAX_RAY_SLOPE = math.tan(math.radians(89.0))

_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-10)

#: OpenCV 4's iterative undistortion with criteria; OpenCV 5 has no such function and gives
#: ``undistortPoints`` a ``criteria`` argument instead (its 4th positional one is ``dst``, so the
#: criteria must go by keyword there).
_UNDISTORT_POINTS_ITER = getattr(cv2, 'undistortPointsIter', None)


@dataclass(frozen=True)
class CameraModel:
    """Intrinsics in pixels of a ``width x height`` image, and the lens distortion.

    Attributes:
        width, height: image size in pixels.
        fx, fy: focal lengths in pixels; cx, cy: principal point (pixel-centre convention).
        distortion_model: a key of :data:`DISTORTION_MODELS`.
        distortion: the model's coefficients (empty for ``none``).
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = 'none'
    distortion: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        """Validate and normalise the fields; ValueError names the field and the value."""
        for name in ('width', 'height'):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f'camera {name} must be a positive integer, got {value!r}')
            object.__setattr__(self, name, int(value))
        for name in ('fx', 'fy', 'cx', 'cy'):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ValueError(f'camera {name} must be finite, got {value!r}')
            object.__setattr__(self, name, value)
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f'camera focal lengths must be positive, got fx={self.fx} '
                             f'fy={self.fy} (an uncalibrated camera publishes zeros)')
        if self.distortion_model not in DISTORTION_MODELS:
            raise ValueError(f'camera distortion_model {self.distortion_model!r} is not one of '
                             f'{sorted(DISTORTION_MODELS)}')
        coefficients = tuple(float(c) for c in self.distortion)
        if not all(math.isfinite(c) for c in coefficients):
            raise ValueError(f'camera distortion coefficients must be finite, got {coefficients}')
        expected = DISTORTION_MODELS[self.distortion_model]
        if len(coefficients) != expected:
            raise ValueError(f'camera distortion model {self.distortion_model!r} takes '
                             f'{expected} coefficients, got {len(coefficients)}')
        object.__setattr__(self, 'distortion', coefficients)

    @classmethod
    def pinhole(cls, width: int, height: int, fx: float, fy: float, cx: float, cy: float
                ) -> 'CameraModel':
        """Return a camera without distortion."""
        return cls(width, height, fx, fy, cx, cy)

    @classmethod
    def from_fov(cls, width: int, height: int, horizontal_fov_deg: float = 65.0
                 ) -> 'CameraModel':
        """Return a square-pixel pinhole with the principal point at the image centre."""
        if not 0.0 < horizontal_fov_deg < 180.0:
            raise ValueError(f'horizontal field of view must be in (0, 180) degrees, got '
                             f'{horizontal_fov_deg}')
        focal = (width / 2.0) / math.tan(math.radians(horizontal_fov_deg) / 2.0)
        return cls(int(width), int(height), focal, focal, (width - 1) / 2.0, (height - 1) / 2.0)

    @classmethod
    def from_camera_info(cls, width: int, height: int, distortion_model: str,
                         d: Sequence[float], k: Sequence[float]) -> 'CameraModel':
        """Build from the fields of a ``sensor_msgs/CameraInfo`` (``k``: 9 values, row-major).

        ``r`` and ``p`` are not read: the model is the raw camera, and the reprojection is
        rotation-free (a stereo rectification is not what a monocular network was trained
        on). A ``plumb_bob`` with fewer than 5 coefficients (some drivers send 4) is padded with
        zeros; all-zero coefficients, or an empty model with none, mean a pinhole.

        Raises:
            ValueError: an uncalibrated camera (zero size or focal), a skewed ``k``, an unknown
                distortion model or a wrong coefficient count, each named.
        """
        k = np.asarray(k, dtype=np.float64).reshape(-1)
        if k.size != 9:
            raise ValueError(f'camera_info k must have 9 values, got {k.size}')
        k = k.reshape(3, 3)
        if not np.any(k):
            raise ValueError('camera_info k is all zeros: the camera is not calibrated')
        if abs(k[0, 1]) > 1e-9 or np.any(np.abs(k[2] - (0, 0, 1)) > 1e-9) or k[1, 0] != 0:
            raise ValueError(f'camera_info k is not a pinhole matrix without skew: '
                             f'{k.ravel().tolist()}')
        if int(width) < 1 or int(height) < 1:
            raise ValueError(f'camera_info has no image size ({width} x {height}): the camera '
                             'is not calibrated')
        coefficients = [float(c) for c in d]
        model = str(distortion_model)
        if model == 'plumb_bob' and len(coefficients) < 5:
            coefficients += [0.0] * (5 - len(coefficients))
        if model in ('', 'none', 'plumb_bob', 'rational_polynomial') and not any(coefficients):
            model, coefficients = 'none', []
        return cls(int(width), int(height), k[0, 0], k[1, 1], k[0, 2], k[1, 2], model,
                   tuple(coefficients))

    @property
    def is_pinhole(self) -> bool:
        """Whether the camera has no distortion."""
        return self.distortion_model == 'none'

    def matrix(self) -> np.ndarray:
        """Return the 3 x 3 camera matrix K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def distortion_vector(self) -> np.ndarray:
        """Return the coefficients as OpenCV takes them (float64, possibly empty)."""
        return np.asarray(self.distortion, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (:meth:`from_dict` reads it back)."""
        return {'width': self.width, 'height': self.height, 'fx': self.fx, 'fy': self.fy,
                'cx': self.cx, 'cy': self.cy, 'distortion_model': self.distortion_model,
                'distortion': list(self.distortion)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'CameraModel':
        """Build from :meth:`to_dict` output; ValueError on a missing or unknown key."""
        if not isinstance(data, Mapping):
            raise ValueError(f'a camera must be a mapping, got {type(data).__name__}')
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f'unknown camera keys {unknown}')
        missing = sorted({'width', 'height', 'fx', 'fy', 'cx', 'cy'} - set(data))
        if missing:
            raise ValueError(f'camera misses {missing}')
        values = dict(data)
        values['distortion'] = tuple(values.get('distortion', ()))
        return cls(**values)

    def horizontal_fov_deg(self) -> float:
        """Return the pinhole horizontal field of view (distortion not counted), degrees."""
        left = math.atan((self.cx + 0.5) / self.fx)
        right = math.atan((self.width - 0.5 - self.cx) / self.fx)
        return math.degrees(left + right)

    def scaled(self, width: int, height: int) -> 'CameraModel':
        """Return this camera for the same image resized to ``width x height``.

        Pixel centres scale about the image corner: u' = (u + 0.5) sx - 0.5.
        """
        sx, sy = width / self.width, height / self.height
        return CameraModel(width, height, self.fx * sx, self.fy * sy,
                           (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
                           self.distortion_model, self.distortion)

    def cropped(self, left: int, top: int, width: int, height: int) -> 'CameraModel':
        """Return this camera for the ``width x height`` window at (``left``, ``top``)."""
        return CameraModel(width, height, self.fx, self.fy, self.cx - left, self.cy - top,
                           self.distortion_model, self.distortion)

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """Project optical-frame points (N, 3) with z > 0 to pixels (N, 2), distortion included."""
        points = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
        if self.is_pinhole:
            return np.stack([self.fx * points[:, 0] / points[:, 2] + self.cx,
                             self.fy * points[:, 1] / points[:, 2] + self.cy], axis=1)
        zero = np.zeros(3)
        if self.distortion_model == 'equidistant':
            pixels, _ = cv2.fisheye.projectPoints(points.reshape(-1, 1, 3), zero, zero,
                                                  self.matrix(), self.distortion_vector())
        else:
            pixels, _ = cv2.projectPoints(points.reshape(-1, 1, 3), zero, zero, self.matrix(),
                                          self.distortion_vector())
        return pixels.reshape(-1, 2)

    def normalized_coordinates(self, pixels: np.ndarray) -> np.ndarray:
        """Return the undistorted normalised coordinates (x / z, y / z) (N, 2) of pixels (N, 2)."""
        pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 1, 2)
        if self.is_pinhole:
            flat = pixels.reshape(-1, 2)
            return np.stack([(flat[:, 0] - self.cx) / self.fx,
                             (flat[:, 1] - self.cy) / self.fy], axis=1)
        if self.distortion_model == 'equidistant':
            points = cv2.fisheye.undistortPoints(pixels, self.matrix(), self.distortion_vector(),
                                                 criteria=_UNDISTORT_CRITERIA)
        elif _UNDISTORT_POINTS_ITER is not None:  # OpenCV 4 (ROS's python3-opencv)
            points = _UNDISTORT_POINTS_ITER(pixels, self.matrix(), self.distortion_vector(),
                                            None, None, _UNDISTORT_CRITERIA)
        else:  # OpenCV 5 removed undistortPointsIter: undistortPoints takes the criteria
            points = cv2.undistortPoints(pixels, self.matrix(), self.distortion_vector(),
                                         criteria=_UNDISTORT_CRITERIA)
        return points.reshape(-1, 2)

    def ray_directions(self) -> np.ndarray:
        """Return read-only float32 (H, W, 3) optical-frame rays of every pixel, with z = 1.

        With z = 1 a ray parameter equals the depth along the optical axis. Cached per camera.
        """
        return _ray_directions(self)


@functools.lru_cache(maxsize=8)
def _ray_directions(camera: CameraModel) -> np.ndarray:
    """Compute :meth:`CameraModel.ray_directions` once per camera."""
    u, v = np.meshgrid(np.arange(camera.width, dtype=np.float64),
                       np.arange(camera.height, dtype=np.float64))
    normalised = camera.normalized_coordinates(np.stack([u.ravel(), v.ravel()], axis=1))
    # A fisheye's pixels beyond 90 deg off the axis have no z = 1 ray (OpenCV returns ~1e16).
    if not np.all(np.isfinite(normalised)) or np.abs(normalised).max() > MAX_RAY_SLOPE:
        raise ValueError(f'the {camera.distortion_model} {camera.width} x {camera.height} '
                         'camera sees rays too far off its axis (beyond 89 deg) for z = 1 rays')
    directions = np.empty((camera.height, camera.width, 3), dtype=np.float32)
    directions[..., 0] = normalised[:, 0].reshape(camera.height, camera.width)
    directions[..., 1] = normalised[:, 1].reshape(camera.height, camera.width)
    directions[..., 2] = 1.0
    directions.setflags(write=False)
    return directions


def evaluation_crop(width: int, height: int, resize: int, crop: int
                    ) -> tuple[int, int, int, int]:
    """Return (resized width, resized height, left, top) of the evaluation transform.

    torchvision's ``resize(image, [resize])`` brings the shorter side to ``resize`` and the
    longer to ``int(resize * long / short)``; ``center_crop`` then starts at
    ``int(round((size - crop) / 2))`` on each axis. Written out here so the camera the network
    sees is computed, not assumed (``test_camera_model`` checks it against torchvision).
    """
    if width <= height:
        new_width, new_height = resize, int(resize * height / width)
    else:
        new_width, new_height = int(resize * width / height), resize
    left = int(round((new_width - crop) / 2.0))
    top = int(round((new_height - crop) / 2.0))
    return new_width, new_height, left, top


def network_camera(camera: CameraModel, resize: int, crop: int) -> CameraModel:
    """Return the pinhole a network sees after resize-shorter-side and centre crop.

    Raises:
        ValueError: ``camera`` has distortion (the evaluation transform does not remove it).
    """
    if not camera.is_pinhole:
        raise ValueError('the evaluation transform of a distorted camera is not a pinhole; '
                         'undistort it first')
    new_width, new_height, left, top = evaluation_crop(camera.width, camera.height, resize, crop)
    return camera.scaled(new_width, new_height).cropped(left, top, crop, crop)
