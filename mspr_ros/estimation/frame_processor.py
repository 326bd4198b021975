"""The node's per-frame pipeline without ROS: network result -> frame chain -> gate -> outputs.

Frame chain (docs/architecture.md):
``T_map_cam = T_map_scene[s] * T_scene_cam``; ``T_map_base = T_map_cam * inv(T_base_cam)``;
``T_map_odom = T_map_base * inv(T_odom_base(t_img))``. With ``two_d_mode`` the base pose and
``map -> odom`` are flattened to x, y, yaw and the covariance keeps only x, y, yaw.

The processor remembers the last accepted ``map -> odom`` so that the gate can compare each
candidate with the odometry-predicted pose. An initial pose (``set_prior``) holds until frames
confirm it or agree on another place (``mspr_ros.estimation.initial_pose``); meanwhile it
replaces the jump check. Thread-safe: the inference worker calls ``estimate`` while service and
topic callbacks call ``request_relocalization`` and ``set_prior``.
"""
from dataclasses import dataclass
import math
import threading
from typing import Any, Mapping, Optional

import numpy as np

from mspr_ros.estimation.gating import GateConfig, GateDecision, PoseGate
from mspr_ros.estimation.initial_pose import InitialPoseGuard
from mspr_ros.geometry.covariance import covariance_at_offset, pose_covariance, two_d_covariance
from mspr_ros.geometry.transforms import base_in_map, map_to_odom, SceneAlignment, Transform

NON_FINITE = 'non_finite'


@dataclass(frozen=True)
class CovarianceSettings:
    """Arguments of ``mspr_ros.geometry.covariance.pose_covariance`` that come from parameters."""

    mode: str = 'calibrated'
    position_stddev: float = 0.5
    orientation_stddev: float = 0.1
    confidence_inflation: float = 1.0


@dataclass(frozen=True)
class ProcessorSettings:
    """Per-frame options (replaced as a whole when parameters change at run time)."""

    gate: GateConfig
    covariance: CovarianceSettings = CovarianceSettings()
    two_d_mode: bool = False
    initial_pose_gate: float = 3.0
    agreement_frames: int = 3


@dataclass(frozen=True)
class FrameEstimate:
    """Everything published for one frame.

    Attributes:
        scene_name, scene_confidence: the classified scene and its probability.
        T_map_cam: camera optical frame in the map (after the scene alignment).
        T_map_base: base pose in the map (flattened in two_d_mode).
        T_map_odom: the transform to broadcast (``map -> base`` when there is no odom frame).
        covariance: (6, 6) ROS order (x, y, z, rot x, rot y, rot z), metres and radians.
        decision: the gate's verdict; only accepted estimates are published as poses.
        relocalized: accepted without a jump check (first fix or a relocalization request).
    """

    scene_name: str
    scene_confidence: float
    T_map_cam: Transform
    T_map_base: Transform
    T_map_odom: Transform
    covariance: np.ndarray
    decision: GateDecision
    relocalized: bool


class NonFiniteEstimate(ValueError):
    """The network produced a non-finite or degenerate pose."""


class FrameProcessor:
    """Turns ``LocalizationResult``s into gated map-frame estimates."""

    def __init__(self, alignments: Mapping[str, SceneAlignment],
                 calibrations: Mapping[str, Any], settings: ProcessorSettings):
        """Create a processor.

        Args:
            alignments: scene name -> ``map <- scene`` similarity.
            calibrations: scene name -> (6, 6) covariance calibration in the scene frame.
            settings: gating, covariance and two_d_mode options.
        """
        self._alignments = dict(alignments)
        self._calibrations = dict(calibrations)
        self._settings = settings
        self._gate = PoseGate(settings.gate)
        self._initial_pose = InitialPoseGuard(settings.initial_pose_gate,
                                              settings.agreement_frames)
        self._lock = threading.Lock()
        self._last_map_odom: Optional[Transform] = None

    @property
    def settings(self) -> ProcessorSettings:
        """The current settings."""
        return self._settings

    def update_settings(self, settings: ProcessorSettings) -> None:
        """Replace the settings (parameters changed at run time)."""
        with self._lock:
            self._settings = settings
            self._gate.config = settings.gate
            self._initial_pose.configure(settings.initial_pose_gate, settings.agreement_frames)

    @property
    def last_map_odom(self) -> Optional[Transform]:
        """The last accepted (or prior-derived) ``T_map_odom``, None before the first fix."""
        with self._lock:
            return self._last_map_odom

    @property
    def relocalization_pending(self) -> bool:
        """Whether a relocalization request or an initial pose waits for frames."""
        return self._gate.relocalization_pending or self._initial_pose.active

    def request_relocalization(self) -> None:
        """Accept the next confident frame regardless of the jump limits and initial pose."""
        self._gate.request_relocalization()

    def set_prior(self, T_map_base: Transform, covariance: Any,
                  T_odom_base: Optional[Transform]) -> None:
        """Hold an initial pose until frames confirm it or agree on another place.

        ``T_odom_base`` is odom -> base now (None when unknown: the prior is then taken as
        fixed in odom). The odometry prediction restarts from the prior too (``map -> odom``
        reset, as AMCL does on ``initialpose``).

        Raises:
            ValueError: an invalid covariance.
        """
        known = T_odom_base is not None
        self._initial_pose.set(T_map_base, covariance,
                               T_odom_base if known else Transform.identity())
        if known:
            with self._lock:
                self._last_map_odom = map_to_odom(T_map_base, T_odom_base)

    def reset(self) -> None:
        """Forget the last fix, priors and pending requests (on activation)."""
        self._gate.reset()
        self._initial_pose.clear()
        with self._lock:
            self._last_map_odom = None

    def estimate(self, scene_name: str, scene_confidence: float, position: Any,
                 orientation_xyzw: Any, T_base_cam: Transform,
                 T_odom_base: Transform) -> FrameEstimate:
        """Run the frame chain and the gate for one network output.

        Args:
            scene_name, scene_confidence: the network's scene and its probability.
            position: (3,) camera centre in the scene frame.
            orientation_xyzw: (4,) camera optical-frame orientation in the scene frame.
            T_base_cam: camera optical frame in the base frame.
            T_odom_base: base in odom at the image stamp (identity without an odom frame).

        Raises:
            NonFiniteEstimate: non-finite numbers or a zero quaternion from the network.
            KeyError: a scene without alignment (cannot happen with a consistent bundle).
        """
        with self._lock:
            settings = self._settings
            last_map_odom = self._last_map_odom
        try:
            T_scene_cam = Transform.from_xyz_quat(position, orientation_xyzw)
        except ValueError as error:
            raise NonFiniteEstimate(f'network output is not a valid pose: {error}') from error
        confidence = float(scene_confidence)
        if not math.isfinite(confidence):
            raise NonFiniteEstimate(f'scene confidence is {confidence}')
        alignment = self._alignments[scene_name]
        T_map_cam = alignment.apply(T_scene_cam)
        T_map_base = base_in_map(T_map_cam, T_base_cam)
        # The calibration describes the camera; an orientation error also moves the base by the
        # lever arm between them, so carry the covariance over to the base origin.
        covariance = covariance_at_offset(
            self._covariance(scene_name, confidence, alignment, settings),
            T_map_base.translation - T_map_cam.translation)
        if settings.two_d_mode:
            # Flatten the pose first: with planar odometry map -> odom @ odom -> base then
            # reproduces the published pose exactly.
            T_map_base = T_map_base.flatten_2d()
            T_map_odom = map_to_odom(T_map_base, T_odom_base).flatten_2d()
            covariance = two_d_covariance(covariance)
        else:
            T_map_odom = map_to_odom(T_map_base, T_odom_base)
        predicted = None
        if last_map_odom is not None:
            predicted = PoseGate.predict(last_map_odom, T_odom_base)
            if settings.two_d_mode:
                predicted = predicted.flatten_2d()
        requested = self._gate.relocalization_pending
        guarded = self._initial_pose.active and not requested
        no_jump_check = predicted is None or requested
        # While an initial pose holds, it is the reference instead of the odometry prediction.
        decision = self._gate.check(scene_name, confidence, T_map_base,
                                    None if guarded else predicted)
        if decision.accepted and requested:
            self._initial_pose.clear()
        elif decision.accepted and guarded:
            decision, no_jump_check = self._initial_pose.check(T_map_base, covariance,
                                                               T_odom_base)
        if decision.accepted:
            with self._lock:
                self._last_map_odom = T_map_odom
        return FrameEstimate(
            scene_name=scene_name, scene_confidence=confidence, T_map_cam=T_map_cam,
            T_map_base=T_map_base, T_map_odom=T_map_odom, covariance=covariance,
            decision=decision, relocalized=decision.accepted and no_jump_check)

    def _covariance(self, scene_name: str, confidence: float, alignment: SceneAlignment,
                    settings: ProcessorSettings) -> np.ndarray:
        cov_settings = settings.covariance
        return pose_covariance(
            self._calibrations.get(scene_name), min(max(confidence, 0.0), 1.0), alignment,
            cov_settings.confidence_inflation, mode=cov_settings.mode,
            fixed_position_stddev=cov_settings.position_stddev,
            fixed_orientation_stddev=cov_settings.orientation_stddev)
