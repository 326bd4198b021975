"""What the node publishes for each frame: the gated per-frame estimate, then the fusion.

One rule, shared by the node (``mspr_ros.ros.frame_pipeline``) and the offline bag replay
(``mspr_training.bags.fusion_replay``), so that an offline report is the node's stream:

1. ``FrameProcessor.estimate``: frame chain, covariance, scene and jump gates, initial pose.
2. A frame the gate rejects publishes no pose and never reaches the fusion.
3. An accepted frame that relocalized (first fix, relocalization request, initial pose
   resolved elsewhere) restarts the fusion window: its samples describe the old place.
4. With ``fusion: window`` the published ``map -> odom`` and covariance are the fused ones, and
   the base pose is ``fused map -> odom @ odom -> base`` (flattened in two_d_mode); without
   fusion they are the frame's own. The fusion is told each frame's scene: its errors correlate
   by that scene's model (``FusionConfig.error_correlation``).
"""
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from mspr_ros.estimation.frame_processor import FrameEstimate, FrameProcessor
from mspr_ros.estimation.fusion import FusionConfig, FusionResult, MapOdomFusion
from mspr_ros.geometry.transforms import Transform


@dataclass(frozen=True)
class StreamOutput:
    """One frame's outcome.

    Attributes:
        estimate: the per-frame estimate and the gate's decision (``~/pose_raw`` when accepted).
        published: whether a pose and ``map -> odom`` are published for this frame.
        T_map_odom, T_map_base, covariance: what ``~/pose`` and TF carry (fused with a fusion;
            the frame's own otherwise, and for a rejected frame).
        fused: the fusion's result, None without fusion or for a rejected frame.
    """

    estimate: FrameEstimate
    published: bool
    T_map_odom: Transform
    T_map_base: Transform
    covariance: np.ndarray
    fused: Optional[FusionResult] = None


class PoseStream:
    """A ``FrameProcessor`` followed by the optional ``map -> odom`` fusion."""

    def __init__(self, processor: FrameProcessor, fusion: Optional[FusionConfig]) -> None:
        """Use ``processor``; ``fusion`` None publishes every accepted frame as it is."""
        self.processor = processor
        self._fusion = None if fusion is None else MapOdomFusion(fusion)

    @property
    def fusion(self) -> Optional[MapOdomFusion]:
        """The running ``map -> odom`` fusion, None with ``fusion: none``."""
        return self._fusion

    @property
    def fusion_config(self) -> Optional[FusionConfig]:
        """The fusion's configuration (None with ``fusion: none``)."""
        return None if self._fusion is None else self._fusion.config

    def reconfigure(self, fusion: Optional[FusionConfig]) -> bool:
        """Use another fusion configuration; return whether it changed (then restarted)."""
        if fusion == self.fusion_config:
            return False
        self._fusion = None if fusion is None else MapOdomFusion(fusion)
        return True

    def restart_fusion(self) -> None:
        """Empty the fusion window (a prior, an activation: the old samples no longer hold)."""
        if self._fusion is not None:
            self._fusion.reset()

    def step(self, scene_name: str, scene_confidence: float, position: Any,
             orientation_xyzw: Any, T_base_cam: Transform, T_odom_base: Transform,
             stamp_ns: int) -> StreamOutput:
        """Run one network output through the gate and the fusion (see the module docstring).

        Raises:
            NonFiniteEstimate: from ``FrameProcessor.estimate``.
        """
        estimate = self.processor.estimate(scene_name, scene_confidence, position,
                                           orientation_xyzw, T_base_cam, T_odom_base)
        if not estimate.decision.accepted:
            return StreamOutput(estimate, False, estimate.T_map_odom, estimate.T_map_base,
                                estimate.covariance)
        fusion = self._fusion
        if fusion is None:
            return StreamOutput(estimate, True, estimate.T_map_odom, estimate.T_map_base,
                                estimate.covariance)
        if estimate.relocalized:
            fusion.reset()
        fused = fusion.add(stamp_ns, estimate.T_map_odom, estimate.covariance, T_odom_base,
                           scene=estimate.scene_name)
        T_map_base = fused.T_map_odom @ T_odom_base
        if self.processor.settings.two_d_mode:
            T_map_base = T_map_base.flatten_2d()
        return StreamOutput(estimate, True, fused.T_map_odom, T_map_base, fused.covariance,
                            fused)
