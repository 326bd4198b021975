"""Test TF behaviour over real DDS.

Covers 2-D mode, odometry from a topic, extrinsics fallback, scene-frame overrides, steady
re-broadcast, ``tf_broadcast``, and ``odom_frame_id: ''``.

One node process (two_d_mode, use_odom_topic, no base <- camera TF so ``camera_to_base`` is used,
``scenes.atrium.map_from_scene`` overridden); expected values come from ``Localizer`` run here
and the frame chain applied by hand in 4x4 matrices.
"""
import math

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from lifecycle_msgs.msg import Transition
from nav_msgs.msg import Odometry
import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage

from mspr_ros.localizer import Localizer
from mspr_ros.ros.conversions import ns_to_stamp, rgb_to_image_msg, stamp_to_ns
from ros_components import needs
from ros_harness import diagnostic_values, domain_id, NodeProcess, own_status
from ros_harness import RELIABLE_LATCHED, RosClient, small_photos, TF_QOS, TF_STATIC_QOS
from ros_harness import wait_until

pytestmark = pytest.mark.ros
NS = '/mspr_localizer'
TOLERANCE_S = 0.25
CAMERA_TO_BASE = [0.1, -0.05, 0.4, -math.pi / 2, 0.0, -math.pi / 2 + 0.2]
ATRIUM = [1.0, 2.0, 0.3] + Rotation.from_euler('z', 40, degrees=True).as_quat().tolist() + [2.0]


def matrix(xyz, quat_xyzw):
    """4x4 homogeneous matrix."""
    m = np.eye(4)
    m[:3, :3] = Rotation.from_quat(quat_xyzw).as_matrix()
    m[:3, 3] = xyz
    return m


def msg_matrix(translation, rotation):
    """4x4 matrix from a Point/Vector3 and a Quaternion message."""
    return matrix([translation.x, translation.y, translation.z],
                  [rotation.x, rotation.y, rotation.z, rotation.w])


def planar(x, y, yaw):
    """4x4 matrix of a planar pose."""
    return matrix([x, y, 0.0], Rotation.from_euler('z', yaw).as_quat())


def flatten(m):
    """x, y, yaw of a 4x4 pose (yaw: heading of the x axis), as a planar 4x4."""
    return planar(m[0, 3], m[1, 3], math.atan2(m[1, 0], m[0, 0]))


def assert_same(actual, expected, tol=1e-5):
    """Poses equal to ``tol`` in translation and rotation-matrix entries."""
    np.testing.assert_allclose(actual, expected, atol=tol)


@pytest.fixture(scope='module')
def system(tiny_bundle_path, tmp_path_factory):
    """Start the node, a client, publishers and inboxes."""
    domain = domain_id(3)
    node = NodeProcess(domain, tmp_path_factory.mktemp('tf') / 'node.log', params={
        'weights': str(tiny_bundle_path), 'min_scene_confidence': 0.0, 'max_image_age': 60.0,
        'two_d_mode': True, 'use_odom_topic': True, 'transform_timeout': 0.3,
        'transform_tolerance': TOLERANCE_S, 'camera_to_base': CAMERA_TO_BASE,
        'scenes.atrium.map_from_scene': ATRIUM, 'diagnostics_period': 0.1,
        'fusion': 'none'})
    client = RosClient(domain)
    try:
        inboxes = {
            'pose': client.subscribe(PoseWithCovarianceStamped, f'{NS}/pose', RELIABLE_LATCHED),
            'tf': client.subscribe(TFMessage, '/tf', TF_QOS),
            'tf_static': client.subscribe(TFMessage, '/tf_static', TF_STATIC_QOS),
            'diagnostics': client.subscribe(DiagnosticArray, '/diagnostics', 50),
        }
        pubs = {'image': client.publisher(Image, '/image', 5),
                'odom': client.publisher(Odometry, '/odom', 50)}
        node.wait_active()
        client.wait_for_subscribers(pubs['image'])
        client.wait_for_subscribers(pubs['odom'])
        yield node, client, inboxes, pubs
    finally:
        client.close()
        node.stop()


@pytest.fixture(scope='module')
def localizer(tiny_bundle_path):
    """Return the same model in this process."""
    return Localizer.from_file(tiny_bundle_path, device='cpu')


def _odometry(stamp, m):
    msg = Odometry()
    msg.header.stamp = ns_to_stamp(stamp)
    msg.header.frame_id, msg.child_frame_id = 'odom', 'base_link'
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    p.x, p.y, p.z = (float(v) for v in m[:3, 3])
    q.x, q.y, q.z, q.w = (float(v) for v in Rotation.from_matrix(m[:3, :3]).as_quat())
    return msg


def _map_odom_tfs(inboxes, child='odom'):
    return [t for msg in inboxes['tf'].snapshot() for t in msg.transforms
            if t.header.frame_id == 'map' and t.child_frame_id == child]


def _correction(inboxes, stamp, matches, child='odom'):
    """Return the frame's map -> child from /tf: stamped image + tolerance or later, matching.

    The TF stamping rule raises the stamp past every stamp already sent (a re-broadcast may
    have stamped the previous correction later than image + tolerance).
    """
    tolerance_ns = int(TOLERANCE_S * 1e9)

    def found():
        return next((t for t in _map_odom_tfs(inboxes, child)
                     if stamp_to_ns(t.header.stamp) >= stamp + tolerance_ns
                     and matches(msg_matrix(t.transform.translation, t.transform.rotation))),
                    None)
    wait_until(lambda: found() is not None, 10.0, f'map -> {child} of the frame')
    return found()


def _localize(client, pubs, inboxes, rgb, odom_before, odom_after, gap_ns=100_000_000):
    """Odometry at stamp -/+ gap, then the image at stamp; return (stamp, pose msg)."""
    for _ in range(3):
        stamp = client.now_ns()
        pubs['odom'].publish(_odometry(stamp - gap_ns, odom_before))
        pubs['odom'].publish(_odometry(stamp + gap_ns, odom_after))
        pubs['image'].publish(rgb_to_image_msg(rgb, 'rgb8', stamp, 'camera_optical'))
        try:
            return stamp, inboxes['pose'].wait_for(
                lambda m, s=stamp: stamp_to_ns(m.header.stamp) == s, 10.0, 'the pose')
        except AssertionError:
            continue
    raise AssertionError('no pose for three frames')


def test_scene_alignment_parameter_overrides_the_bundle(system):
    _, _, inboxes, _ = system

    def frames(msg):
        return {t.child_frame_id: t for t in msg.transforms if t.header.frame_id == 'map'}
    msg = inboxes['tf_static'].wait_for(
        lambda m: {'atrium', 'corridor', 'lab'} <= set(frames(m)), 20.0, 'scene frames')
    atrium = frames(msg)['atrium'].transform
    assert_same(msg_matrix(atrium.translation, atrium.rotation), matrix(ATRIUM[:3], ATRIUM[3:7]),
                1e-9)
    lab = frames(msg)['lab'].transform  # the tiny bundle's identity alignment
    assert_same(msg_matrix(lab.translation, lab.rotation), np.eye(4), 1e-12)


def test_two_d_pose_from_interpolated_odometry_and_camera_to_base(system, localizer):
    node, client, inboxes, pubs = system
    rgb = small_photos()['astronaut']
    before, after = planar(2.0, 1.0, 0.3), planar(2.4, 1.2, 0.5)
    stamp, pose = _localize(client, pubs, inboxes, rgb, before, after)
    # Half-way between the two odometry samples: lerp and slerp.
    odom = planar(2.2, 1.1, 0.4)

    result = localizer.localize(rgb)
    scale, r_align, t_align = 1.0, np.eye(3), np.zeros(3)
    if result.scene_name == 'atrium':
        scale, r_align = ATRIUM[7], Rotation.from_quat(ATRIUM[3:7]).as_matrix()
        t_align = np.asarray(ATRIUM[:3])
    m_map_cam = np.eye(4)
    m_map_cam[:3, :3] = r_align @ Rotation.from_quat(result.orientation).as_matrix()
    m_map_cam[:3, 3] = scale * r_align @ result.position + t_align
    m_base_cam = matrix(CAMERA_TO_BASE[:3],
                        Rotation.from_euler('xyz', CAMERA_TO_BASE[3:]).as_quat())
    expected_pose = flatten(m_map_cam @ np.linalg.inv(m_base_cam))

    published = msg_matrix(pose.pose.pose.position, pose.pose.pose.orientation)
    assert_same(published, expected_pose)
    q = pose.pose.pose.orientation
    assert pose.pose.pose.position.z == 0.0 and q.x == 0.0 and q.y == 0.0
    covariance = np.reshape(pose.pose.covariance, (6, 6))
    assert np.all(covariance[2:5, 2:5] == np.diag([1e3] * 3))  # z, roll, pitch not estimated

    _correction(inboxes, stamp,
                lambda map_odom: np.allclose(map_odom @ odom, published, atol=1e-5))
    assert 'using the camera_to_base parameter' in node.output()


def test_map_to_odom_is_rebroadcast_at_a_steady_rate(system):
    _, client, inboxes, pubs = system
    _localize(client, pubs, inboxes, small_photos()['coffee'],
              planar(0.0, 0.0, 0.0), planar(0.1, 0.0, 0.0))
    first = len(_map_odom_tfs(inboxes))
    start_ns = client.now_ns()
    inboxes['tf'].wait_for(lambda m: len(_map_odom_tfs(inboxes)) >= first + 8, 5.0,
                           'eight re-broadcasts')
    fresh = _map_odom_tfs(inboxes)[first:]
    stamps = [stamp_to_ns(t.header.stamp) for t in fresh]
    assert stamps == sorted(stamps)
    tolerance_ns = int(TOLERANCE_S * 1e9)
    # Stamped now + transform_tolerance (both processes share the system clock); the lower bound
    # leaves a second for messages that were in flight when counting started.
    assert all(start_ns + tolerance_ns - 1_000_000_000 <= s <= client.now_ns() + tolerance_ns
               for s in stamps)
    assert stamps[-1] - stamps[0] < 5_000_000_000
    matrices = [msg_matrix(t.transform.translation, t.transform.rotation) for t in fresh]
    for m in matrices[1:]:
        assert_same(m, matrices[0], 1e-12)


def test_missing_odometry_skips_the_frame(system):
    node, client, inboxes, pubs = system

    def rejected():
        status = own_status(inboxes['diagnostics'].snapshot()[-1])
        return int(diagnostic_values(status)['rejected tf_unavailable'])
    before = rejected()
    # No odometry reaches 30 s ahead: the lookup at the image stamp cannot be answered.
    stamp = client.now_ns() + 30_000_000_000
    pubs['image'].publish(rgb_to_image_msg(small_photos()['chelsea'], 'rgb8', stamp, 'cam'))
    inboxes['diagnostics'].wait_for(lambda m: own_status(m) is not None and int(
        diagnostic_values(own_status(m))['rejected tf_unavailable']) > before, 10.0,
        'a tf_unavailable rejection')
    # The rejection is counted before it is logged: wait for the line rather than race it.
    wait_until(lambda: "no transform 'odom' <- 'base_link'" in node.output(), 5.0,
               'the tf_unavailable warning in the node log')
    assert stamp not in {stamp_to_ns(m.header.stamp) for m in inboxes['pose'].snapshot()}


def test_tf_broadcast_can_be_switched_off_at_run_time(system):
    _, client, inboxes, _ = system
    assert client.set_parameters(NS, {'tf_broadcast': False})[0].successful
    # Whatever the node sent before the change is stamped at most now + tolerance (stamps
    # follow the clock); anything later would be a broadcast after the switch.
    switched_off = client.now_ns() + int(TOLERANCE_S * 1e9)
    count = len(_map_odom_tfs(inboxes))
    try:
        with pytest.raises(AssertionError, match='timed out'):
            inboxes['tf'].wait_for(lambda m: any(
                t.child_frame_id == 'odom' and stamp_to_ns(t.header.stamp) > switched_off
                for t in m.transforms), 0.6, 'a map -> odom broadcast (twelve periods)')
    finally:
        assert client.set_parameters(NS, {'tf_broadcast': True})[0].successful
    inboxes['tf'].wait_for(lambda m: len(_map_odom_tfs(inboxes)) > count, 5.0, 'TF again')


def test_empty_odom_frame_publishes_map_to_base_directly(system):
    node, client, inboxes, pubs = system
    assert client.set_parameters(NS, {'odom_frame_id': ''})[0].successful
    for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP,
                       Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
        assert client.change_state(NS, transition)
    node.wait_for_output(r'WARN.*odom_frame_id is empty: publishing map -> base_link', 5.0)
    client.wait_for_subscribers(pubs['image'])
    # Odometry is irrelevant now; none is sent.
    for _ in range(3):
        stamp = client.now_ns()
        pubs['image'].publish(rgb_to_image_msg(small_photos()['coffee'], 'rgb8', stamp, 'c'))
        try:
            pose = inboxes['pose'].wait_for(
                lambda m, s=stamp: stamp_to_ns(m.header.stamp) == s, 10.0, 'the pose')
            break
        except AssertionError:
            continue
    else:
        raise AssertionError('no pose for three frames')
    published = msg_matrix(pose.pose.pose.position, pose.pose.pose.orientation)
    _correction(inboxes, stamp, lambda m: np.allclose(m, published, atol=1e-9), 'base_link')


@pytest.mark.parametrize('backend', ['mspr_ros', pytest.param('tf2_ros', marks=needs('tf2_ros'))])
def test_tf_backends_broadcast_latch_look_up_and_clear(backend):
    """Both TF backends behind one interface, over DDS between two nodes of this process."""
    from mspr_ros.geometry.transforms import Transform
    from mspr_ros.ros.conversions import transform_to_msg
    from mspr_ros.ros.tf import create_tf_interfaces, TransformUnavailable
    client = RosClient(domain_id(5), name='tf_backend_test')
    try:
        sender = create_tf_interfaces(client.node, use_tf2_ros=backend == 'tf2_ros')
        receiver = create_tf_interfaces(client.node, use_tf2_ros=backend == 'tf2_ros')
        first = Transform.from_xyz_rpy([1.0, 0.0, 0.0], [0.0, 0.0, 0.5])
        second = Transform.from_xyz_rpy([0.0, 2.0, 0.0], [0.1, 0.0, 0.0])
        # Two separate sends: the latched message must hold both static transforms.
        sender.static_broadcaster.send([transform_to_msg(first, 'map', 'a', 0)])
        sender.static_broadcaster.send([transform_to_msg(second, 'a', 'b', 0)])
        late = client.subscribe(TFMessage, '/tf_static', TF_STATIC_QOS)
        late.wait_for(lambda m: {t.child_frame_id for t in m.transforms} == {'a', 'b'}, 10.0,
                      'one latched message with both static transforms')
        got = receiver.listener.lookup('map', 'b', None, 5.0)
        assert got.almost_equal(first @ second, 1e-9, 1e-9)

        t0 = client.now_ns()
        sender.broadcaster.send([transform_to_msg(Transform.identity(), 'odom', 'base', t0)])
        sender.broadcaster.send([transform_to_msg(
            Transform.from_xyz_rpy([2.0, 0.0, 0.0], [0.0, 0.0, 0.0]), 'odom', 'base',
            t0 + 1_000_000_000)])
        halfway = receiver.listener.lookup('odom', 'base', t0 + 500_000_000, 5.0)
        np.testing.assert_allclose(halfway.translation, [1.0, 0.0, 0.0], atol=1e-9)
        with pytest.raises(TransformUnavailable, match="'odom' <- 'base'"):
            receiver.listener.lookup('odom', 'base', t0 + 5_000_000_000, 0.2)
        # A clock jump back clears the time line; the latched statics stay.
        receiver.listener.clear()
        with pytest.raises(TransformUnavailable, match="'odom' <- 'base'"):
            receiver.listener.lookup('odom', 'base', t0 + 500_000_000, 0.0)
        assert receiver.listener.lookup('map', 'b', None, 0.0).almost_equal(
            first @ second, 1e-9, 1e-9)
        sender.close()
        receiver.close()
    finally:
        client.close()
