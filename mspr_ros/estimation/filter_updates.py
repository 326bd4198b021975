"""Which per-frame poses a filter that takes every message as a new measurement may get.

robot_localization's EKF (and any Kalman filter) treats each pose it receives as an independent
measurement. The regression errors of frames with similar views are not independent (issue 25,
``mspr_ros.estimation.error_correlation``): a robot standing still sends the same error 30 times
a second, and the fused ``~/pose`` re-counts its whole window with every message. So the filter
gets a thinned stream (the node's ``~/pose_update``): a frame's own estimate, only when its view
changed enough since the last frame sent of the same scene that the two errors are mostly
independent, and with its covariance inflated for what correlation is left.

For a frame of scene ``s`` and the last frame sent of that scene, with ``s``'s model:

- ``rho = correlation(d, a, t)``, ``d`` and ``a`` the distance and rotation angle between the
  two *odometry* base poses (``odom <- base`` at the two image stamps: odometry measures how far
  the view moved far better than two noisy per-frame estimates do), ``t`` the stamp difference;
- the frame is sent when the decaying part ``(rho - floor) / (1 - floor)`` is at most
  ``max_correlation`` (the floor, a bias the scene shares, never decays, so it cannot be waited
  out);
- its covariance is the frame's times ``(1 + rho) / (1 - rho)``: the AR(1) design effect, the
  information a sample adds beyond its correlated predecessor.

A per-block model (``ErrorCorrelation.rotation``) is judged by the block that is the more alike:
the larger decaying part decides, the larger ``rho`` inflates, a floor of 1 in either block
sends nothing.

The first frame of a scene since the last ``reset`` (start, relocalization, clock jump,
activation) is sent as it is (``rho = 0``). A scene whose model has ``floor == 1`` (the
``one_frame`` fallback of a bundle without a learned model: every frame errs alike) sends
nothing: one view would reach the filter as many measurements and no wait would make the next
one new. Thread-safe: the inference worker offers frames while executor callbacks reset.
"""
from dataclasses import dataclass
import math
import threading
from typing import Dict, Mapping, Optional

import numpy as np

from mspr_ros.estimation.error_correlation import ErrorCorrelation
from mspr_ros.geometry.transforms import Transform

# FilterUpdate.reason values.
FIRST = 'first'                  # first frame of its scene since the last reset: sent
DECORRELATED = 'decorrelated'    # the view changed enough: sent
CORRELATED = 'correlated'        # too alike to the last one sent: held back
NO_MODEL = 'no_learned_model'    # floor 1 (one_frame): never sent
STALE = 'stale_stamp'            # older than the last frame sent of its scene: held back

#: ``max_correlation`` of the node's ``pose_update.max_correlation`` parameter.
DEFAULT_MAX_CORRELATION = 0.5


@dataclass(frozen=True)
class FilterUpdate:
    """The decision on one frame.

    Attributes:
        publish: whether the frame goes to the filter.
        covariance: (6, 6) the covariance to send with it (the frame's, inflated); None when
            held back.
        correlation: ``rho`` to the last frame sent of its scene (0 for the first one).
        reason: one of FIRST, DECORRELATED, CORRELATED, NO_MODEL, STALE.
        detail: the decision in words, with the numbers, for logs and diagnostics.
    """

    publish: bool
    covariance: Optional[np.ndarray]
    correlation: float
    reason: str
    detail: str


@dataclass(frozen=True)
class _Sent:
    stamp_ns: int
    odometry: Transform


def inflation(rho: float) -> float:
    """Return the AR(1) design effect ``(1 + rho) / (1 - rho)`` (inf for ``rho >= 1``)."""
    return math.inf if rho >= 1.0 else (1.0 + rho) / (1.0 - rho)


def view_change(a: Transform, b: Transform) -> tuple[float, float]:
    """Return the distance (m) and rotation angle (rad) between two poses."""
    distance = float(np.linalg.norm(np.asarray(a.translation) - np.asarray(b.translation)))
    dot = min(1.0, abs(float(np.dot(a.rotation, b.rotation))))
    return distance, 2.0 * math.acos(dot)


class FilterUpdates:
    """The thinning rule of the module docstring, one last-sent frame per scene."""

    def __init__(self, models: Mapping[str, ErrorCorrelation], default: ErrorCorrelation,
                 max_correlation: float = DEFAULT_MAX_CORRELATION) -> None:
        """Use ``models`` (scene -> model), ``default`` for a scene without one.

        Raises:
            ValueError: ``max_correlation`` outside [0, 1).
        """
        self._lock = threading.Lock()
        self._last: Dict[str, _Sent] = {}
        self._setting: Optional[tuple] = None
        self.configure(models, default, max_correlation)

    def configure(self, models: Mapping[str, ErrorCorrelation], default: ErrorCorrelation,
                  max_correlation: float) -> bool:
        """Use other models or threshold; return whether anything changed (then reset)."""
        limit = float(max_correlation)
        if not 0.0 <= limit < 1.0:
            raise ValueError(f'max_correlation must be in [0, 1), got {max_correlation!r}')
        setting = (dict(models), default, limit)
        with self._lock:
            if self._setting == setting:
                return False
            self._setting = setting
            self._last = {}
        return True

    def model(self, scene: str) -> ErrorCorrelation:
        """Return the model of ``scene`` (the default one when it has none)."""
        models, default, _ = self._setting
        return models.get(scene, default)

    def silent_scenes(self, scenes) -> list:
        """Return those of ``scenes`` whose model sends nothing (``floor == 1``, either block)."""
        return [scene for scene in scenes
                if any(block.floor >= 1.0 for block in self.model(scene).blocks)]

    def reset(self) -> None:
        """Forget the frames sent: the next frame of every scene is sent (a restart)."""
        with self._lock:
            self._last = {}

    def offer(self, scene: str, stamp_ns: int, T_odom_base: Transform,
              covariance: np.ndarray) -> FilterUpdate:
        """Decide on one accepted frame (see the module docstring).

        Args:
            scene: the frame's scene.
            stamp_ns: its image stamp.
            T_odom_base: ``odom <- base`` at that stamp.
            covariance: (6, 6) its own pose covariance.
        """
        stamp = int(stamp_ns)
        with self._lock:
            models, default, limit = self._setting
            model = models.get(scene, default)
            blocks = model.blocks
            if any(block.floor >= 1.0 for block in blocks):
                return FilterUpdate(False, None, 1.0, NO_MODEL, (
                    f'no learned error correlation for scene {scene} ({model.source}): every '
                    'frame may err alike, so a filter would count one view many times'))
            last = self._last.get(scene)
            if last is None:
                self._last[scene] = _Sent(stamp, T_odom_base)
                return FilterUpdate(True, np.array(covariance, dtype=np.float64), 0.0, FIRST,
                                    f'first frame of scene {scene} since the last restart')
            elapsed_s = (stamp - last.stamp_ns) * 1e-9
            if elapsed_s < 0.0:
                return FilterUpdate(False, None, 1.0, STALE, (
                    f'stamp {stamp} ns is older than the last update of scene {scene} '
                    f'({last.stamp_ns} ns)'))
            distance, angle = view_change(T_odom_base, last.odometry)
            alike = [float(block.correlation(distance, angle, elapsed_s)) for block in blocks]
            rho = max(alike)
            decaying = max((value - block.floor) / (1.0 - block.floor)
                           for value, block in zip(alike, blocks))
            moved = (f'{distance:.3f} m, {math.degrees(angle):.1f} deg, {elapsed_s:.2f} s since '
                     f'the last update of scene {scene}')
            if decaying > limit:
                return FilterUpdate(False, None, rho, CORRELATED, (
                    f'error correlation {decaying:.2f} > {limit:.2f} after {moved}'))
            self._last[scene] = _Sent(stamp, T_odom_base)
            factor = inflation(rho)
            return FilterUpdate(True, np.array(covariance, dtype=np.float64) * factor, rho,
                                DECORRELATED, (f'error correlation {decaying:.2f} <= '
                                               f'{limit:.2f} after {moved}; covariance x '
                                               f'{factor:.2f}'))
