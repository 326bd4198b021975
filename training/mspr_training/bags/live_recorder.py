"""What the live evaluator records of the node: its outputs, with their arrival times.

``OutputRecorder`` subscribes, in the evaluator's own rclpy node, to what the node under test
publishes: ``~/camera_pose``, ``~/pose`` (fused with ``fusion: window``), ``~/pose_raw`` (each
frame's own), ``~/pose_update`` (the per-frame poses the node hands an EKF; newer nodes only),
``~/scene``, ``~/scene_confidence``, ``map -> odom`` on ``/tf`` and ``/diagnostics``. Poses are
kept by header stamp (the image's), each with its arrival time on the monotonic clock.
"""
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
import numpy as np
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float32, String
from tf2_msgs.msg import TFMessage

from mspr_ros.geometry.transforms import Transform

NS_PER_S = 1_000_000_000
RELIABLE_ALL = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)


def stamp_ns(stamp) -> int:
    """Return a ``builtin_interfaces/Time`` in nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


class OutputRecorder:
    """Collects the node's outputs with their arrival times (monotonic seconds)."""

    def __init__(self, node, node_name: str, params: dict):
        """Subscribe to the node's outputs, ``/tf`` and ``/diagnostics`` on ``node``."""
        self._changed = threading.Condition()
        self._map_frame = params['global_frame_id']
        self._odom_frame = params['odom_frame_id'] or params['base_frame_id']
        self._status_name = f'{node_name}: localization'
        prefix = f'/{node_name}'
        self.subscriptions = {
            'camera_pose': node.create_subscription(
                PoseStamped, f'{prefix}/camera_pose', self._on_camera_pose, RELIABLE_ALL),
            'pose': node.create_subscription(
                PoseWithCovarianceStamped, f'{prefix}/pose', self._on_pose, RELIABLE_ALL),
            'pose_raw': node.create_subscription(
                PoseWithCovarianceStamped, f'{prefix}/pose_raw', self._on_pose_raw,
                RELIABLE_ALL),
            # Newer nodes only: a subscription without a publisher costs nothing.
            'pose_update': node.create_subscription(
                PoseWithCovarianceStamped, f'{prefix}/pose_update', self._on_pose_update,
                RELIABLE_ALL),
            'scene': node.create_subscription(String, f'{prefix}/scene', self._on_scene,
                                              RELIABLE_ALL),
            # The scene of each image by its stamp (frame_id names it): ~/scene carries no
            # stamp, and on a loaded machine it can arrive after the frame's pose.
            'scene_camera_pose': node.create_subscription(
                PoseStamped, f'{prefix}/scene_camera_pose', self._on_scene_pose, RELIABLE_ALL),
            'scene_confidence': node.create_subscription(
                Float32, f'{prefix}/scene_confidence', self._on_confidence, RELIABLE_ALL),
            'tf': node.create_subscription(TFMessage, '/tf', self._on_tf, RELIABLE_ALL),
            'diagnostics': node.create_subscription(DiagnosticArray, '/diagnostics',
                                                    self._on_diagnostics, RELIABLE_ALL),
        }
        self.reset()

    def reset(self):
        """Forget everything recorded (before a new bag)."""
        with self._changed:
            self.camera_poses = {}
            self.poses = {}
            self.raw_poses = {}
            self.pose_updates = {}
            self.pose_update_count = 0
            self.scenes = []
            self.scene_by_stamp = {}
            self.confidences = []
            self.map_odom = {}
            self.diagnostics = {}
            self.diagnostics_count = 0
            self.last_arrival = None

    def _stored(self):
        self.last_arrival = time.monotonic()
        self._changed.notify_all()

    def _on_camera_pose(self, msg):
        arrival = time.monotonic()
        with self._changed:
            self.camera_poses.setdefault(stamp_ns(msg.header.stamp), (arrival, msg.pose))
            self._stored()

    def _on_pose(self, msg):
        arrival = time.monotonic()
        with self._changed:
            self.poses.setdefault(stamp_ns(msg.header.stamp), (arrival, msg.pose))
            self._stored()

    def _on_pose_raw(self, msg):
        with self._changed:
            self.raw_poses.setdefault(stamp_ns(msg.header.stamp), msg.pose)

    def _on_pose_update(self, msg):
        with self._changed:
            self.pose_updates.setdefault(stamp_ns(msg.header.stamp), msg.pose)
            self.pose_update_count += 1

    def publishes(self, name: str) -> bool:
        """Return whether the node has a publisher matched to our ``name`` subscription."""
        return self.subscriptions[name].get_publisher_count() > 0

    def _on_scene(self, msg):
        with self._changed:
            self.scenes.append((time.monotonic(), msg.data))

    def _on_scene_pose(self, msg):
        with self._changed:
            self.scene_by_stamp.setdefault(stamp_ns(msg.header.stamp), msg.header.frame_id)
            self._changed.notify_all()

    def _on_confidence(self, msg):
        with self._changed:
            self.confidences.append((time.monotonic(), float(msg.data)))

    def _on_tf(self, msg):
        corrections = {stamp_ns(t.header.stamp): _transform_values(t.transform)
                       for t in msg.transforms
                       if t.header.frame_id.lstrip('/') == self._map_frame
                       and t.child_frame_id.lstrip('/') == self._odom_frame}
        if corrections:
            with self._changed:
                self.map_odom.update(corrections)

    def map_odom_steps(self) -> list[int]:
        """Return the stamps, in order, at which the broadcast map -> odom changes value.

        The node re-sends its newest correction at a steady rate; a new accepted correction is
        where the value steps. The first broadcast counts as a step.
        """
        with self._changed:
            ordered = sorted(self.map_odom.items())
        steps = []
        for (_, before), (stamp, after) in zip([(None, None)] + ordered, ordered):
            if before is None or not np.allclose(before, after, rtol=0, atol=1e-9):
                steps.append(stamp)
        return steps

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.name == self._status_name:
                with self._changed:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}
                    self.diagnostics['level message'] = status.message
                    self.diagnostics_count += 1

    def wait_idle(self, expected: set, last_publish: float, idle_s: float):
        """Wait until every expected stamp is answered, or no output came for ``idle_s``."""
        with self._changed:
            while True:
                answered = {s for s in expected if s in self.camera_poses or s in self.poses}
                missing = (expected - answered) | {s for s in answered
                                                   if s not in self.scene_by_stamp}
                if not missing:
                    return
                latest = max(last_publish, self.last_arrival or last_publish)
                remaining = latest + idle_s - time.monotonic()
                if remaining <= 0:
                    return
                self._changed.wait(remaining)


def _transform_values(transform) -> tuple[float, ...]:
    """Return a geometry_msgs/Transform as (x, y, z, qx, qy, qz, qw) with qw >= 0."""
    t, q = transform.translation, transform.rotation
    sign = -1.0 if q.w < 0 else 1.0
    return (t.x, t.y, t.z, sign * q.x, sign * q.y, sign * q.z, sign * q.w)


def pose_transform(pose) -> Transform:
    """Return a ``geometry_msgs/Pose`` as a canonical ``Transform``."""
    p, q = pose.position, pose.orientation
    return Transform([p.x, p.y, p.z], [q.x, q.y, q.z, q.w]).canonical()
