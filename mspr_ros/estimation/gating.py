"""Decide whether a localization is published (ROS-free).

A wrong pose with a tight covariance is worse than no pose, so every candidate base pose passes,
in this order:

1. ``low_confidence``: the scene-classification probability is below ``min_scene_confidence``;
2. ``scene_not_allowed``: ``allowed_scenes`` is non-empty and does not contain the scene;
3. ``jump_translation`` / ``jump_rotation``: the candidate is further than the limits from the
   predicted pose (the last accepted ``map -> odom`` carried forward by odometry), as
   AMCL-style localizers check against odometry. While an initial pose holds, the frame
   processor passes no prediction here and ``mspr_ros.estimation.initial_pose`` decides.

There is no jump check without a prediction (the first fix), and none for the first candidate
that passes 1 and 2 after ``request_relocalization()``.
"""
from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np

from mspr_ros.geometry.transforms import Transform

LOW_CONFIDENCE = 'low_confidence'
SCENE_NOT_ALLOWED = 'scene_not_allowed'
JUMP_TRANSLATION = 'jump_translation'
JUMP_ROTATION = 'jump_rotation'
# Every rejection reason, e.g. for per-reason counters in diagnostics.
REJECTION_REASONS = (LOW_CONFIDENCE, SCENE_NOT_ALLOWED, JUMP_TRANSLATION, JUMP_ROTATION)


@dataclasses.dataclass
class GateConfig:
    """Gating limits.

    Attributes:
        min_scene_confidence: in [0, 1]; candidates below it are rejected.
        max_jump_translation: metres (> 0, ``inf`` disables) from the predicted base pose.
        max_jump_rotation_deg: degrees (> 0, ``inf`` disables) from the predicted orientation.
        allowed_scenes: scene names that may be published; empty allows every scene.
    """

    min_scene_confidence: float = 0.5
    max_jump_translation: float = math.inf
    max_jump_rotation_deg: float = math.inf
    allowed_scenes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        """Validate the limits; raise ValueError naming the bad field."""
        confidence = float(self.min_scene_confidence)
        if not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
            raise ValueError('min_scene_confidence must be in [0, 1], got '
                             f'{self.min_scene_confidence!r}')
        self.min_scene_confidence = confidence
        for name in ('max_jump_translation', 'max_jump_rotation_deg'):
            limit = float(getattr(self, name))
            if math.isnan(limit) or limit <= 0.0:
                raise ValueError(f'{name} must be > 0 (inf disables it), got {limit!r}')
            setattr(self, name, limit)
        # A bare string would become a set of its characters.
        if isinstance(self.allowed_scenes, str):
            raise ValueError('allowed_scenes must be a collection of scene names, got the '
                             f'string {self.allowed_scenes!r}')
        scenes = frozenset(self.allowed_scenes)
        if not all(isinstance(scene, str) and scene for scene in scenes):
            raise ValueError(f'allowed_scenes must hold non-empty strings, got {sorted(scenes)!r}')
        self.allowed_scenes = scenes


@dataclasses.dataclass(frozen=True)
class GateDecision:
    """The outcome of ``PoseGate.check``.

    Attributes:
        accepted: whether the candidate may be published.
        reason: None when accepted, else one of ``REJECTION_REASONS``.
        detail: a human-readable explanation with the numbers, for logs and diagnostics.
    """

    accepted: bool
    reason: str | None = None
    detail: str = ''


class PoseGate:
    """Stateful gate: remembers relocalization requests. Thread-safe.

    Initial poses are held by ``mspr_ros.estimation.initial_pose.InitialPoseGuard``, which
    ``FrameProcessor`` consults after this gate.
    """

    def __init__(self, config: GateConfig | None = None) -> None:
        """Create a gate with ``config`` (defaults: ``GateConfig()``)."""
        self.config = config if config is not None else GateConfig()
        self._lock = threading.Lock()
        self._relocalization_requested = False

    @staticmethod
    def predict(T_map_odom_last: Transform, T_odom_base_now: Transform) -> Transform:
        """Return the odometry-predicted ``T_map_base = T_map_odom_last @ T_odom_base_now``."""
        return T_map_odom_last @ T_odom_base_now

    def request_relocalization(self) -> None:
        """Accept the next candidate passing the confidence and scene checks, whatever its jump.

        The request clears when such a candidate is accepted.
        """
        with self._lock:
            self._relocalization_requested = True

    @property
    def relocalization_pending(self) -> bool:
        """Whether a relocalization request waits for its candidate."""
        with self._lock:
            return self._relocalization_requested

    def reset(self) -> None:
        """Forget a pending relocalization request."""
        with self._lock:
            self._relocalization_requested = False

    def check(self, scene_name: str, confidence: float, T_map_base_candidate: Transform,
              T_map_base_predicted: Transform | None = None) -> GateDecision:
        """Decide whether ``T_map_base_candidate`` may be published.

        Args:
            scene_name: the classified scene.
            confidence: its softmax probability in [0, 1].
            T_map_base_candidate: the localized base pose.
            T_map_base_predicted: the odometry-predicted base pose (``predict``), or None when
                there is no previous fix.
        """
        config = self.config
        if not confidence >= config.min_scene_confidence:
            return GateDecision(False, LOW_CONFIDENCE,
                                f'scene {scene_name!r} confidence {confidence:.3f} < '
                                f'{config.min_scene_confidence:.3f}')
        if config.allowed_scenes and scene_name not in config.allowed_scenes:
            return GateDecision(False, SCENE_NOT_ALLOWED,
                                f'scene {scene_name!r} not in allowed_scenes '
                                f'{sorted(config.allowed_scenes)}')
        with self._lock:
            if self._relocalization_requested:
                self._relocalization_requested = False
                return GateDecision(True, None, 'relocalization requested: jump limits skipped')
        max_translation = config.max_jump_translation
        max_rotation = config.max_jump_rotation_deg
        predicted = T_map_base_predicted
        if predicted is None:
            return GateDecision(True, None, 'first fix: no prediction to check jumps against')
        jump = float(np.linalg.norm(T_map_base_candidate.translation - predicted.translation))
        if jump > max_translation:
            return GateDecision(False, JUMP_TRANSLATION,
                                f'jump {jump:.3f} m > {max_translation:.3f} m from the '
                                'odometry prediction')
        turn = math.degrees(T_map_base_candidate.rotation_angle_to(predicted))
        if turn > max_rotation:
            return GateDecision(False, JUMP_ROTATION,
                                f'jump {turn:.2f} deg > {max_rotation:.2f} deg from the '
                                'odometry prediction')
        return GateDecision(True, None, '')
