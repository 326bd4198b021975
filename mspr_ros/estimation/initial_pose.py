"""An initial pose (RViz "2D Pose Estimate", ``/initialpose``) as AMCL users expect it (ROS-free).

Once set, the prior holds, carried along by odometry, until a frame confirms it or the frames
agree on another place:

- a candidate within ``gate_mahalanobis`` of the prior (Mahalanobis distance of the 6-D error
  x, y, z, rotation vector, under the sum of the prior's and the candidate's covariances) is
  consistent: it is accepted and the prior has done its job;
- an inconsistent candidate is rejected (reason ``initial_pose``), unless it completes a run of
  ``agreement_frames`` consecutive inconsistent candidates that agree with each other (each
  within the same gate of the previous one, carried by odometry): the robot is elsewhere, the
  prior was wrong, and that candidate is accepted;
- a relocalization request (``~/relocalize``) clears the prior.
"""
from dataclasses import dataclass
import math
import threading
from typing import Any, Optional, Tuple

import numpy as np

from mspr_ros.estimation.gating import GateDecision
from mspr_ros.geometry.covariance import validate_covariance
from mspr_ros.geometry.transforms import map_to_odom, Transform

INITIAL_POSE = 'initial_pose'


def pose_error(candidate: Transform, reference: Transform) -> np.ndarray:
    """Return the 6-D error candidate - reference: x, y, z, rotation vector (parent frame)."""
    rotation = candidate.rotation_object * reference.rotation_object.inv()
    return np.concatenate([candidate.translation - reference.translation,
                           rotation.as_rotvec()])


def mahalanobis(error: np.ndarray, covariance: np.ndarray) -> float:
    """``sqrt(e^T C^+ e)``; the pseudo-inverse tolerates unestimated (huge or zero) axes."""
    return float(math.sqrt(max(float(error @ np.linalg.pinv(covariance) @ error), 0.0)))


@dataclass(frozen=True)
class _Prior:
    T_map_odom: Transform     # the prior's map <- odom, so odometry carries it along
    covariance: np.ndarray


class InitialPoseGuard:
    """Holds an initial pose and decides which candidates it lets through. Thread-safe."""

    def __init__(self, gate_mahalanobis: float = 3.0, agreement_frames: int = 3) -> None:
        """Gate at ``gate_mahalanobis`` (> 0, finite); ``agreement_frames`` >= 1."""
        self.configure(gate_mahalanobis, agreement_frames)
        self._lock = threading.Lock()
        self._prior: Optional[_Prior] = None
        self._run_map_odom: Optional[Transform] = None
        self._run_length = 0

    def configure(self, gate_mahalanobis: float, agreement_frames: int) -> None:
        """Change the gate and the agreement count (parameters changed at run time)."""
        gate = float(gate_mahalanobis)
        if not (math.isfinite(gate) and gate > 0.0):
            raise ValueError(f'gate_mahalanobis must be finite and > 0, got {gate_mahalanobis!r}')
        if int(agreement_frames) < 1:
            raise ValueError(f'agreement_frames must be >= 1, got {agreement_frames!r}')
        self.gate = gate
        self.agreement_frames = int(agreement_frames)

    @property
    def active(self) -> bool:
        """Whether a prior is set and not yet confirmed or overruled."""
        with self._lock:
            return self._prior is not None

    def set(self, T_map_base: Transform, covariance: Any, T_odom_base: Transform) -> None:
        """Set the prior: base pose in the map, its 6x6 covariance, odom <- base now."""
        cov = validate_covariance(covariance, 'initial pose covariance')
        with self._lock:
            self._prior = _Prior(map_to_odom(T_map_base, T_odom_base), cov)
            self._run_map_odom, self._run_length = None, 0

    def clear(self) -> None:
        """Drop the prior (relocalization request, reset)."""
        with self._lock:
            self._prior = None
            self._run_map_odom, self._run_length = None, 0

    def check(self, T_map_base: Transform, covariance: np.ndarray,
              T_odom_base: Transform) -> Tuple[GateDecision, bool]:
        """Decide on a candidate (base pose in the map, its covariance, odom <- base).

        Returns the decision and whether the candidate overruled the prior (accepted because
        enough frames agree elsewhere: a relocalization).
        """
        with self._lock:
            prior = self._prior
            if prior is None:
                return GateDecision(True, None, ''), False
            distance = mahalanobis(pose_error(T_map_base, prior.T_map_odom @ T_odom_base),
                                   prior.covariance + covariance)
            if distance <= self.gate:
                self._prior, self._run_map_odom, self._run_length = None, None, 0
                return GateDecision(True, None, f'consistent with the initial pose '
                                    f'(Mahalanobis {distance:.2f})'), False
            agrees = self._run_map_odom is not None and mahalanobis(
                pose_error(T_map_base, self._run_map_odom @ T_odom_base),
                2.0 * covariance) <= self.gate
            self._run_length = self._run_length + 1 if agrees else 1
            self._run_map_odom = map_to_odom(T_map_base, T_odom_base)
            if self._run_length >= self.agreement_frames:
                self._prior, self._run_map_odom, self._run_length = None, None, 0
                return GateDecision(True, None, f'{self.agreement_frames} consecutive frames '
                                    'agree on a place away from the initial pose'), True
            return GateDecision(False, INITIAL_POSE,
                                f'Mahalanobis distance {distance:.1f} > {self.gate:.1f} from '
                                f'the initial pose ({self._run_length} of '
                                f'{self.agreement_frames} agreeing frames)'), False
