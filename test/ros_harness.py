"""Helpers for tests that talk to the localizer node over real DDS.

The node process and the in-process client are shared with the benchmarks and live in the
training package: ``mspr_training.node_process`` (``domain_id``: a ROS domain per test module and
CLI test; ``ros_env``; ``NodeProcess``: the node in its own process group, one OpenMP thread,
stopped by SIGINT then SIGKILL) and ``mspr_training.ros_client`` (``RosClient``, ``Inbox``,
``wait_until``: waits on deadlines, no sleep polling). This module re-exports them under the
names the tests use, with tf2's QoS profiles from ``mspr_ros.ros.tf``, and adds what only the
tests need: the QoS a user subscribes to latched outputs with, small real photos, and a robot
that drives (its odometry on /tf, its camera on /tf_static).
"""
from pathlib import Path
import sys
import threading
from typing import Dict

import cv2
from geometry_msgs.msg import TransformStamped
import numpy as np
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from scipy.spatial.transform import Rotation
from tf2_msgs.msg import TFMessage

from mspr_ros.geometry.transforms import Transform
from mspr_ros.ros.conversions import ns_to_stamp, transform_to_msg
from mspr_ros.ros.tf import TF_QOS  # noqa: F401 - tf2's profiles, as the node's listener
from mspr_ros.ros.tf import TF_STATIC_LISTENER_QOS as TF_STATIC_QOS  # noqa: F401
from mspr_training.node_process import domain_id, NODE_NAME, NodeProcess  # noqa: F401
from mspr_training.node_process import param_args, prepare_environment, ros_env  # noqa: F401
from mspr_training.node_process import START_TIMEOUT_S, stop_all  # noqa: F401
from mspr_training.node_process import stop_process_group  # noqa: F401
from mspr_training.ros_client import diagnostic_values, Inbox, own_status  # noqa: F401
from mspr_training.ros_client import RosClient, wait_until  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# What a user subscribes to latched outputs (pose, scene) with, as to AMCL's amcl_pose.
RELIABLE_LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.TRANSIENT_LOCAL)

# Every process the tests start (and this one) moves images over Fast DDS shared memory.
prepare_environment()


def transform_msg(m, parent, child, stamp_ns) -> TransformStamped:
    """Return the ``TransformStamped`` ``parent -> child`` of a 4x4 matrix at ``stamp_ns``."""
    msg = TransformStamped()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id, msg.child_frame_id = parent, child
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = (
        float(v) for v in m[:3, 3])
    q = Rotation.from_matrix(m[:3, :3]).as_quat()
    r = msg.transform.rotation
    r.x, r.y, r.z, r.w = (float(v) for v in q)
    return msg


def small_photos(size=(160, 120)) -> Dict[str, np.ndarray]:
    """Real photos from ``skimage.data`` resized to ``size`` (width, height), uint8 RGB."""
    from skimage import data
    photos = {'astronaut': data.astronaut(), 'coffee': data.coffee(), 'chelsea': data.chelsea()}
    return {name: np.ascontiguousarray(cv2.resize(img, size, interpolation=cv2.INTER_AREA))
            for name, img in photos.items()}


class OdometryRobot:
    """Drives along x at a speed the test sets: ``odom -> base_link`` at 50 Hz, the camera static.

    ``position(stamp)`` is the odometry x it publishes for any stamp, so a test can tell how far
    the robot went between two images. ``drive(speed)`` changes the speed from now on and waits
    ``settle_s``, so that images stamped in the past stay clear of the corner.
    """

    def __init__(self, client, camera_frame: str, T_base_cam: Transform, speed: float = 0.0,
                 settle_s: float = 0.0):
        self._client, self._camera = client, (camera_frame, T_base_cam)
        self._tf = client.publisher(TFMessage, '/tf', TF_QOS)
        self._static = client.publisher(TFMessage, '/tf_static', TF_STATIC_QOS)
        self._settle_s = settle_s
        self._lock = threading.Lock()
        # (from ns, x there, speed); starts a second back so the first images have odometry.
        self._segments = [(client.now_ns() - 10 ** 9, 0.0, float(speed))]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def position(self, stamp_ns: int) -> float:
        """Return the base's odometry x coordinate (m) at ``stamp_ns``."""
        with self._lock:
            return self._x(stamp_ns)

    def odom_base(self, stamp_ns: int) -> Transform:
        """Return the ``odom -> base_link`` the robot publishes for ``stamp_ns``."""
        return Transform.from_xyz_rpy([self.position(stamp_ns), 0.0, 0.0], [0.0, 0.0, 0.0])

    def _x(self, stamp_ns):
        start, x, speed = [s for s in self._segments if s[0] <= stamp_ns][-1]
        return x + speed * (stamp_ns - start) * 1e-9

    def drive(self, speed: float) -> None:
        """Go on at ``speed`` (m/s) from now."""
        now = self._client.now_ns()
        with self._lock:
            self._segments.append((now, self._x(now), float(speed)))
        threading.Event().wait(self._settle_s)

    def start(self) -> None:
        """Publish the camera extrinsic and start the odometry; wait for a /tf subscriber."""
        frame, T_base_cam = self._camera
        self._static.publish(TFMessage(transforms=[
            transform_to_msg(T_base_cam, 'base_link', frame, self._client.now_ns())]))
        self._thread.start()
        wait_until(lambda: self._tf.get_subscription_count() > 0, 20.0, 'a /tf subscriber')

    def _run(self):
        while not self._stop.wait(0.02):
            stamp = self._client.now_ns()
            self._tf.publish(TFMessage(transforms=[
                transform_to_msg(self.odom_base(stamp), 'odom', 'base_link', stamp)]))

    def stop(self) -> None:
        """Stop publishing odometry."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
