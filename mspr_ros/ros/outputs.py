"""What the node publishes per frame: poses, camera pose, scene, the AMCL seed, ``map -> odom``.

``~/pose`` carries the fused estimate (``fusion: window``) or the frame's own (``fusion: none``);
``~/pose_raw`` always the frame's own, for evaluation.

``map -> odom`` follows the stamping rule of ``mspr_ros.estimation.tf_stamping`` (see the node
module docstring): the accept path and the steady re-broadcast share one ``MapOdomStamps`` and
stamp and send under one lock, so messages leave in stamp order whichever thread sends.
"""
import threading
from typing import Any, Dict, Optional

from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from std_msgs.msg import Float32, String

from mspr_ros.estimation.frame_processor import FrameEstimate
from mspr_ros.estimation.tf_stamping import MapOdomStamps, StampedCorrection
from mspr_ros.geometry.transforms import SceneAlignment, Transform
from mspr_ros.ros import interface
from mspr_ros.ros.conversions import pose_stamped, pose_with_covariance_stamped
from mspr_ros.ros.conversions import transform_to_msg
from mspr_ros.ros.params import NodeParams


def tolerance_ns(params: NodeParams) -> int:
    """``transform_tolerance`` in nanoseconds."""
    return int(round(params.transform_tolerance * 1e9))


class MapOdomBroadcaster:
    """Broadcasts the newest accepted ``map -> odom`` by the one stamping rule."""

    def __init__(self, tf_broadcaster, params: NodeParams):
        """Send through ``tf_broadcaster`` (``mspr_ros.ros.tf`` interface)."""
        self._broadcaster = tf_broadcaster
        self._params = params
        self._stamps = MapOdomStamps(tolerance_ns(params))
        self._send_lock = threading.Lock()

    def update_params(self, params: NodeParams) -> None:
        """Frames, tolerance and ``tf_broadcast`` changed at run time."""
        self._params = params
        self._stamps.tolerance_ns = tolerance_ns(params)

    def reset(self) -> None:
        """Forget the correction (activation)."""
        self._stamps.reset()

    @property
    def latest(self):
        """The newest correction and its last stamp, or None."""
        return self._stamps.latest

    def accepted(self, T_map_odom: Transform, image_stamp_ns: int) -> None:
        """Stamp and (with ``tf_broadcast``) send a newly accepted correction."""
        with self._send_lock:
            self._send(self._stamps.accept(T_map_odom, image_stamp_ns))

    def rebroadcast(self, now_ns: int) -> None:
        """Re-send the newest correction, stamped forward (steady TF rate)."""
        with self._send_lock:
            correction = self._stamps.rebroadcast(now_ns)
            if correction is not None:
                self._send([correction])

    def _send(self, corrections: 'list[StampedCorrection]') -> None:
        params = self._params
        if not params.tf_broadcast:
            return
        child = params.odom_frame_id or params.base_frame_id
        self._broadcaster.send([
            transform_to_msg(c.transform, params.global_frame_id, child, c.stamp_ns)
            for c in corrections])


class OutputPublishers:
    """The lifecycle publishers of the per-frame outputs."""

    def __init__(self, node, params: NodeParams):
        """Create them on ``node`` (a ``LifecycleNode``)."""
        self._node = node
        create = node.create_lifecycle_publisher
        depth = interface.OUTPUT_QOS_DEPTH
        self._pubs: Dict[str, Any] = {
            'pose': create(PoseWithCovarianceStamped, interface.POSE_TOPIC, interface.POSE_QOS),
            'pose_raw': create(PoseWithCovarianceStamped, interface.POSE_RAW_TOPIC,
                               interface.POSE_QOS),
            'camera_pose': create(PoseStamped, interface.CAMERA_POSE_TOPIC, depth),
            'scene': create(String, interface.SCENE_TOPIC, depth),
            'scene_confidence': create(Float32, interface.SCENE_CONFIDENCE_TOPIC, depth),
        }
        if params.publish_initialpose:
            self._pubs['initialpose'] = create(PoseWithCovarianceStamped,
                                               interface.INITIALPOSE_TOPIC,
                                               interface.INITIALPOSE_QOS)
        self._seed_pending = False
        self._seed_any_frame = False
        self._last_seed: Optional[PoseWithCovarianceStamped] = None
        self.last_seed_ns: Optional[int] = None  # node clock, when the last seed went out

    def arm_seed(self, any_frame: bool = False) -> None:
        """Seed AMCL with the next relocalized pose (activation, relocalization requests).

        ``any_frame``: with the next published pose, relocalized or not (AMCL is lost and our
        estimate is the better one).
        """
        self._seed_pending = True
        self._seed_any_frame = self._seed_any_frame or any_frame

    def is_own_seed(self, msg: PoseWithCovarianceStamped) -> bool:
        """Return True for the ``initialpose`` this node published itself."""
        seed = self._last_seed
        return seed is not None and seed.header == msg.header and seed.pose == msg.pose

    def scene(self, estimate: FrameEstimate) -> None:
        """Publish the scene and its confidence."""
        self._pubs['scene'].publish(String(data=estimate.scene_name))
        self._pubs['scene_confidence'].publish(Float32(data=estimate.scene_confidence))

    def pose(self, estimate: FrameEstimate, T_map_base: Transform, covariance,
             frame: str, stamp_ns: int) -> None:
        """Publish the frame's raw and camera poses, then ``~/pose`` and the AMCL seed.

        ``T_map_base`` and ``covariance`` are what ``~/pose`` carries: the fused estimate or the
        frame's own. The seed follows a relocalization, once.
        """
        self._pubs['pose_raw'].publish(pose_with_covariance_stamped(
            estimate.T_map_base, estimate.covariance, frame, stamp_ns))
        self._pubs['camera_pose'].publish(pose_stamped(estimate.T_map_cam, frame, stamp_ns))
        pose_msg = pose_with_covariance_stamped(T_map_base, covariance, frame, stamp_ns)
        self._pubs['pose'].publish(pose_msg)
        if self._seed_pending and (estimate.relocalized or self._seed_any_frame):
            self._seed_pending = self._seed_any_frame = False
            if 'initialpose' in self._pubs:
                self._last_seed = pose_msg
                self.last_seed_ns = self._node.get_clock().now().nanoseconds
                self._pubs['initialpose'].publish(pose_msg)

    def destroy(self) -> None:
        """Destroy every publisher."""
        for publisher in self._pubs.values():
            self._node.destroy_lifecycle_publisher(publisher)
        self._pubs = {}


def scene_frame_messages(params: NodeParams, alignments: Dict[str, SceneAlignment],
                         stamp_ns: int) -> list:
    """``global_frame_id -> <scene>`` (rigid part of each alignment) for /tf_static."""
    return [transform_to_msg(alignment.as_transform(), params.global_frame_id, scene, stamp_ns)
            for scene, alignment in alignments.items()]
