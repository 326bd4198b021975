"""What the node publishes per frame: poses, camera pose, scene, the AMCL seed.

``~/pose`` carries the fused estimate (``fusion: window``) or the frame's own (``fusion: none``);
``~/pose_raw`` always the frame's own, for evaluation; ``~/pose_update`` the frame's own, thinned
and inflated for a Kalman filter (``mspr_ros.estimation.filter_updates`` decides which).
``map -> odom`` is ``mspr_ros.ros.map_odom``. The AMCL seed (``publish_initialpose``) is offered
every published pose, with the fused estimate and its covariance: a seed resets AMCL's particle
cloud once, it is not a measurement added to others, so the window's estimate is the one to give
(its covariance never claims more than the error correlation allows).
``mspr_ros.ros.amcl_seeding`` decides whether it goes out, and re-sends it until AMCL took it.
"""
from typing import Any, Dict, Optional

from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from std_msgs.msg import Float32, String

from mspr_ros.estimation.frame_processor import FrameEstimate
from mspr_ros.geometry.transforms import SceneAlignment, Transform
from mspr_ros.ros import interface
from mspr_ros.ros.amcl_seeding import AmclSeeding
from mspr_ros.ros.conversions import pose_stamped, pose_with_covariance_stamped
from mspr_ros.ros.conversions import transform_to_msg
from mspr_ros.ros.params import NodeParams


class OutputPublishers:
    """The lifecycle publishers of the per-frame outputs."""

    def __init__(self, node, params: NodeParams, stats=None):
        """Create them on ``node`` (a ``LifecycleNode``).

        ``stats``: the ``LocalizationStats`` that carries the seeding state to /diagnostics.
        """
        self._node = node
        create = node.create_lifecycle_publisher
        depth = interface.OUTPUT_QOS_DEPTH
        self._pubs: Dict[str, Any] = {
            'pose': create(PoseWithCovarianceStamped, interface.POSE_TOPIC, interface.POSE_QOS),
            'pose_raw': create(PoseWithCovarianceStamped, interface.POSE_RAW_TOPIC,
                               interface.POSE_QOS),
            'pose_update': create(PoseWithCovarianceStamped, interface.POSE_UPDATE_TOPIC,
                                  interface.POSE_QOS),
            'camera_pose': create(PoseStamped, interface.CAMERA_POSE_TOPIC, depth),
            'scene': create(String, interface.SCENE_TOPIC, depth),
            'scene_camera_pose': create(PoseStamped, interface.SCENE_CAMERA_POSE_TOPIC, depth),
            'scene_confidence': create(Float32, interface.SCENE_CONFIDENCE_TOPIC, depth),
        }
        # None without publish_initialpose: nothing is seeded, nothing is our own seed.
        self.seeding: Optional[AmclSeeding] = (
            AmclSeeding(node, params.seed_amcl, stats, watch_amcl=bool(params.amcl_pose_topic))
            if params.publish_initialpose else None)

    def arm_seed(self, any_frame: bool = False, force: bool = False) -> None:
        """Seed AMCL with the next relocalized pose (activation, relocalization requests).

        ``any_frame``: with the next published pose, relocalized or not (AMCL is lost and our
        estimate is the better one). ``force``: even when AMCL's covariance is tighter than
        ours (an explicit ``~/relocalize``: AMCL may be confidently wrong).
        """
        if self.seeding is not None:
            self.seeding.arm(force=force, any_frame=any_frame)

    def is_own_seed(self, msg: PoseWithCovarianceStamped) -> bool:
        """Return True for an ``initialpose`` this node published itself, re-sends included."""
        return self.seeding is not None and self.seeding.is_own_seed(msg)

    def update_params(self, params: NodeParams) -> None:
        """Use changed seeding parameters (thresholds, interval, retry period, attempts)."""
        if self.seeding is not None:
            self.seeding.update_policy(params.seed_amcl)

    def reset_time(self) -> None:
        """Drop the seeding times: the node clock jumped back (``on_clock_jump``).

        The seed in flight is cancelled (it belongs to the old time line) and the re-send and
        ``seed_amcl_min_interval`` clocks restart, instead of waiting for the new time line to
        reach the old stamps.
        """
        if self.seeding is not None:
            self.seeding.reset_time()

    def scene(self, estimate: FrameEstimate, T_scene_cam: Transform, stamp_ns: int) -> None:
        """Publish the scene, its confidence and the camera pose in the scene's frame."""
        self._pubs['scene'].publish(String(data=estimate.scene_name))
        self._pubs['scene_confidence'].publish(Float32(data=estimate.scene_confidence))
        self._pubs['scene_camera_pose'].publish(
            pose_stamped(T_scene_cam, estimate.scene_name, stamp_ns))

    def pose(self, estimate: FrameEstimate, T_map_base: Transform, covariance,
             frame: str, stamp_ns: int) -> None:
        """Publish the frame's raw and camera poses, then the AMCL seed and ``~/pose``.

        ``T_map_base`` and ``covariance`` are what ``~/pose`` carries: the fused estimate or the
        frame's own. The seed follows a relocalization, or AMCL being lost, when ours is
        tighter than AMCL's estimate; a seed not yet taken is re-sent with the newest pose.
        """
        self._pubs['pose_raw'].publish(pose_with_covariance_stamped(
            estimate.T_map_base, estimate.covariance, frame, stamp_ns))
        self._pubs['camera_pose'].publish(pose_stamped(estimate.T_map_cam, frame, stamp_ns))
        pose_msg = pose_with_covariance_stamped(T_map_base, covariance, frame, stamp_ns)
        if self.seeding is not None:
            # Decided before ~/pose goes out: an amcl_pose that answers this pose (AMCL lost
            # now) must not seed AMCL with it; the seed is for the poses that follow.
            self.seeding.pose_published(pose_msg, T_map_base, covariance, estimate.relocalized)
        self._pubs['pose'].publish(pose_msg)

    def pose_update(self, T_map_base: Transform, covariance, frame: str, stamp_ns: int) -> None:
        """Publish a frame's own pose on ``~/pose_update`` with the inflated ``covariance``."""
        self._pubs['pose_update'].publish(pose_with_covariance_stamped(
            T_map_base, covariance, frame, stamp_ns))

    def destroy(self) -> None:
        """Destroy every publisher (and the seed's timer)."""
        for publisher in self._pubs.values():
            self._node.destroy_lifecycle_publisher(publisher)
        self._pubs = {}
        if self.seeding is not None:
            self.seeding.destroy()
            self.seeding = None


def scene_frame_messages(params: NodeParams, alignments: Dict[str, SceneAlignment],
                         stamp_ns: int) -> list:
    """``global_frame_id -> <scene>`` (rigid part of each alignment) for /tf_static."""
    return [transform_to_msg(alignment.as_transform(), params.global_frame_id, scene, stamp_ns)
            for scene, alignment in alignments.items()]
