"""The node end to end over real DDS: image + TF in; pose, camera pose, scene, map -> odom out.

One node process serves the module. Every output is checked against ``Localizer`` run here on the
same image, with the frame chain applied by hand in 4x4 matrices (not through
mspr_ros.geometry.transforms):
``T_map_cam = S_map_scene * T_scene_cam``, ``T_map_base = T_map_cam * inv(T_base_cam)``,
``T_map_odom = T_map_base * inv(T_odom_base(t_img))``.
"""
import copy
import hashlib
import math

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
import numpy as np
import pytest
from rclpy.parameter import Parameter
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import Image
from std_msgs.msg import Float32, String
from std_srvs.srv import Empty, Trigger
from tf2_msgs.msg import TFMessage

from mspr_ros.bundle import build_model_from_bundle, load_bundle, save_bundle
from mspr_ros.image_conversion import image_to_rgb
from mspr_ros.localizer import Localizer
from mspr_ros.ros.conversions import ns_to_stamp, rgb_to_image_msg, stamp_to_ns
from ros_harness import diagnostic_values, domain_id, NodeProcess, own_status
from ros_harness import RELIABLE_LATCHED, RosClient, small_photos, TF_QOS, TF_STATIC_QOS
from ros_harness import transform_msg, wait_until

pytestmark = pytest.mark.ros
NS = '/mspr_localizer'
TOLERANCE_S = 0.5
CAMERA_FRAME = 'camera_optical'
# Scene alignments with rotation and scale, so that a wrong chain cannot pass by accident.
ALIGNMENTS = {
    'atrium': {'translation': [5.0, -3.0, 0.2],
               'rotation_xyzw': Rotation.from_euler('z', 30, degrees=True).as_quat().tolist(),
               'scale': 1.5},
    'corridor': {'translation': [-20.0, 4.0, 0.0],
                 'rotation_xyzw': Rotation.from_euler('zyx', [-80, 3, 2],
                                                      degrees=True).as_quat().tolist(),
                 'scale': 0.8},
    'lab': {'translation': [0.5, 0.5, -0.1],
            'rotation_xyzw': Rotation.from_euler('z', 170, degrees=True).as_quat().tolist(),
            'scale': 1.0},
}
CALIBRATION = np.diag([0.04, 0.09, 0.01, 0.002, 0.003, 0.005])
CALIBRATION[0, 1] = CALIBRATION[1, 0] = 0.01


def matrix(xyz, quat_xyzw):
    """4x4 homogeneous matrix of a translation and an xyzw quaternion."""
    m = np.eye(4)
    m[:3, :3] = Rotation.from_quat(quat_xyzw).as_matrix()
    m[:3, 3] = xyz
    return m


def pose_matrix(pose):
    """4x4 matrix of a geometry_msgs/Pose."""
    p, q = pose.position, pose.orientation
    return matrix([p.x, p.y, p.z], [q.x, q.y, q.z, q.w])


def tf_matrix(transform):
    """4x4 matrix of a geometry_msgs/Transform."""
    t, q = transform.translation, transform.rotation
    return matrix([t.x, t.y, t.z], [q.x, q.y, q.z, q.w])


def assert_same_pose(actual, expected, tol=1e-5):
    """Assert translation within ``tol`` m, rotation matrix entries within ``tol``."""
    np.testing.assert_allclose(actual[:3, 3], expected[:3, 3], atol=tol)
    np.testing.assert_allclose(actual[:3, :3], expected[:3, :3], atol=tol)


# base <- camera optical: 0.2 m ahead, 0.5 m up, looking forward and pitched 10 deg down.
T_BASE_CAM = matrix([0.2, 0.0, 0.5], Rotation.from_euler(
    'xyz', [-math.pi / 2 - math.radians(10), 0.0, -math.pi / 2]).as_quat())


def odom_pose(k):
    """Return a distinct odom -> base_link for frame k (3-D, so nothing is accidentally planar)."""
    return matrix([1.0 + 0.3 * k, -0.5 * k, 0.05],
                  Rotation.from_euler('xyz', [0.02, -0.01, 0.4 * k]).as_quat())


@pytest.fixture(scope='module')
def aligned_bundle(tiny_bundle_path, tmp_path_factory):
    """Re-save the tiny bundle with non-trivial scene alignments and a calibration."""
    bundle = load_bundle(tiny_bundle_path)
    path = tmp_path_factory.mktemp('pipeline') / 'aligned.safetensors'
    save_bundle(path, build_model_from_bundle(bundle), bundle.config, bundle.scene_names,
                scene_alignment=ALIGNMENTS,
                covariance={name: CALIBRATION for name in bundle.scene_names})
    return path


@pytest.fixture(scope='module')
def localizer(aligned_bundle):
    """Return the same model, run in the test process."""
    return Localizer.from_file(aligned_bundle, device='cpu')


@pytest.fixture(scope='module')
def system(aligned_bundle, tmp_path_factory):
    """Start a running node plus a client with publishers and inboxes on every output."""
    domain = domain_id(0)
    node = NodeProcess(domain, tmp_path_factory.mktemp('logs') / 'node.log', params={
        'weights': str(aligned_bundle), 'min_scene_confidence': 0.0, 'max_image_age': 30.0,
        'transform_timeout': 2.0, 'transform_tolerance': TOLERANCE_S,
        'publish_initialpose': True, 'diagnostics_period': 0.2,
        # Each frame's own estimate on ~/pose: fusion 'none' must reproduce it exactly.
        'fusion': 'none',
        # The harness starts nodes with OMP_NUM_THREADS=1; the parameter must override it.
        'cpu_threads': 2})
    client = RosClient(domain)
    try:
        inboxes = {
            'pose': client.subscribe(PoseWithCovarianceStamped, f'{NS}/pose', RELIABLE_LATCHED),
            'camera_pose': client.subscribe(PoseStamped, f'{NS}/camera_pose'),
            'pose_raw': client.subscribe(PoseWithCovarianceStamped, f'{NS}/pose_raw'),
            'scene': client.subscribe(String, f'{NS}/scene'),
            'confidence': client.subscribe(Float32, f'{NS}/scene_confidence'),
            'tf': client.subscribe(TFMessage, '/tf', TF_QOS),
            'tf_static': client.subscribe(TFMessage, '/tf_static', TF_STATIC_QOS),
            'diagnostics': client.subscribe(DiagnosticArray, '/diagnostics'),
            'initialpose': client.subscribe(PoseWithCovarianceStamped, '/initialpose', 5),
        }
        pubs = {
            'image': client.publisher(Image, '/image', 5),
            'tf': client.publisher(TFMessage, '/tf', TF_QOS),
            'tf_static': client.publisher(TFMessage, '/tf_static', TF_STATIC_QOS),
            'initialpose': client.publisher(PoseWithCovarianceStamped, '/initialpose', 5),
        }
        pubs['tf_static'].publish(TFMessage(transforms=[
            transform_msg(T_BASE_CAM, 'base_link', CAMERA_FRAME, 0)]))
        node.wait_active()
        client.wait_for_subscribers(pubs['image'])
        client.wait_for_subscribers(pubs['tf'])
        yield node, client, inboxes, pubs
    finally:
        client.close()
        node.stop()


class Sender:
    """Publishes image + odom TF and waits for the node's answer for that stamp."""

    def __init__(self, system):
        """Use the module's node, client, inboxes and publishers."""
        self.node, self.client, self.inboxes, self.pubs = system
        self.count = 0

    def send(self, rgb, encoding='rgb8', odom=None):
        """Publish one frame; return (stamp_ns, odom matrix, Image msg)."""
        self.count += 1
        odom = odom_pose(self.count) if odom is None else odom
        stamp = self.client.now_ns()
        self.pubs['tf'].publish(TFMessage(transforms=[
            transform_msg(odom, 'odom', 'base_link', stamp)]))
        msg = rgb_to_image_msg(rgb, encoding, stamp, CAMERA_FRAME)
        self.pubs['image'].publish(msg)
        return stamp, odom, msg

    def localize(self, rgb, encoding='rgb8', odom=None, attempts=3):
        """Send until a pose for the frame arrives (a best-effort frame may be lost in flight)."""
        for _ in range(attempts):
            stamp, odom_m, msg = self.send(rgb, encoding, odom)
            try:
                pose = self.inboxes['pose'].wait_for(
                    lambda m, s=stamp: stamp_to_ns(m.header.stamp) == s, 10.0, 'the pose')
            except AssertionError:
                continue
            return stamp, odom_m, msg, pose
        raise AssertionError(f'no pose after {attempts} frames:\n{self.node.output()[-3000:]}')


def expected_outputs(localizer, msg, odom):
    """Return what the node must publish for ``msg``, by hand from the localizer's raw result."""
    rgb = image_to_rgb(msg.height, msg.width, msg.encoding, msg.step, bytes(msg.data))
    result = localizer.localize(rgb)
    align = ALIGNMENTS[result.scene_name]
    scale, r_align = align['scale'], Rotation.from_quat(align['rotation_xyzw']).as_matrix()
    m_map_cam = np.eye(4)
    m_map_cam[:3, :3] = r_align @ Rotation.from_quat(result.orientation).as_matrix()
    m_map_cam[:3, 3] = scale * r_align @ result.position + np.asarray(align['translation'])
    m_map_base = m_map_cam @ np.linalg.inv(T_BASE_CAM)
    m_map_odom = m_map_base @ np.linalg.inv(odom)
    jacobian = np.zeros((6, 6))
    jacobian[:3, :3], jacobian[3:, 3:] = scale * r_align, r_align
    c = result.scene_confidence
    factor = 1.0 + 1.0 * (1.0 - c) / max(c, 1e-3)  # default confidence_inflation 1
    covariance = factor * jacobian @ CALIBRATION @ jacobian.T
    # Lever arm camera -> base: an orientation error d_theta moves the base by d_theta x offset.
    ox, oy, oz = m_map_base[:3, 3] - m_map_cam[:3, 3]
    lever = np.eye(6)
    lever[:3, 3:] = -np.array([[0.0, -oz, oy], [oz, 0.0, -ox], [-oy, ox, 0.0]])
    covariance = lever @ covariance @ lever.T
    return result, m_map_cam, m_map_base, m_map_odom, covariance


def test_scene_frames_latched_on_tf_static(system):
    _, _, inboxes, _ = system
    expected = {scene: matrix(a['translation'], a['rotation_xyzw'])
                for scene, a in ALIGNMENTS.items()}

    def has_all(msg):
        return {t.child_frame_id for t in msg.transforms if t.header.frame_id == 'map'} >= \
            set(expected)
    msg = inboxes['tf_static'].wait_for(has_all, 20.0, 'map -> scene frames on /tf_static')
    for t in msg.transforms:
        if t.header.frame_id == 'map':
            assert_same_pose(tf_matrix(t.transform), expected[t.child_frame_id], 1e-9)


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8'])
def test_outputs_match_localizer_and_frame_chain(system, localizer, encoding):
    _, _, inboxes, _ = system
    sender = Sender(system)
    for name, rgb in small_photos().items():
        stamp, odom, msg, pose = sender.localize(rgb, encoding)
        result, m_map_cam, m_map_base, m_map_odom, cov = expected_outputs(localizer, msg, odom)

        assert pose.header.frame_id == 'map'
        assert_same_pose(pose_matrix(pose.pose.pose), m_map_base)
        np.testing.assert_allclose(np.reshape(pose.pose.covariance, (6, 6)), cov,
                                   rtol=1e-4, atol=1e-9)
        raw = inboxes['pose_raw'].wait_for(lambda m, s=stamp: stamp_to_ns(m.header.stamp) == s,
                                           10.0, f'raw pose of {name}')
        assert raw.pose == pose.pose  # fusion none: ~/pose is the frame's own estimate
        camera = inboxes['camera_pose'].wait_for(
            lambda m: stamp_to_ns(m.header.stamp) == stamp, 10.0, f'camera pose of {name}')
        assert camera.header.frame_id == 'map'
        assert_same_pose(pose_matrix(camera.pose), m_map_cam)

        # Stamped image + tolerance, or later when a re-broadcast already stamped the previous
        # correction past that (the TF stamping rule).
        tolerance_ns = int(TOLERANCE_S * 1e9)

        def this_frame(t, stamp=stamp, m_map_odom=m_map_odom):
            return (t.child_frame_id == 'odom' and stamp_to_ns(t.header.stamp) >= stamp
                    + tolerance_ns and np.allclose(tf_matrix(t.transform), m_map_odom,
                                                   rtol=1e-4, atol=1e-5))
        tf = inboxes['tf'].wait_for(lambda m: any(this_frame(t) for t in m.transforms), 10.0,
                                    f'map -> odom for {name}')
        map_odom = next(t for t in tf.transforms if this_frame(t))
        assert map_odom.header.frame_id == 'map'
        assert_same_pose(tf_matrix(map_odom.transform), m_map_odom)
        # map -> odom composed with odom -> base at the image stamp is the published pose.
        assert_same_pose(tf_matrix(map_odom.transform) @ odom, pose_matrix(pose.pose.pose))

        inboxes['scene'].wait_for(lambda m: m.data == result.scene_name, 10.0, 'the scene')
        inboxes['confidence'].wait_for(
            lambda m: abs(m.data - result.scene_confidence) < 1e-6, 10.0, 'the confidence')


def test_black_and_white_frames_give_finite_poses(system):
    sender = Sender(system)
    for value in (0, 255):
        _, _, _, pose = sender.localize(np.full((120, 160, 3), value, np.uint8))
        p, q = pose.pose.pose.position, pose.pose.pose.orientation
        numbers = [p.x, p.y, p.z, q.x, q.y, q.z, q.w, *pose.pose.covariance]
        assert all(math.isfinite(v) for v in numbers)
        assert abs(q.x ** 2 + q.y ** 2 + q.z ** 2 + q.w ** 2 - 1.0) < 1e-9


def test_pose_is_latched_for_late_subscribers(system):
    _, client, inboxes, _ = system
    Sender(system).localize(small_photos()['coffee'])
    last = inboxes['pose'].snapshot()[-1]
    late = client.subscribe(PoseWithCovarianceStamped, f'{NS}/pose', RELIABLE_LATCHED)
    got = late.wait_for(lambda m: True, 10.0, 'the latched pose')
    assert got.header.stamp == last.header.stamp and got.pose == last.pose


def test_diagnostics_report_model_rates_and_latency(system, aligned_bundle):
    node, _, inboxes, _ = system
    Sender(system).localize(small_photos()['chelsea'])

    def localized(msg):
        status = own_status(msg)
        return status is not None and diagnostic_values(status).get('localized') == 'yes'
    status = own_status(inboxes['diagnostics'].wait_for(localized, 10.0, 'a localized status'))
    values = diagnostic_values(status)
    assert status.level == b'\x00', status.message
    assert values['weights'] == str(aligned_bundle)
    assert values['weights sha256'] == hashlib.sha256(aligned_bundle.read_bytes()).hexdigest()
    assert values['device'] == 'cpu' and values['lifecycle state'] == 'active'
    assert values['cpu threads'] == '2'
    assert (values['precision'], values['cuda graphs'], values['torch compile']) == (
        'fp32', 'false', 'false')
    assert values['input topic'] == '/image'
    assert int(values['poses published']) >= 1
    assert float(values['input rate (Hz)']) > 0 and float(values['output rate (Hz)']) > 0
    for stage in ('decode', 'preprocess', 'inference', 'publish', 'total'):
        assert float(values[f'{stage} latency max (ms)']) >= \
            float(values[f'{stage} latency mean (ms)']) > 0
    for stage in ('tf', 'pose_stream'):  # lookups and the fusion: may print as 0.00
        assert float(values[f'{stage} latency max (ms)']) >= 0
    assert values['scene'] in ALIGNMENTS
    for reason in ('stale', 'low_confidence', 'scene_not_allowed', 'jump_translation',
                   'jump_rotation', 'tf_unavailable', 'bad_image'):
        assert f'rejected {reason}' in values
    # 'auto' fell back to the CPU with exactly one warning.
    assert node.output().count('CUDA is not available, running on the CPU') == 1


def _rejections(inboxes, reason):
    status = own_status(inboxes['diagnostics'].snapshot()[-1])
    return int(diagnostic_values(status)[f'rejected {reason}'])


def _wait_rejections(inboxes, reasons, count):
    def reached(msg):
        status = own_status(msg)
        return status is not None and sum(
            int(diagnostic_values(status)[f'rejected {r}']) for r in reasons) >= count
    inboxes['diagnostics'].wait_for(reached, 10.0, f'{count} rejections {reasons}')


def test_initialpose_prior_relocalize_and_reinitialize(system):
    node, client, inboxes, pubs = system
    jump_reasons = ('jump_translation', 'jump_rotation')
    assert all(r.successful for r in client.set_parameters(
        NS, {'max_jump_translation': 0.001, 'max_jump_rotation': 0.1}))
    sender = Sender(system)
    photos = small_photos()
    odom = odom_pose(7)
    try:
        assert client.call(Trigger, f'{NS}/relocalize').success
        s1, _, _, first = sender.localize(photos['astronaut'], odom=odom)

        # A prior 50 m away (tight covariance): the same frame is inconsistent with it and
        # refused (one frame: fewer than relocalization_agreement_frames agree elsewhere).
        prior = PoseWithCovarianceStamped()
        prior.header.frame_id = 'map'
        prior.header.stamp = ns_to_stamp(client.now_ns())
        prior.pose.pose = copy.deepcopy(first.pose.pose)
        prior.pose.pose.position.x += 50.0
        prior.pose.covariance = list(np.diag([0.01] * 6).reshape(36))
        client.wait_for_subscribers(pubs['initialpose'])
        pubs['initialpose'].publish(prior)
        node.wait_for_output(r'initialpose prior set', 10.0)
        before = sum(_rejections(inboxes, r) for r in jump_reasons)
        against_prior = _rejections(inboxes, 'initial_pose')
        s2, _, _ = sender.send(photos['astronaut'], odom=odom)
        _wait_rejections(inboxes, ('initial_pose',), against_prior + 1)

        response = client.call(Trigger, f'{NS}/relocalize')
        assert response.success and 'regardless' in response.message
        s3, _, _, relocalized = sender.localize(photos['astronaut'], odom=odom)
        assert abs(relocalized.pose.pose.position.x - first.pose.pose.position.x) < 1e-6

        # A different photo jumps from the odometry prediction until AMCL's service is called.
        s4, _, _ = sender.send(photos['coffee'], odom=odom)
        _wait_rejections(inboxes, jump_reasons, before + 1)
        # AMCL's service name under the node's private name, so it never collides with AMCL's.
        client.call(Empty, f'{NS}/reinitialize_global_localization')
        s5, _, _, _ = sender.localize(photos['coffee'], odom=odom)
    finally:
        client.set_parameters(NS, {'max_jump_translation': 0.0, 'max_jump_rotation': 0.0})
    pose_stamps = {stamp_to_ns(m.header.stamp) for m in inboxes['pose'].snapshot()}
    assert {s1, s3, s5} <= pose_stamps and not {s2, s4} & pose_stamps
    # The AMCL seed follows each accepted relocalization, once, with the published pose.
    inboxes['initialpose'].wait_for(
        lambda m: stamp_to_ns(m.header.stamp) == s5, 10.0, 'the seed after reinitialize')
    seed_stamps = [stamp_to_ns(m.header.stamp) for m in inboxes['initialpose'].snapshot()
                   if m.header.frame_id == 'map' and stamp_to_ns(m.header.stamp) in pose_stamps]
    assert s3 in seed_stamps and s5 in seed_stamps and s2 not in seed_stamps
    assert len(seed_stamps) == len(set(seed_stamps))


def test_frame_without_odom_tf_at_its_stamp_is_skipped(system):
    node, client, inboxes, pubs = system
    before = _rejections(inboxes, 'tf_unavailable')
    # odom -> base_link is only ever published at past image stamps: 30 s ahead is unknown.
    stamp = client.now_ns() + 30_000_000_000
    pubs['image'].publish(rgb_to_image_msg(small_photos()['coffee'], 'rgb8', stamp,
                                           CAMERA_FRAME))
    _wait_rejections(inboxes, ('tf_unavailable',), before + 1)
    # The rejection is counted before it is logged: wait for the line rather than race it.
    wait_until(lambda: "no transform 'odom' <- 'base_link'" in node.output(), 5.0,
               'the tf_unavailable warning in the node log')
    assert stamp not in {stamp_to_ns(m.header.stamp) for m in inboxes['pose'].snapshot()}


def test_low_confidence_and_disallowed_scenes_publish_nothing(system, localizer):
    _, client, inboxes, _ = system
    sender = Sender(system)
    rgb = small_photos()['astronaut']
    scene = localizer.localize(rgb).scene_name
    other = next(name for name in ALIGNMENTS if name != scene)
    cases = [({'min_scene_confidence': 0.999}, 'low_confidence'),
             ({'allowed_scenes': [other]}, 'scene_not_allowed')]
    for params, reason in cases:
        before = _rejections(inboxes, reason)
        scenes_before = len(inboxes['scene'].snapshot())
        assert all(r.successful for r in client.set_parameters(NS, params))
        try:
            stamp, _, _ = sender.send(rgb)
            _wait_rejections(inboxes, (reason,), before + 1)
        finally:
            restored = client.set_parameters(NS, {
                'min_scene_confidence': 0.0,
                'allowed_scenes': Parameter('allowed_scenes', Parameter.Type.STRING_ARRAY, [])})
            assert all(r.successful for r in restored), [r.reason for r in restored]
        assert stamp not in {stamp_to_ns(m.header.stamp) for m in inboxes['pose'].snapshot()}
        if reason == 'low_confidence':  # ~/scene only carries confident classifications
            assert len(inboxes['scene'].snapshot()) == scenes_before


def test_diagnostic_levels_follow_the_localization_state():
    """Pure check of the status logic with a fake clock (no DDS)."""
    from mspr_ros.ros.diagnostics import build_status, LocalizationStats, NodeInfo
    now = [100.0]
    stats = LocalizationStats(clock=lambda: now[0])
    info = NodeInfo(node_name='n', lifecycle_state='inactive', input_topic='/cam/image')

    def status():
        return build_status(info, stats.snapshot())
    assert status().level == b'\x01' and 'inactive' in status().message
    info.lifecycle_state = 'active'
    assert status().level == b'\x01' and '/cam/image' in status().message
    stats.image_received(superseded_unprocessed=False)
    stats.rejected('jump_translation', 'jump 3.000 m > 1.000 m from the odometry prediction')
    # Where the robot is (outside the scenes, a jump) is an expected state: WARN, not ERROR.
    assert status().level == b'\x01'
    assert status().message == 'not localized (last rejection: jump_translation)'
    assert diagnostic_values(status())['state'] == 'lost'
    assert diagnostic_values(status())['last rejection'] == (
        'jump_translation: jump 3.000 m > 1.000 m from the odometry prediction')
    # A broken set-up is a fault: ERROR.
    stats.rejected('no_extrinsic', "no transform 'base_link' <- 'cam'")
    assert status().level == b'\x02'
    assert build_status(info, stats.snapshot(), relocalizing=True).values[0].value == (
        'relocalizing')
    stats.scene_seen('lab', 0.9, {'atrium': 0.02, 'lab': 0.9, 'corridor': 0.05, 'x': 0.03})
    stats.pose_published(12_500_000_000)
    assert status().level == b'\x00' and status().message == 'localized in lab'
    values = diagnostic_values(status())
    assert values['state'] == 'localized'
    assert values['top scenes'] == 'lab=0.900, corridor=0.050, x=0.030'
    assert values['last accepted stamp'] == '12.500000000'
    assert values['rejected jump_translation'] == '1' and values['rejected stale'] == '0'
    now[0] += 6.0  # no pose and no image for longer than the timeouts
    assert status().level == b'\x01' and 'not for 6.0 s' in status().message
