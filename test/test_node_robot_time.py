"""The node on a real robot's time and joints, over real DDS.

- A camera on a turning joint: ``base <- camera`` is looked up at each image stamp, so the
  base pose follows the joint (a cached extrinsic would report the first angle forever). Run
  with both TF back-ends: tf2_ros (every ROS 2 install) and the package's own.
- A clock that jumps back (``ros2 bag play --loop``, a simulator reset) under ``use_sim_time``:
  the node starts a new time line: poses and ``map -> odom`` stamped in it, not frozen at the
  old stamps.
- A pause (deactivate, activate) keeps ``map -> odom`` on /tf, as AMCL keeps its estimate.

Expected values come from the frame chain: for one image the camera's pose in the map is the
same whatever the joint does, so ``T_map_base @ T_base_cam`` must agree across joint angles.
"""
import math
import threading
import time

from geometry_msgs.msg import PoseWithCovarianceStamped
from lifecycle_msgs.msg import Transition
import numpy as np
import pytest
from rosgraph_msgs.msg import Clock
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage

from mspr_ros.ros.conversions import ns_to_stamp, rgb_to_image_msg, stamp_to_ns
from ros_components import needs
from ros_harness import domain_id, NodeProcess, RELIABLE_LATCHED, RosClient, small_photos
from ros_harness import TF_QOS, TF_STATIC_QOS, transform_msg, wait_until

pytestmark = pytest.mark.ros
NS = '/mspr_localizer'
S = 1_000_000_000
TOLERANCE_S = 0.25
# Optical frame looking along the joint's x axis.
R_JOINT_OPTICAL = Rotation.from_euler('xyz', [-math.pi / 2, 0.0, -math.pi / 2])
JOINT_ORIGIN = [0.2, 0.0, 0.5]


def _matrix(xyz, rotation):
    m = np.eye(4)
    m[:3, :3] = rotation.as_matrix()
    m[:3, 3] = xyz
    return m


def _pose_matrix(msg):
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    return _matrix([p.x, p.y, p.z], Rotation.from_quat([q.x, q.y, q.z, q.w]))


def _base_camera(pan):
    """``T_base_cam`` of the pan joint at angle ``pan`` (rad)."""
    return _matrix(JOINT_ORIGIN, Rotation.from_euler('z', pan) * R_JOINT_OPTICAL)


def _start(tiny_bundle_path, tmp_path_factory, domain, name, **params):
    return NodeProcess(domain, tmp_path_factory.mktemp(name) / 'node.log', params={
        'weights': str(tiny_bundle_path), 'min_scene_confidence': 0.0, 'max_image_age': 60.0,
        'transform_timeout': 0.5, 'transform_tolerance': TOLERANCE_S, 'fusion': 'none',
        'diagnostics_period': 0.2} | params)


@pytest.mark.parametrize('backend', [pytest.param('tf2_ros', marks=needs('tf2_ros')),
                                     'mspr_ros'])
def test_a_camera_on_a_turning_joint_is_followed_at_each_image_stamp(
        backend, tiny_bundle_path, tmp_path_factory):
    domain = domain_id(41 if backend == 'tf2_ros' else 42)
    node = _start(tiny_bundle_path, tmp_path_factory, domain, f'joint_{backend}',
                  tf_backend=backend)
    client = RosClient(domain)
    try:
        poses = client.subscribe(PoseWithCovarianceStamped, f'{NS}/pose_raw', 20)
        tf = client.publisher(TFMessage, '/tf', TF_QOS)
        image = client.publisher(Image, '/image', 5)
        node.wait_active()
        client.wait_for_subscribers(image)
        client.wait_for_subscribers(tf)
        rgb = small_photos()['astronaut']
        seen = {}
        stamp = client.now_ns()
        for pan in (0.0, 0.6, 1.2, 0.3):
            # Frames 200 ms apart; the joint holds its angle 10 ms either side of each image
            # stamp (TF interpolates between the samples of neighbouring frames otherwise).
            stamp = max(client.now_ns(), stamp + 200_000_000)
            for offset in (-10_000_000, 10_000_000):
                tf.publish(TFMessage(transforms=[
                    transform_msg(np.eye(4), 'odom', 'base_link', stamp + offset),
                    transform_msg(_base_camera(pan), 'base_link', 'camera_optical',
                                  stamp + offset)]))
            image.publish(rgb_to_image_msg(rgb, 'rgb8', stamp, 'camera_optical'))
            msg = poses.wait_for(lambda m, s=stamp: stamp_to_ns(m.header.stamp) == s, 20.0,
                                 f'the pose of the frame at pan {pan}')
            seen[pan] = _pose_matrix(msg)
        # One image, so one camera pose in the map, whatever the joint angle ...
        camera = {pan: T_map_base @ _base_camera(pan) for pan, T_map_base in seen.items()}
        for pan in seen:
            np.testing.assert_allclose(camera[pan], camera[0.0], atol=2e-4, err_msg=str(pan))
        # ... and the base turned against the joint: it was not the first extrinsic, cached.
        turned = Rotation.from_matrix(seen[0.0][:3, :3].T @ seen[1.2][:3, :3]).magnitude()
        assert abs(turned - 1.2) < 1e-3, turned
    finally:
        client.close()
        node.stop()
    assert f'tf backend {backend}' in node.output()


class SimClock:
    """Publishes /clock at 100 Hz, advancing with the wall clock from a time it can jump to."""

    def __init__(self, client, start_s):
        self._publisher = client.publisher(Clock, '/clock', 10)
        self._lock = threading.Lock()
        self.jump_to(start_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def jump_to(self, seconds):
        with self._lock:
            self._base_ns, self._since = int(seconds * S), time.monotonic()

    def now_ns(self):
        with self._lock:
            return self._base_ns + int((time.monotonic() - self._since) * S)

    def _run(self):
        while not self._stop.wait(0.01):
            msg = Clock()
            msg.clock = ns_to_stamp(self.now_ns())
            self._publisher.publish(msg)

    def close(self):
        self._stop.set()
        self._thread.join()


def _map_odom_stamps(inbox):
    return [stamp_to_ns(t.header.stamp) for msg in inbox.snapshot() for t in msg.transforms
            if (t.header.frame_id, t.child_frame_id) == ('map', 'odom')]


def _localize(clock, tf, image, poses, rgb, what):
    """Send frames stamped on the sim clock until one is answered; return its stamp."""
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        stamp = clock.now_ns()
        tf.publish(TFMessage(transforms=[
            transform_msg(np.eye(4), 'odom', 'base_link', stamp + offset)
            for offset in (-50_000_000, 50_000_000)]))
        image.publish(rgb_to_image_msg(rgb, 'rgb8', stamp, 'camera_optical'))
        try:
            poses.wait_for(lambda m, s=stamp: stamp_to_ns(m.header.stamp) == s, 3.0, what)
            return stamp
        except AssertionError:
            continue
    raise AssertionError(f'no answer for {what} within 30 s')


def _wire(node, client, pose_qos):
    """Subscribe to ~/pose and /tf, latch a fixed camera, wait for the node; return endpoints.

    Returns ``(pose inbox, /tf inbox, /tf publisher, image publisher)``.
    """
    poses = client.subscribe(PoseWithCovarianceStamped, f'{NS}/pose', pose_qos)
    tf_inbox = client.subscribe(TFMessage, '/tf', TF_QOS)
    static = client.publisher(TFMessage, '/tf_static', TF_STATIC_QOS)
    static.publish(TFMessage(transforms=[
        transform_msg(_base_camera(0.0), 'base_link', 'camera_optical', 0)]))
    tf = client.publisher(TFMessage, '/tf', TF_QOS)
    image = client.publisher(Image, '/image', 5)
    node.wait_active()
    client.wait_for_subscribers(image)
    return poses, tf_inbox, tf, image


def test_a_clock_jumping_back_starts_a_new_time_line(tiny_bundle_path, tmp_path_factory):
    domain = domain_id(43)
    # The window fusion (the default) is what froze: it took new frames for stale ones.
    node = _start(tiny_bundle_path, tmp_path_factory, domain, 'clock', use_sim_time=True,
                  fusion='window', transform_publish_period=0.05)
    client = RosClient(domain)
    clock = SimClock(client, 100.0)
    try:
        poses, tf_inbox, tf, image = _wire(node, client, 20)
        rgb = small_photos()['coffee']
        for _ in range(3):
            _localize(clock, tf, image, poses, rgb, 'a frame before the jump')
        wait_until(lambda: any(s > 100 * S for s in _map_odom_stamps(tf_inbox)), 10.0,
                   'map -> odom in the first time line')

        clock.jump_to(5.0)
        node.wait_for_output('clock jumped back', 10.0)
        after = len(tf_inbox.snapshot())
        stamp = _localize(clock, tf, image, poses, rgb, 'a frame after the jump')
        assert 5 * S <= stamp < 60 * S
        _localize(clock, tf, image, poses, rgb, 'a second frame after the jump')

        def new_line_broadcasts():
            return [s for msg in tf_inbox.snapshot()[after:] for t in msg.transforms
                    if (t.header.frame_id, t.child_frame_id) == ('map', 'odom')
                    for s in [stamp_to_ns(t.header.stamp)] if s < 60 * S]
        # The accepted frame's correction and the steady re-broadcasts, in the new time line.
        wait_until(lambda: len(new_line_broadcasts()) >= 5, 10.0,
                   'map -> odom re-broadcast in the new time line')
        assert min(new_line_broadcasts()) >= stamp
    finally:
        clock.close()
        client.close()
        node.stop()


def test_a_pause_keeps_map_to_odom_on_tf(tiny_bundle_path, tmp_path_factory):
    domain = domain_id(44)
    node = _start(tiny_bundle_path, tmp_path_factory, domain, 'pause', autostart=True)
    client = RosClient(domain)
    try:
        poses, tf_inbox, tf, image = _wire(node, client, RELIABLE_LATCHED)

        class WallClock:
            now_ns = staticmethod(client.now_ns)
        _localize(WallClock, tf, image, poses, small_photos()['chelsea'], 'a frame')
        wait_until(lambda: _map_odom_stamps(tf_inbox), 10.0, 'map -> odom')
        for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_ACTIVATE):
            assert client.change_state(NS, transition)
        resumed = client.now_ns()
        # No new image: the correction from before the pause is re-broadcast.
        wait_until(lambda: any(s > resumed for s in _map_odom_stamps(tf_inbox)), 5.0,
                   'map -> odom re-broadcast after the pause')
    finally:
        client.close()
        node.stop()
