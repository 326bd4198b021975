"""Which camera model each frame is read with: the node's ``camera_model`` rule (ROS-free).

``camera_info`` messages are offered as they arrive (``offer``); each image asks ``decide``
which camera describes it. The image_transport pairing: the ``camera_info`` with the image's
stamp, else the latest one at or before it (drivers that publish it less often), else the
latest one. The modes:

- ``ignore``: never a camera: the image is resized and centre-cropped (the behaviour before
  cameras were read), whatever ``camera_info`` says.
- ``auto`` (default): the camera when ``camera_info`` has arrived and the bundle knows its
  training camera; until then, resize and crop, and the status says why.
- ``require``: no frame is answered without a camera that covers the training field of view.

A ``camera_info`` that states another image size than the image's does not describe it: that
frame is rejected in every mode but ``ignore`` (no silent guess). A camera that cannot cover the
training field of view (``Reprojection.covers``) is used under ``auto`` with a warning and
rejected under ``require``.

``camera_info`` is another topic than the image: its message for an image can arrive after the
image. ``wait_for`` gives it a short deadline when it is expected (image_transport's
CameraSubscriber delivers an image only with its ``camera_info``): while none has arrived, if a
publisher is on the topic or the mode is ``require``; and once the driver has been seen to stamp
its ``camera_info`` like its images (an exact stamp match), for each image newer than the latest
``camera_info``. A driver that publishes ``camera_info`` less often than images never matches a
stamp, so its images do not wait; nor do images of a camera with no ``camera_info`` publisher.
"""
from collections import deque
from dataclasses import dataclass
import threading
from typing import Callable

from mspr_ros.camera.model import CameraModel

CAMERA_MODES = ('auto', 'require', 'ignore')
#: camera_info messages kept for stamp pairing (a second of a 10 Hz driver).
HISTORY = 10

#: Rejection reasons (the node's diagnostics count frames by them).
NO_CAMERA_INFO = 'no_camera_info'
CAMERA_MISMATCH = 'camera_info_mismatch'
CAMERA_COVERAGE = 'camera_coverage'
REJECT_REASONS = (NO_CAMERA_INFO, CAMERA_MISMATCH, CAMERA_COVERAGE)


@dataclass(frozen=True)
class CameraDecision:
    """How one frame is read.

    Attributes:
        camera: the camera to reproject from, or None (resize and crop, or rejected).
        reject: a rejection reason of :data:`REJECT_REASONS`, or None when the frame goes on.
        status: the camera state in words, for diagnostics and the rejection log.
        warning: whether ``status`` is a fault of the set-up (a camera that does not fit); the
            states before cameras were read (no ``camera_info``, an old bundle) are not.
    """

    camera: CameraModel | None
    reject: str | None
    status: str
    warning: bool = False


class CameraSelection:
    """The ``camera_model`` rule over a stream of ``camera_info`` messages; thread-safe."""

    def __init__(self, mode: str, topic: str, training_problem: str | None,
                 coverage: Callable[[CameraModel], float], min_coverage: float) -> None:
        """Apply ``mode`` to cameras from ``topic``.

        Args:
            mode: one of :data:`CAMERA_MODES`.
            topic: the ``camera_info`` topic (named in statuses).
            training_problem: why the bundle has no training camera, None when it has one.
            coverage: fraction of the training field of view a camera sees (built once per
                camera by the caller, e.g. ``Localizer.reprojection(camera).coverage``).
            min_coverage: the least coverage that counts as covering.

        Raises:
            ValueError: an unknown mode, or ``require`` with a bundle that has no training camera.
        """
        if mode not in CAMERA_MODES:
            raise ValueError(f'camera_model must be one of {CAMERA_MODES}, got {mode!r}')
        if mode == 'require' and training_problem is not None:
            raise ValueError(f"camera_model is 'require' but {training_problem}; use 'auto' or "
                             "'ignore', or export the model again")
        self.mode = mode
        self.topic = topic
        self._training_problem = training_problem
        self._coverage = coverage
        self._min_coverage = min_coverage
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._history: deque = deque(maxlen=HISTORY)
        # Whether the latest pairing found a camera_info of the image's own stamp.
        self._stamped_like_images = False

    def offer(self, stamp_ns: int, camera: CameraModel) -> None:
        """Remember the camera a ``camera_info`` stamped ``stamp_ns`` states."""
        with self._arrived:
            self._history.append((int(stamp_ns), camera))
            self._arrived.notify_all()

    def wait_for(self, stamp_ns: int, timeout_s: float, publisher: Callable[[], bool]) -> bool:
        """Wait up to ``timeout_s`` for the ``camera_info`` of an image when it is expected.

        Args:
            stamp_ns: the image's stamp.
            timeout_s: the deadline (0: never wait).
            publisher: returns whether a publisher is on the ``camera_info`` topic now (asked
                only while no ``camera_info`` has arrived).

        Returns:
            whether a ``camera_info`` at or after the image's stamp is here (True at once when
            none is expected).
        """
        def arrived() -> bool:
            return bool(self._history) and self._history[-1][0] >= stamp_ns

        with self._arrived:
            if self.mode == 'ignore' or arrived():
                return True
            expected = ((self.mode == 'require' or publisher()) if not self._history
                        else self._stamped_like_images)
            if not expected or timeout_s <= 0.0:
                return True
            return self._arrived.wait_for(arrived, timeout_s)

    def camera_at(self, stamp_ns: int) -> CameraModel | None:
        """Return the camera paired with an image stamped ``stamp_ns`` (None: none arrived)."""
        with self._lock:
            history = list(self._history)
            self._stamped_like_images = any(entry[0] == stamp_ns for entry in history)
        if not history:
            return None
        earlier = [entry for entry in history if entry[0] <= stamp_ns]
        pick = max(earlier, key=lambda entry: entry[0]) if earlier else history[-1]
        return pick[1]

    def decide(self, stamp_ns: int, width: int, height: int) -> CameraDecision:
        """Return how the ``width x height`` image stamped ``stamp_ns`` is read."""
        if self.mode == 'ignore':
            return CameraDecision(None, None, "ignored (camera_model 'ignore'): resize and crop")
        if self._training_problem is not None:
            return CameraDecision(None, None, f'cannot check the camera: '
                                  f'{self._training_problem}; resize and crop')
        camera = self.camera_at(stamp_ns)
        if camera is None:
            status = f'no camera_info on {self.topic}'
            if self.mode == 'require':
                return CameraDecision(None, NO_CAMERA_INFO, f"{status} (camera_model 'require')",
                                      warning=True)
            return CameraDecision(None, None, f'{status} yet: resize and crop')
        if (camera.width, camera.height) != (width, height):
            return CameraDecision(None, CAMERA_MISMATCH, f'camera_info on {self.topic} is for '
                                  f'{camera.width} x {camera.height} images, the image is '
                                  f'{width} x {height}', warning=True)
        coverage = self._coverage(camera)
        described = (f'{camera.distortion_model} {camera.width} x {camera.height}, '
                     f'{100 * coverage:.1f} % of the training view covered')
        if coverage < self._min_coverage:
            status = (f'the camera ({described}) cannot cover the training field of view (at '
                      f'least {100 * self._min_coverage:.0f} % needed)')
            if self.mode == 'require':
                return CameraDecision(None, CAMERA_COVERAGE, status, warning=True)
            return CameraDecision(camera, None, status + ': reprojected anyway', warning=True)
        return CameraDecision(camera, None, f'reprojected to the training camera ({described})')
