"""The pose stream a navigation stack relies on, over real DDS (issue 16, node side).

One node process. The client plays a robot: ``odom -> base_link`` on ``/tf`` at 50 Hz (the
robot drives), ``base_link -> camera_optical`` on ``/tf_static``, and camera images whose
stamps lag the clock as a camera pipeline plus inference do. Checked:

- every ``map -> odom`` stamp on ``/tf`` is strictly increasing, and a ``TransformBuffer`` fed
  with the received ``/tf`` answers lookups at 1 kHz over the whole stream with one accepted
  correction or the next, never a blend of two and never an older one again (the TF stamping
  rule of ``mspr_ros.estimation.tf_stamping``);
- ``fusion: window`` (the default): ``~/pose`` is fused over the window (tighter covariance,
  different from the frame's own ``~/pose_raw``), ``/diagnostics`` reports the window size and
  the error correlation. The tiny bundle has no learned error correlation, with which a window
  of one scene is worth one frame (test_node_pose_update.py); here ``fusion.error_correlation``
  is 'time' with a correlation time of half the frame period, so frames count nearly as
  independent ones and the fusion's tightening shows;
- an image from a camera frame without ``base <- camera`` transform gives no pose, and the
  diagnostics name both frames;
- ``/initialpose`` far from what the frames say rejects them until
  ``relocalization_agreement_frames`` consecutive frames agree on another place; so does the
  initial pose of ``set_initial_pose`` and ``initial_pose.{x, y, z, yaw}`` at activation.
"""
import threading

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from lifecycle_msgs.msg import Transition
import numpy as np
import pytest
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage

from mspr_ros.geometry.tf_history import TransformBuffer
from mspr_ros.geometry.transforms import Transform
from mspr_ros.ros.conversions import ns_to_stamp, rgb_to_image_msg, stamp_to_ns
from mspr_ros.ros.conversions import transform_from_msg
from ros_harness import diagnostic_values, domain_id, NodeProcess, own_status, RosClient
from ros_harness import OdometryRobot, TF_QOS, wait_until

pytestmark = pytest.mark.ros
NS = '/mspr_localizer'
TOLERANCE_S = 0.25
CAMERA_FRAME = 'camera_optical'
# A camera pipeline plus inference: images reach the node this long after their stamp.
IMAGE_LAG_NS = 150_000_000
STREAM_S = 8.0
IMAGE_PERIOD_S = 0.1
AGREEMENT_FRAMES = 3
# Consecutive frames' errors correlate by exp(-0.1 / 0.05) = 0.14.
CORRELATION_S = 0.05
T_BASE_CAM = Transform.from_xyz_rpy([0.2, 0.0, 0.5], [-np.pi / 2, 0.0, -np.pi / 2])


@pytest.fixture(scope='module')
def system(tiny_bundle_path, tmp_path_factory):
    """Start the node, a client, the robot's TF and the inboxes."""
    domain = domain_id(7)
    node = NodeProcess(domain, tmp_path_factory.mktemp('stream') / 'node.log', params={
        'weights': str(tiny_bundle_path), 'min_scene_confidence': 0.0, 'max_image_age': 60.0,
        'transform_timeout': 0.3, 'transform_tolerance': TOLERANCE_S,
        'transform_publish_period': 0.05, 'diagnostics_period': 0.2,
        'relocalization_agreement_frames': AGREEMENT_FRAMES,
        'fusion.error_correlation': 'time', 'fusion.error_correlation_s': CORRELATION_S})
    client = RosClient(domain)
    robot = OdometryRobot(client, CAMERA_FRAME, T_BASE_CAM, speed=0.3)
    try:
        inboxes = {
            'pose': client.subscribe(PoseWithCovarianceStamped, f'{NS}/pose', 100),
            'pose_raw': client.subscribe(PoseWithCovarianceStamped, f'{NS}/pose_raw', 100),
            'tf': client.subscribe(TFMessage, '/tf', TF_QOS),
            'diagnostics': client.subscribe(DiagnosticArray, '/diagnostics', 50),
        }
        pubs = {'image': client.publisher(Image, '/image', 5),
                'initialpose': client.publisher(PoseWithCovarianceStamped, '/initialpose', 5)}
        node.wait_active()
        client.wait_for_subscribers(pubs['image'])
        robot.start()
        yield node, client, inboxes, pubs
    finally:
        robot.stop()
        client.close()
        node.stop()


def _map_odom(inboxes):
    return [t for msg in inboxes['tf'].snapshot() for t in msg.transforms
            if t.header.frame_id == 'map' and t.child_frame_id == 'odom']


def _send_image(client, pubs, index, frame=CAMERA_FRAME, lag_ns=IMAGE_LAG_NS):
    rgb = np.random.default_rng(index).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    stamp = client.now_ns() - lag_ns
    pubs['image'].publish(rgb_to_image_msg(rgb, 'rgb8', stamp, frame))
    return stamp


def _stream(client, pubs, seconds, first_index=0):
    """Send images every IMAGE_PERIOD_S for ``seconds`` on a deadline schedule."""
    stamps, tick = [], threading.Event()
    start = client.now_ns()
    index = first_index
    while client.now_ns() - start < seconds * 1e9:
        stamps.append(_send_image(client, pubs, index))
        index += 1
        next_ns = start + int(len(stamps) * IMAGE_PERIOD_S * 1e9)
        tick.wait(max(0.0, (next_ns - client.now_ns()) * 1e-9))
    return stamps


def test_map_odom_stamps_rise_and_lookups_step_only_on_accepted_frames(system):
    _, client, inboxes, pubs = system
    first = len(_map_odom(inboxes))
    first_pose = len(inboxes['pose'].snapshot())
    stamps = _stream(client, pubs, STREAM_S)
    # Every answer to the stream's images is in (deadline on the last image's pose).
    inboxes['pose'].wait_for(lambda m: stamp_to_ns(m.header.stamp) >= stamps[-5], 10.0,
                             'poses for the end of the stream')
    tfs = _map_odom(inboxes)[first:]
    accepted = len(inboxes['pose'].snapshot()) - first_pose
    assert accepted >= 0.5 * len(stamps), f'only {accepted} of {len(stamps)} frames accepted'

    tf_stamps = [stamp_to_ns(t.header.stamp) for t in tfs]
    backwards = [(a - b) * 1e-6 for a, b in zip(tf_stamps, tf_stamps[1:]) if b <= a]
    assert not backwards, (f'{len(backwards)} of {len(tf_stamps)} map -> odom stamps did not '
                           f'increase (by up to {max(backwards):.1f} ms)')

    buffer = TransformBuffer(cache_time_s=600.0)
    corrections = []
    for t in tfs:
        transform = transform_from_msg(t.transform)
        buffer.set_transform('map', 'odom', stamp_to_ns(t.header.stamp), transform)
        if not any(transform.almost_equal(c, 1e-12, 1e-12) for c in corrections):
            corrections.append(transform)
    assert len(corrections) >= 0.5 * len(stamps), 'the frames should give distinct corrections'

    def which(transform):
        return next((i for i, c in enumerate(corrections)
                     if transform.almost_equal(c, 1e-9, 1e-9)), None)
    sequence, blends = [], 0
    for when in range(tf_stamps[0], tf_stamps[-1] + 1, 1_000_000):
        index = which(buffer.lookup('map', 'odom', when))
        if index is None:
            blends += 1
        elif not sequence or sequence[-1] != index:
            sequence.append(index)
    lookups = (tf_stamps[-1] - tf_stamps[0]) // 1_000_000 + 1
    assert blends == 0, f'{blends} of {lookups} lookups blended two corrections'
    # Each correction holds from its acceptance to the next one, in the order accepted.
    assert sequence == sorted(sequence) and len(set(sequence)) == len(sequence), \
        'a lookup went back to an older correction'
    assert len(sequence) <= accepted + 1


def test_pose_is_fused_over_the_window_and_pose_raw_is_per_frame(system):
    _, client, inboxes, pubs = system
    stamps = _stream(client, pubs, 2.0, first_index=500)
    inboxes['pose'].wait_for(lambda m: stamp_to_ns(m.header.stamp) >= stamps[-3], 10.0,
                             'poses for the end of the burst')
    raw = {stamp_to_ns(m.header.stamp): m for m in inboxes['pose_raw'].snapshot()}
    fused = [m for m in inboxes['pose'].snapshot() if stamp_to_ns(m.header.stamp) in stamps]
    assert len(fused) >= 5 and all(stamp_to_ns(m.header.stamp) in raw for m in fused)
    differ, tighter = 0, 0
    for msg in fused[1:]:
        own = raw[stamp_to_ns(msg.header.stamp)]
        position = np.array([msg.pose.pose.position.x, msg.pose.pose.position.y])
        own_position = np.array([own.pose.pose.position.x, own.pose.pose.position.y])
        differ += not np.allclose(position, own_position, atol=1e-6)
        tighter += np.trace(np.reshape(msg.pose.covariance, (6, 6))[:3, :3]) < np.trace(
            np.reshape(own.pose.covariance, (6, 6))[:3, :3])
    assert differ >= len(fused) // 2, 'the fused pose should differ from the per-frame one'
    assert tighter >= len(fused) // 2, 'fusing frames should tighten the covariance'

    def after_burst(msg):
        status = own_status(msg)
        if status is None:
            return False
        accepted = diagnostic_values(status)['last accepted stamp']
        # A status after the burst's last poses waited for above: one taken between its first
        # two frames (a loaded machine's diagnostics timer can fire there) has a window of one.
        return accepted != 'never' and float(accepted) >= stamps[-3] * 1e-9
    status = own_status(inboxes['diagnostics'].wait_for(after_burst, 5.0, 'a status after it'))
    values = diagnostic_values(status)
    assert int(values['fusion window']) >= 2
    assert values['error correlation'] == f'time ({CORRELATION_S:g} s)'
    assert values['state'] == 'localized' and status.level == b'\x00'
    top = [entry.split('=') for entry in values['top scenes'].split(', ')]
    assert sorted(name for name, _ in top) == ['atrium', 'corridor', 'lab']
    assert [float(p) for _, p in top] == sorted((float(p) for _, p in top), reverse=True)


def test_missing_camera_extrinsic_gives_no_pose_and_names_the_frames(system):
    node, client, inboxes, pubs = system

    def status():
        return own_status(inboxes['diagnostics'].snapshot()[-1])
    stamp = None
    for index in range(3):
        stamp = _send_image(client, pubs, 1000 + index, frame='unmounted_camera', lag_ns=0)
        try:
            inboxes['diagnostics'].wait_for(
                lambda m: own_status(m) is not None and 'unmounted_camera' in
                diagnostic_values(own_status(m)).get('last rejection', ''), 5.0,
                'the rejection in diagnostics')
            break
        except AssertionError:
            continue
    values = diagnostic_values(status())
    assert "'base_link' <- 'unmounted_camera'" in values['last rejection']
    assert int(values['rejected no_extrinsic']) >= 1
    wait_until(lambda: 'unmounted_camera' in node.output(), 5.0, 'the warning in the log')
    assert stamp not in {stamp_to_ns(m.header.stamp) for m in inboxes['pose'].snapshot()}
    assert 'using the camera_to_base parameter' not in node.output()


def _initial_pose(client, x, y):
    msg = PoseWithCovarianceStamped()
    msg.header.frame_id = 'map'
    msg.header.stamp = ns_to_stamp(client.now_ns())
    msg.pose.pose.position.x, msg.pose.pose.position.y = float(x), float(y)
    msg.pose.pose.orientation.w = 1.0
    cov = np.zeros((6, 6))
    cov[0, 0] = cov[1, 1] = 0.25
    cov[5, 5] = 0.07
    msg.pose.covariance = cov.reshape(36).tolist()
    return msg


def test_initialpose_rejects_far_frames_until_enough_agree(system):
    node, client, inboxes, pubs = system

    def values():
        return diagnostic_values(own_status(inboxes['diagnostics'].snapshot()[-1]))
    inboxes['diagnostics'].wait_for(lambda m: own_status(m) is not None, 5.0, 'diagnostics')
    rejected_before = int(values()['rejected initial_pose'])
    pubs['initialpose'].publish(_initial_pose(client, 500.0, -400.0))
    wait_until(lambda: 'initialpose prior set' in node.output(), 5.0, 'the prior')
    poses_before = len(inboxes['pose'].snapshot())
    # The same image: the network agrees with itself, far from the prior. The first
    # AGREEMENT_FRAMES - 1 are rejected; the one that completes the agreement is accepted.
    sent = []
    for _ in range(AGREEMENT_FRAMES - 1):
        sent.append(_send_image(client, pubs, 7, lag_ns=0))
        inboxes['diagnostics'].wait_for(
            lambda m, n=len(sent): own_status(m) is not None and int(diagnostic_values(
                own_status(m))['rejected initial_pose']) >= rejected_before + n, 10.0,
            'a rejection against the initial pose')
    assert len(inboxes['pose'].snapshot()) == poses_before
    assert values()['state'] == 'relocalizing'
    stamp = _send_image(client, pubs, 7, lag_ns=0)
    inboxes['pose'].wait_for(lambda m: stamp_to_ns(m.header.stamp) == stamp, 10.0,
                             'the pose once enough frames agree')
    assert not {stamp_to_ns(m.header.stamp) for m in inboxes['pose'].snapshot()} & set(sent)
    inboxes['diagnostics'].wait_for(lambda m: own_status(m) is not None and diagnostic_values(
        own_status(m))['state'] == 'localized', 5.0, 'localized again')


def test_set_initial_pose_parameters_hold_like_an_initialpose(system):
    node, client, inboxes, pubs = system
    assert all(r.successful for r in client.set_parameters(NS, {
        'set_initial_pose': True, 'initial_pose.x': -300.0, 'initial_pose.y': 200.0,
        'initial_pose.yaw': 1.0}))
    try:
        for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_ACTIVATE):
            assert client.change_state(NS, transition)
        node.wait_for_output(r'set_initial_pose prior set at x=-300.00, y=200.00', 10.0)
        client.wait_for_subscribers(pubs['image'])

        def rejected():
            return int(diagnostic_values(own_status(
                inboxes['diagnostics'].snapshot()[-1]))['rejected initial_pose'])
        before = rejected()
        stamp = _send_image(client, pubs, 9, lag_ns=0)
        inboxes['diagnostics'].wait_for(lambda m: own_status(m) is not None and int(
            diagnostic_values(own_status(m))['rejected initial_pose']) > before, 10.0,
            'the frame rejected against the initial pose of the parameters')
        assert stamp not in {stamp_to_ns(m.header.stamp) for m in inboxes['pose'].snapshot()}
    finally:
        client.set_parameters(NS, {'set_initial_pose': False})
