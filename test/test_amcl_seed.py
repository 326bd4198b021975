"""Seeding AMCL: the lost thresholds (ROS-free), then the node over DDS with a fake AMCL.

The fake AMCL lives in this process and talks to the node as Nav2's does: it publishes
``amcl_pose`` reliable and transient local, and subscribes to ``initialpose`` with the system
default QoS (reliable, volatile). Over DDS: (a) an AMCL tighter than our pose gets no seed;
(b) a lost AMCL gets the seed re-sent until its ``amcl_pose`` shows it, then no more; (c) a
subscriber that joins after the first send still gets the seed, and with nobody answering the
node gives up after ``seed_amcl_max_attempts`` and says so in /diagnostics. The rules
themselves are unit-tested in test_amcl_seeder.py.
"""
import math

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped
import numpy as np
import pytest
from rclpy.qos import qos_profile_system_default
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage

from mspr_ros.estimation.amcl_seed import AmclSeedPolicy
from mspr_ros.geometry.transforms import Transform
from mspr_ros.ros.conversions import ns_to_stamp, pose_with_covariance_stamped
from mspr_ros.ros.conversions import rgb_to_image_msg, stamp_to_ns
from ros_harness import diagnostic_values, domain_id, NODE_NAME, NodeProcess, RELIABLE_LATCHED
from ros_harness import RosClient, stop_all, TF_QOS, wait_until

SECOND = 1_000_000_000


def _covariance(xy_stddev, yaw_stddev):
    return np.diag([xy_stddev ** 2, xy_stddev ** 2, 0.0, 0.0, 0.0, yaw_stddev ** 2])


def test_seeds_only_when_amcl_is_uncertain_and_not_just_seeded():
    policy = AmclSeedPolicy(position_stddev_m=0.5, yaw_stddev_rad=0.35, min_interval_s=10.0)
    assert policy.reason(_covariance(0.2, 0.1), 100 * SECOND, None) is None
    assert policy.reason(_covariance(0.5, 0.35), 100 * SECOND, None) is None  # at the threshold
    assert 'position stddev 0.80 m' in policy.reason(_covariance(0.8, 0.1), 100 * SECOND, None)
    assert 'yaw stddev 0.50 rad' in policy.reason(_covariance(0.2, 0.5), 100 * SECOND, None)
    # y alone counts too.
    covariance = _covariance(0.1, 0.1)
    covariance[1, 1] = 1.0
    assert policy.reason(covariance, 100 * SECOND, None) is not None
    # Within the interval of the last seed: no; after it: yes.
    assert policy.reason(_covariance(2.0, 0.1), 100 * SECOND, 95 * SECOND) is None
    assert policy.reason(_covariance(2.0, 0.1), 105 * SECOND, 95 * SECOND) is not None


def test_bad_input_is_refused_with_a_message():
    policy = AmclSeedPolicy()
    with pytest.raises(ValueError, match='6x6'):
        policy.reason(np.eye(3), 0, None)
    with pytest.raises(ValueError, match='finite'):
        policy.reason(np.full((6, 6), np.nan), 0, None)
    with pytest.raises(ValueError, match='position_stddev_m'):
        AmclSeedPolicy(position_stddev_m=0.0)
    with pytest.raises(ValueError, match='min_interval_s'):
        AmclSeedPolicy(min_interval_s=-1.0)


# --- over DDS: the node and a fake AMCL in this process -------------------------------------

# Node-side settings of the DDS tests: known covariance (fixed, no confidence inflation, each
# frame's own estimate), quick re-sends, no extrinsic on /tf (optical frame at the base origin).
RETRY_S = 0.2
MAX_ATTEMPTS = 10
OURS_STDDEV = (0.5, 0.1)  # position (m), orientation (rad)
NAMESPACES = ('tight', 'lost', 'late')


def _node_params(bundle, namespace):
    return {
        'weights': str(bundle), 'min_scene_confidence': 0.0, 'max_image_age': 60.0,
        'transform_timeout': 0.5, 'diagnostics_period': 0.2, 'two_d_mode': True,
        'tf_broadcast': False, 'publish_initialpose': True, 'amcl_pose_topic': 'amcl_pose',
        'odom_frame_id': f'odom_{namespace}', 'base_frame_id': f'base_{namespace}',
        'camera_to_base': [0.0, 0.0, 0.0, -math.pi / 2, 0.0, -math.pi / 2],
        'covariance.mode': 'fixed', 'covariance.position_stddev': OURS_STDDEV[0],
        'covariance.orientation_stddev': OURS_STDDEV[1],
        'covariance.confidence_inflation': 0.0, 'fusion': 'none',
        'seed_amcl_retry_period': RETRY_S, 'seed_amcl_max_attempts': MAX_ATTEMPTS}


@pytest.fixture(scope='module')
def nodes(tiny_bundle_path, tmp_path_factory):
    """One node per test, each in its own namespace, started together (start-up in parallel)."""
    logs = tmp_path_factory.mktemp('amcl_seed')
    domain = domain_id(75)
    started = {ns: NodeProcess(domain, logs / f'{ns}.log', namespace=f'/{ns}',
                               params=_node_params(tiny_bundle_path, ns))
               for ns in NAMESPACES}
    client = RosClient(domain)
    diagnostics = client.subscribe(DiagnosticArray, '/diagnostics')
    tf = client.publisher(TFMessage, '/tf', TF_QOS)
    try:
        for node in started.values():
            node.wait_active()
        # Every node's TF listener, so that no frame's odometry is sent before it can arrive.
        wait_until(lambda: tf.get_subscription_count() >= len(started), 20.0,
                   'the TF listeners of the nodes')
        yield started, client, diagnostics, tf
    finally:
        client.close()
        stop_all(started.values())


class _Robot:
    """The test's side of one node: its image, odometry, fake AMCL and seed inbox."""

    def __init__(self, nodes, namespace):
        started, self.client, self._diagnostics, self._tf = nodes
        self.node = started[namespace]
        self.ns = namespace
        client = self.client
        self.poses = client.subscribe(PoseWithCovarianceStamped, f'/{namespace}/{NODE_NAME}/pose',
                                      RELIABLE_LATCHED)
        # As Nav2's AMCL subscribes: SystemDefaultsQoS (reliable, volatile).
        self.seeds = client.subscribe(PoseWithCovarianceStamped, f'/{namespace}/initialpose',
                                      qos_profile_system_default)
        # As Nav2's AMCL publishes amcl_pose: reliable, transient local, depth 1.
        self.amcl = client.publisher(PoseWithCovarianceStamped, f'/{namespace}/amcl_pose',
                                     RELIABLE_LATCHED)
        self._images = client.publisher(Image, f'/{namespace}/image', 5)
        client.wait_for_subscribers(self._images)

    def values(self, timeout, what, predicate):
        """Wait for this node's diagnostics to satisfy ``predicate(values)``; return them."""
        fqn_status = f'{NODE_NAME}: localization'
        msg = self._diagnostics.wait_for(
            lambda m: any(s.name == fqn_status and self._mine(s)
                          and predicate(diagnostic_values(s)) for s in m.status),
            timeout, f'{self.ns}: {what}')
        return next(diagnostic_values(s) for s in msg.status
                    if s.name == fqn_status and self._mine(s)
                    and predicate(diagnostic_values(s)))

    def _mine(self, status):
        # Every node of the module publishes on /diagnostics; each has its own input topic.
        return diagnostic_values(status).get('input topic') == f'/{self.ns}/image'

    def report(self, x, y, yaw, covariance_6x6):
        """Publish AMCL's estimate, stamped now (as AMCL stamps its scan)."""
        msg = pose_with_covariance_stamped(Transform.from_xyz_rpy([x, y, 0.0], [0.0, 0.0, yaw]),
                                           covariance_6x6, 'map', self.client.now_ns())
        self.amcl.publish(msg)
        return msg

    def frame(self):
        """Send frames until one gives a pose (the first one may meet cold caches); return it."""
        for attempt in range(3):
            stamp = self._send_frame(attempt)
            try:
                return self.poses.wait_for(lambda m, s=stamp: stamp_to_ns(m.header.stamp) == s,
                                           10.0, f'{self.ns}: the pose of the frame')
            except AssertionError:
                continue
        raise AssertionError(f'{self.ns}: no pose for three frames\n{self.node.output()[-3000:]}')

    def _send_frame(self, seed):
        """Send odometry and an image at one stamp; return the stamp."""
        stamp = self.client.now_ns()
        odom = TransformStamped()
        odom.header.stamp = ns_to_stamp(stamp)
        odom.header.frame_id, odom.child_frame_id = f'odom_{self.ns}', f'base_{self.ns}'
        odom.transform.rotation.w = 1.0
        self._tf.publish(TFMessage(transforms=[odom]))
        rgb = np.random.default_rng(seed).integers(0, 255, (120, 160, 3), dtype=np.uint8)
        self._images.publish(rgb_to_image_msg(rgb, 'rgb8', stamp, 'camera'))
        return stamp

    def no_own_seed_taken_as_prior(self):
        assert 'initialpose prior set' not in self.node.output(), \
            f'{self.ns}: the node took its own seed for an initial pose'


def _planar(stddev_m, stddev_rad):
    return np.diag([stddev_m ** 2, stddev_m ** 2, 1e3, 1e3, 1e3, stddev_rad ** 2])


def _stays_quiet(inbox, count, seconds, what):
    """Fail if the inbox gets more than ``count`` messages within ``seconds`` (a deadline)."""
    with pytest.raises(AssertionError, match='timed out'):
        inbox.wait_count(count + 1, seconds, what)


@pytest.mark.ros
def test_a_tracking_amcl_tighter_than_us_gets_no_seed(nodes):
    robot = _Robot(nodes, 'tight')
    robot.client.wait_for_subscribers(robot.amcl)
    robot.report(0.0, 0.0, 0.0, _planar(0.05, 0.02))  # AMCL tracking: 5 cm, 0.02 rad
    robot.values(10.0, 'AMCL heard', lambda v: v.get('amcl pose stddev', '').startswith(
        'x 0.050 m'))
    robot.frame()
    # Today's code seeded here (the first relocalized frame after activation), resetting a
    # 5 cm particle cloud to our 0.5 m: now the seed is declined.
    values = robot.values(10.0, 'the seed declined', lambda v: v.get('amcl seed') == 'declined')
    assert 'x 0.500 m' in values['amcl seed detail'], values
    _stays_quiet(robot.seeds, 0, 3 * RETRY_S, 'a seed for a tighter AMCL')


@pytest.mark.ros
def test_a_lost_amcl_gets_the_seed_until_it_shows_it_then_no_more(nodes):
    robot = _Robot(nodes, 'lost')
    robot.client.wait_for_subscribers(robot.amcl)
    robot.report(3.0, -2.0, 1.0, _planar(3.0, 1.5))  # lost: 3 m, 1.5 rad
    robot.values(10.0, 'AMCL heard', lambda v: v.get('amcl pose stddev', '').startswith(
        'x 3.000 m'))
    pose = robot.frame()
    # This AMCL misses the first two seeds (as one that subscribes late or drops them would):
    # the node re-sends, one retry period apart.
    seeds = robot.seeds.wait_count(3, 10 * RETRY_S + 5.0, f'seeds re-sent to {robot.ns}')
    assert all(s.pose == pose.pose and s.header == pose.header for s in seeds), \
        'each re-send carries the newest pose (here the only one)'
    robot.values(5.0, 'waiting for AMCL', lambda v: v.get('amcl seed') == 'waiting')
    # Now AMCL takes the seed: its next amcl_pose is the seed, stamped after it.
    seed = seeds[2]
    took = robot.report(seed.pose.pose.position.x, seed.pose.pose.position.y,
                        Transform.from_xyz_quat([0, 0, 0], [seed.pose.pose.orientation.x,
                                                            seed.pose.pose.orientation.y,
                                                            seed.pose.pose.orientation.z,
                                                            seed.pose.pose.orientation.w]).yaw(),
                        np.asarray(seed.pose.covariance).reshape(6, 6))
    values = robot.values(5.0, 'the seed took', lambda v: v.get('amcl seed') == 'took')
    assert values['amcl pose stddev'] == 'x 0.500 m, y 0.500 m, yaw 0.100 rad', values
    count = len(robot.seeds.snapshot())
    assert count <= MAX_ATTEMPTS
    _stays_quiet(robot.seeds, count, 3 * RETRY_S, 'a re-send after the seed took')
    assert stamp_to_ns(took.header.stamp) >= stamp_to_ns(seeds[0].header.stamp)
    robot.no_own_seed_taken_as_prior()


@pytest.mark.ros
def test_a_subscriber_that_joins_late_still_gets_the_seed(nodes):
    robot = _Robot(nodes, 'late')
    pose = robot.frame()
    first = robot.seeds.wait_for(lambda m: True, 5.0, 'the first seed')
    assert first.pose == pose.pose
    # An AMCL that subscribes only now: volatile, so DDS gives it nothing sent before.
    late = robot.client.subscribe(PoseWithCovarianceStamped, f'/{robot.ns}/initialpose',
                                  qos_profile_system_default)
    seed = late.wait_for(lambda m: True, MAX_ATTEMPTS * RETRY_S + 1.0,
                         'a re-sent seed on the late subscription')
    assert seed.pose == pose.pose and seed.header == pose.header
    # Nobody answers on amcl_pose: after MAX_ATTEMPTS sends the node gives up, and says so.
    values = robot.values(MAX_ATTEMPTS * RETRY_S + 5.0, 'giving up',
                          lambda v: v.get('amcl seed') == 'gave_up')
    assert values['amcl seed attempts'] == f'{MAX_ATTEMPTS}/{MAX_ATTEMPTS}'
    robot.node.wait_for_output('giving up: AMCL did not take the seed', 5.0)
    assert len(robot.seeds.snapshot()) == MAX_ATTEMPTS
    robot.no_own_seed_taken_as_prior()
