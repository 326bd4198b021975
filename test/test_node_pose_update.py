"""``~/pose_update`` and the error correlation of the fusion, over real DDS (issue 25).

Two node processes on one robot (``odom -> base_link`` on ``/tf`` at 50 Hz, its speed set by
each test; the camera on ``/tf_static``), each in its own namespace with its own image topic,
fed one image over and over (one view, one scene):

- ``learned``: a bundle whose scenes have a learned error correlation that decays over
  ``LENGTH_M`` of travel only. Standing still, ``~/pose_raw`` keeps coming and ``~/pose_update``
  sends one pose; driving, it sends one each time odometry moved ``LENGTH_M ln 2``, with the
  frame's covariance times ``(1 + rho) / (1 - rho)``.
- ``plain``: the tests' tiny bundle, which has no learned model. With the default 'bundle' mode
  configure warns naming the scenes, ``~/pose_update`` stays silent and /diagnostics says why,
  and the fused ``~/pose`` covariance never drops below the frame's (the window is worth one
  frame); switched to 'independent' at run time (the old behaviour), the same frames shrink it
  and every frame becomes an update.
"""
import math
import threading

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
import numpy as np
import pytest
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger
import torch

from mspr_ros.bundle import save_bundle
from mspr_ros.estimation.error_correlation import ErrorCorrelation
from mspr_ros.geometry.transforms import Transform
from mspr_ros.model.ms_transformer import build_model
from mspr_ros.ros.conversions import rgb_to_image_msg, stamp_to_ns
from ros_harness import diagnostic_values, domain_id, NodeProcess, RosClient, stop_all
from ros_harness import OdometryRobot

pytestmark = pytest.mark.ros
SCENES = ['atrium', 'corridor', 'lab']
CAMERA_FRAME = 'camera_optical'
T_BASE_CAM = Transform.from_xyz_rpy([0.2, 0.0, 0.5], [-np.pi / 2, 0.0, -np.pi / 2])
IMAGE_PERIOD_S = 0.1
IMAGE_LAG_NS = 50_000_000
# The learned model: errors decorrelate over LENGTH_M of travel, never with rotation or time.
LENGTH_M = 0.2
LEARNED = ErrorCorrelation(length_m=LENGTH_M, angle_rad=math.inf, time_s=math.inf, floor=0.0,
                           source='bundle')
MAX_CORRELATION = 0.5  # pose_update.max_correlation's default
# exp(-d / LENGTH_M) <= MAX_CORRELATION from this distance on.
SPACING_M = LENGTH_M * math.log(1.0 / MAX_CORRELATION)
SPEED_M_S = 0.5  # 0.05 m a frame: an update every third frame


@pytest.fixture(scope='module')
def system(tiny_model_config, tiny_bundle_path, tmp_path_factory):
    """Start both nodes, a client, the robot and the inboxes of each node."""
    tmp = tmp_path_factory.mktemp('pose_update')
    torch.manual_seed(0)
    learned_path = save_bundle(
        tmp / 'learned.safetensors', build_model(tiny_model_config), tiny_model_config, SCENES,
        provenance={'source': 'test_node_pose_update learned correlation'},
        error_correlation={scene: LEARNED for scene in SCENES})
    domain = domain_id(25)
    common = {'min_scene_confidence': 0.0, 'max_image_age': 60.0, 'transform_timeout': 0.3,
              'diagnostics_period': 0.2}
    nodes = {name: NodeProcess(domain, tmp / f'{name}.log', namespace=f'/{name}',
                               params=common | {'weights': str(path)})
             for name, path in (('learned', learned_path), ('plain', tiny_bundle_path))}
    client = RosClient(domain)
    # Images are stamped IMAGE_LAG_NS back: after a change of speed, keep their stamps, and the
    # TF samples around them, clear of the corner, where TF's interpolation cuts it.
    robot = OdometryRobot(client, CAMERA_FRAME, T_BASE_CAM, settle_s=2 * IMAGE_LAG_NS * 1e-9)
    try:
        diagnostics = client.subscribe(DiagnosticArray, '/diagnostics', 100)
        sides = {name: _Side(client, name, diagnostics) for name in nodes}
        for name, node in nodes.items():
            node.wait_active()
            client.wait_for_subscribers(sides[name].images)
        robot.start()
        yield nodes, client, robot, sides
    finally:
        robot.stop()
        client.close()
        stop_all(nodes.values())


class _Side:
    """One node's image publisher, output inboxes and diagnostics."""

    def __init__(self, client, name, diagnostics):
        self.client = client
        self.fqn = f'/{name}/mspr_localizer'
        self.input_topic = f'/{name}/image'
        self.images = client.publisher(Image, self.input_topic, 5)
        self.inboxes = {topic: client.subscribe(PoseWithCovarianceStamped, f'{self.fqn}/{topic}',
                                                200)
                        for topic in ('pose', 'pose_raw', 'pose_update')}
        self._diagnostics = diagnostics

    def status(self, message):
        """Return this node's key-values in a DiagnosticArray, None when it is not there."""
        for status in message.status:
            values = diagnostic_values(status)
            if values.get('input topic') == self.input_topic:
                return values
        return None

    def stream(self, seconds):
        """Send the one image every IMAGE_PERIOD_S for ``seconds``; wait for the answers.

        Return the stamps sent and the messages of each output for those stamps.
        """
        rgb = np.random.default_rng(3).integers(0, 255, (120, 160, 3), dtype=np.uint8)
        stamps, tick = [], threading.Event()
        start = self.client.now_ns()
        while self.client.now_ns() - start < seconds * 1e9:
            stamps.append(self.client.now_ns() - IMAGE_LAG_NS)
            self.images.publish(rgb_to_image_msg(rgb, 'rgb8', stamps[-1], CAMERA_FRAME))
            next_ns = start + int(len(stamps) * IMAGE_PERIOD_S * 1e9)
            tick.wait(max(0.0, (next_ns - self.client.now_ns()) * 1e-9))
        # Diagnostics come after a frame's every output: one reporting one of the last frames
        # has the outputs of every frame before it in.
        self._diagnostics.wait_for(lambda m: self._accepted_s(m) >= stamps[-3] * 1e-9, 15.0,
                                   f'{self.fqn}: the end of the stream')
        sent = set(stamps)
        return stamps, {topic: [m for m in inbox.snapshot()
                                if stamp_to_ns(m.header.stamp) in sent]
                        for topic, inbox in self.inboxes.items()}

    def _accepted_s(self, message):
        accepted = (self.status(message) or {}).get('last accepted stamp', 'never')
        return -1.0 if accepted == 'never' else float(accepted)

    def last_status(self):
        return next(values for values in (self.status(m) for m in reversed(
            self._diagnostics.snapshot())) if values is not None)

    def relocalize(self):
        """Restart the node's fusion and updates with the next frame."""
        assert self.client.call(Trigger, f'{self.fqn}/relocalize').success


def _covariance(msg):
    return np.reshape(msg.pose.covariance, (6, 6))


def _by_stamp(messages):
    return {stamp_to_ns(m.header.stamp): m for m in messages}


def test_a_still_robot_sends_one_update_while_pose_raw_keeps_coming(system):
    _, _, robot, sides = system
    side = sides['learned']
    robot.drive(0.0)
    side.relocalize()
    _, out = side.stream(2.5)
    raw = _by_stamp(out['pose_raw'])
    assert len(raw) >= 8, f'only {len(raw)} frames localized'
    [update] = out['pose_update']
    stamp = stamp_to_ns(update.header.stamp)
    assert stamp == min(raw), 'the first frame after the restart is the update'
    # Nothing correlated before it: the frame's own covariance and pose.
    np.testing.assert_allclose(_covariance(update), _covariance(raw[stamp]), rtol=1e-9)
    assert update.pose.pose == raw[stamp].pose.pose and update.header.frame_id == 'map'
    values = side.last_status()
    assert values['last pose update'].startswith('correlated: error correlation 1.00 > 0.50')
    assert values['error correlation'] == 'bundle (learned for every scene)'


def test_a_moving_robot_sends_an_update_each_time_the_view_moved_enough(system):
    _, _, robot, sides = system
    side = sides['learned']
    robot.drive(SPEED_M_S)
    try:
        side.relocalize()
        _, out = side.stream(3.0)
    finally:
        robot.drive(0.0)
    raw = _by_stamp(out['pose_raw'])
    updates = sorted(_by_stamp(out['pose_update']).items())
    travelled = robot.position(max(raw)) - robot.position(min(raw))
    assert len(updates) >= 4 and len(updates) >= travelled / SPACING_M / 2, (
        f'{len(updates)} updates over {travelled:.2f} m, {len(raw)} frames')
    assert len(updates) < len(raw)
    assert updates[0][0] == min(raw)
    for (previous, _), (stamp, update) in zip(updates, updates[1:]):
        distance = robot.position(stamp) - robot.position(previous)
        assert distance >= SPACING_M - 1e-6, f'an update after {distance:.3f} m only'
        # The frames between the two were held back: too close to the previous update.
        assert all(robot.position(held) - robot.position(previous) < SPACING_M + 1e-6
                   for held in raw if previous < held < stamp)
        rho = math.exp(-distance / LENGTH_M)
        np.testing.assert_allclose(_covariance(update),
                                   _covariance(raw[stamp]) * (1 + rho) / (1 - rho), rtol=1e-2)
        assert update.pose.pose == raw[stamp].pose.pose


def test_without_a_learned_model_the_window_is_worth_one_frame_and_no_update_goes_out(system):
    nodes, client, robot, sides = system
    side = sides['plain']
    output = nodes['plain'].output()
    assert '[WARN]' in output and 'no learned error correlation' in output
    assert 'for scenes atrium, corridor, lab' in output
    robot.drive(0.0)
    side.relocalize()
    _, out = side.stream(1.5)
    assert not out['pose_update'], 'a scene without a learned model sent a filter update'
    one_frame = _fused_to_raw(out)
    # The same view over and over: the fused covariance stays the frame's.
    assert len(one_frame) >= 5 and min(one_frame) >= 0.999, one_frame
    values = side.last_status()
    assert values['last pose update'].startswith(
        'no_learned_model: no learned error correlation for scene')
    assert 'count one view many times' in values['last pose update']
    assert values['error correlation'] == (
        "bundle (no learned model, one frame's worth: atrium, corridor, lab)")
    assert values['pose updates published'] == '0' and values['state'] == 'localized'

    # The old behaviour: every frame a new measurement.
    [result] = client.set_parameters(side.fqn, {'fusion.error_correlation': 'independent'})
    assert result.successful, result.reason
    try:
        side.relocalize()
        _, out = side.stream(1.5)
    finally:
        client.set_parameters(side.fqn, {'fusion.error_correlation': 'bundle'})
    independent = _fused_to_raw(out)
    # The window of n copies of one view claims a covariance 1/n of the frame's.
    assert independent[-1] < 0.5 and independent[-1] < min(one_frame) / 3, independent
    assert len(out['pose_update']) >= len(out['pose_raw']) - 1


def _fused_to_raw(out):
    """Return trace(fused position covariance) / trace(the frame's), frame by frame."""
    raw = _by_stamp(out['pose_raw'])
    return [np.trace(_covariance(m)[:3, :3]) / np.trace(
        _covariance(raw[stamp_to_ns(m.header.stamp)])[:3, :3])
        for m in sorted(out['pose'], key=lambda m: stamp_to_ns(m.header.stamp))]
