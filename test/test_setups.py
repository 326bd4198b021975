"""The worked set-ups: standalone, beside AMCL, with robot_localization's EKF, under Nav2.

Static checks: every parameter file parses as an rcl parameter file, sets only parameters the
node declares (with their types), and each set-up says what it must (who owns map -> odom,
AMCL seeding, planar, the EKF's ``pose0`` (the thinned ``~/pose_update``, never the fused
``~/pose``), ``pose0_config`` and lagged-data smoothing, the
lifecycle manager's bond). Over DDS: the node started with each set-up's file publishes
map -> odom exactly when the set-up says so, and the AMCL set-up seeds ``initialpose``.
The launch files that start the set-ups are evaluated in test_launch_file.py; test_namespaces.py
reads the parameters back from processes started with these files under a namespace.
"""
from pathlib import Path
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped
import numpy as np
import pytest
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage
import yaml

from mspr_ros.ros.conversions import ns_to_stamp, rgb_to_image_msg, stamp_to_ns
from mspr_ros.ros.params import PARAM_SPECS
from ros_harness import diagnostic_values, domain_id, NODE_NAME, NodeProcess, RELIABLE_LATCHED
from ros_harness import RosClient, stop_all, TF_QOS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / 'config'
NODE_KEY = f'/**/{NODE_NAME}'
EKF_NAME = 'ekf_filter_node_map'
MANAGER_NAME = 'lifecycle_manager_mspr'
SPECS = {spec.name: spec for spec in PARAM_SPECS}
# set-up -> (publishes map -> odom, publishes initialpose)
SETUPS = {'standalone': (True, False), 'amcl': (False, True), 'ekf': (False, False)}
# No camera extrinsic on /tf here: the optical frame at the base origin, looking along +x.
CAMERA_TO_BASE = 'camera_to_base:=[0.0, 0.0, 0.0, -1.5707963267948966, 0.0, -1.5707963267948966]'
# robot_localization's *_config order.
EKF_AXES = ('x', 'y', 'z', 'roll', 'pitch', 'yaw', 'vx', 'vy', 'vz', 'vroll', 'vpitch', 'vyaw',
            'ax', 'ay', 'az')
# How late the node's pose can be after its image stamp, beyond the frame's age when inference
# starts (bounded by max_image_age): inference on a CPU, about 0.1 s for the paper-size model
# (docs/environment.md), up to 0.5 s on a slow or busy one.
INFERENCE_LATENCY_S = 0.5
# Nav2's lifecycle manager's default bond_timeout (configuring-lifecycle in Nav2's docs).
NAV2_BOND_TIMEOUT_S = 4.0


def _block(path, name):
    """Return the ``ros__parameters`` of node ``name``, keyed as in every namespace."""
    document = yaml.safe_load(path.read_text())
    block = document[f'/**/{name}']['ros__parameters']
    assert isinstance(block, dict) and block, path
    return document, block


def _node_block(path):
    return _block(path, NODE_NAME)


def _same_type(value, default):
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, float)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    return isinstance(value, list)


@pytest.mark.parametrize('setup', sorted(SETUPS))
def test_setup_files_set_only_declared_parameters_with_their_types(setup):
    document, params = _node_block(CONFIG / f'setup_{setup}.yaml')
    assert list(document) == [NODE_KEY]
    for name, value in params.items():
        assert name in SPECS, f'setup_{setup}.yaml sets {name}, which the node does not declare'
        assert _same_type(value, SPECS[name].default), (name, value)
    tf_owner, seeds_amcl = SETUPS[setup]
    assert params['tf_broadcast'] is tf_owner
    assert params.get('publish_initialpose', SPECS['publish_initialpose'].default) is seeds_amcl
    assert params['two_d_mode'] is True, 'Nav2, AMCL and a 2-D EKF are planar'


def test_ekf_fuses_the_nodes_pose_as_x_y_yaw_in_the_map_frame():
    document, ekf = _block(CONFIG / 'ekf_map.yaml', EKF_NAME)
    assert list(document) == [f'/**/{EKF_NAME}']
    _, ours = _node_block(CONFIG / 'setup_ekf.yaml')
    # Each message is a new measurement to the EKF: the fused ~/pose would count its window
    # again with every message, ~/pose_raw one view many times; ~/pose_update does neither.
    assert ekf['pose0'] == f'{NODE_NAME}/pose_update', "pose0 must be the node's ~/pose_update"
    assert ours.get('fusion.error_correlation', SPECS['fusion.error_correlation'].default) \
        != 'independent', 'independent frames would make every frame an EKF update'
    fused = {axis for axis, on in zip(EKF_AXES, ekf['pose0_config'], strict=True) if on}
    assert fused == {'x', 'y', 'yaw'}
    assert ekf['pose0_differential'] is False and ekf['pose0_relative'] is False
    assert ekf['pose0_rejection_threshold'] > 0
    odom = {axis for axis, on in zip(EKF_AXES, ekf['odom0_config'], strict=True) if on}
    assert odom == {'vx', 'vy', 'vyaw'}, 'odometry as velocities: jumps stay in map -> odom'
    # The EKF owns map -> odom in the node's frames; the node publishes no TF.
    assert ekf['world_frame'] == ekf['map_frame'] == SPECS['global_frame_id'].default
    assert ekf['odom_frame'] == SPECS['odom_frame_id'].default
    assert ekf['base_link_frame'] == SPECS['base_frame_id'].default
    assert ekf['publish_tf'] is True and ours['tf_broadcast'] is False
    assert ekf['two_d_mode'] is True and ours['two_d_mode'] is True
    assert ours['covariance.mode'] == 'calibrated'


def test_ekf_rewinds_for_the_nodes_late_poses_without_blocking_on_tf():
    _, ekf = _block(CONFIG / 'ekf_map.yaml', EKF_NAME)
    # The pose carries its image's stamp and arrives after odometry newer than it: without
    # smoothing robot_localization fuses it as if it were current.
    assert ekf['smooth_lagged_data'] is True
    # The oldest pose the node publishes: a frame max_image_age old when inference starts,
    # plus inference. The filter must still hold its state from before that stamp.
    oldest_pose_s = SPECS['max_image_age'].default + INFERENCE_LATENCY_S
    assert isinstance(ekf['history_length'], float) and ekf['history_length'] > oldest_pose_s
    # The pose is in map (world_frame) and the odometry twist in base_link: no lookup has to
    # wait, and a non-zero timeout would block the filter loop whenever one did.
    assert ekf['transform_timeout'] == 0.0


def test_nav2_lifecycle_manager_bonds_and_the_node_does_not_autostart():
    document = yaml.safe_load((CONFIG / 'nav2_lifecycle.yaml').read_text())
    assert list(document) == [f'/**/{MANAGER_NAME}', NODE_KEY]
    manager = document[f'/**/{MANAGER_NAME}']['ros__parameters']
    # Nav2's default: the node bonds (bond_heartbeat_period), so the manager watches it.
    assert manager['bond_timeout'] == NAV2_BOND_TIMEOUT_S
    assert isinstance(manager['bond_timeout'], float)
    # The manager waits bond_timeout / 2 for the bond after activate; several heartbeats fit.
    heartbeat = SPECS['bond_heartbeat_period'].default
    assert 0.0 < 5 * heartbeat < manager['bond_timeout'] / 2
    # A bare name: resolved in the manager's namespace and used as the bond id (the node's name).
    assert manager['node_names'] == [NODE_NAME]
    assert manager['autostart'] is True
    node = document[NODE_KEY]['ros__parameters']
    assert node == {'autostart': False} and 'autostart' in SPECS


# --- over DDS ------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def setup_nodes(tiny_bundle_path, tmp_path_factory):
    """Start one node per set-up, each in its own namespace and with its own frames.

    The set-up's parameter file is loaded as on a robot; the command line adds only the weights,
    a confidence floor the random tiny model passes, the camera extrinsic, and per-node odom and
    base frame names so that the three nodes' transforms on the shared /tf form separate trees.
    """
    tmp = tmp_path_factory.mktemp('setups')
    domain = domain_id(61)
    nodes = {}
    for setup in SETUPS:
        nodes[setup] = NodeProcess(
            domain, tmp / f'{setup}.log', namespace=f'/{setup}',
            ros_args=['--params-file', str(CONFIG / f'setup_{setup}.yaml'),
                      '-p', f'weights:={tiny_bundle_path}', '-p', 'min_scene_confidence:=0.0',
                      '-p', 'max_image_age:=60.0', '-p', f'odom_frame_id:=odom_{setup}',
                      '-p', f'base_frame_id:=base_{setup}',
                      '-p', 'transform_timeout:=0.5', '-p', CAMERA_TO_BASE]
            # No wait between seeds here, so the test sees each decision at once.
            + (['-p', 'seed_amcl_min_interval:=0.0'] if setup == 'amcl' else []))
    client = RosClient(domain)
    try:
        yield nodes, client
    finally:
        client.close()
        stop_all(nodes.values())


@pytest.mark.ros
@pytest.mark.slow
def test_each_setup_publishes_map_to_odom_only_when_it_owns_it(setup_nodes):
    nodes, client = setup_nodes
    tf = client.subscribe(TFMessage, '/tf', TF_QOS)
    tf_pub = client.publisher(TFMessage, '/tf', TF_QOS)
    rng = np.random.default_rng(0)
    for setup, (tf_owner, seeds_amcl) in SETUPS.items():
        node = nodes[setup]
        node.wait_active()
        poses = client.subscribe(PoseWithCovarianceStamped, f'/{setup}/{NODE_NAME}/pose',
                                 RELIABLE_LATCHED)
        seeds = client.subscribe(PoseWithCovarianceStamped, f'/{setup}/initialpose', 5)
        images = client.publisher(Image, f'/{setup}/image', 5)
        client.wait_for_subscribers(images)
        pose = None
        for _ in range(3):
            stamp = _send_frame(client, tf_pub, images, setup, rng)
            try:
                pose = poses.wait_for(lambda m, s=stamp: stamp_to_ns(m.header.stamp) == s,
                                      20.0, f'the {setup} pose')
                break
            except AssertionError:
                continue
        assert pose is not None, f'{setup}: no pose for three images\n{node.output()[-3000:]}'

        def map_to_odom(message, frame=f'odom_{setup}'):
            return any(t.header.frame_id == 'map' and t.child_frame_id == frame
                       for t in message.transforms)
        if tf_owner:
            tf.wait_for(map_to_odom, 10.0, f'{setup}: map -> odom_{setup}')
        else:
            # Several re-broadcast periods (0.05 s) after the pose: nothing may have come.
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                assert not any(map_to_odom(m) for m in tf.snapshot()), \
                    f'{setup}: map -> odom published although tf_broadcast is false'
                time.sleep(0.05)
        if seeds_amcl:
            seed = seeds.wait_for(lambda m: True, 10.0, f'{setup}: initialpose for AMCL')
            assert seed.header.frame_id == 'map'
            assert seed.pose.pose.position.x == pose.pose.pose.position.x
            _amcl_lost_gets_seeded(node, client, tf_pub, images, poses, seeds, rng, setup)
        else:
            assert not seeds.snapshot(), f'{setup}: initialpose published'
    for node in nodes.values():
        assert '[ERROR]' not in node.output(), node.output()[-3000:]


def _send_frame(client, tf_pub, images, setup, rng):
    """Publish ``odom -> base`` and a random image at one stamp; return the stamp."""
    stamp = client.now_ns()
    odom = TransformStamped()
    odom.header.stamp = ns_to_stamp(stamp)
    odom.header.frame_id, odom.child_frame_id = f'odom_{setup}', f'base_{setup}'
    odom.transform.rotation.w = 1.0
    tf_pub.publish(TFMessage(transforms=[odom]))
    rgb = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    images.publish(rgb_to_image_msg(rgb, 'rgb8', stamp, 'camera'))
    return stamp


def _amcl_lost_gets_seeded(node, client, tf_pub, images, poses, seeds, rng, setup):
    """AMCL tracking: no seed; AMCL reporting a large covariance: the next pose seeds it."""
    amcl = client.publisher(PoseWithCovarianceStamped, f'/{setup}/amcl_pose', RELIABLE_LATCHED)

    def report(stddev_m, yaw_stddev_rad):
        message = PoseWithCovarianceStamped()
        message.header.frame_id = 'map'
        message.header.stamp = ns_to_stamp(client.now_ns())
        message.pose.pose.orientation.w = 1.0
        message.pose.covariance = list(np.diag(
            [stddev_m ** 2] * 2 + [0.0] * 3 + [yaw_stddev_rad ** 2]).ravel())
        amcl.publish(message)

    def frame():
        stamp = _send_frame(client, tf_pub, images, setup, rng)
        return poses.wait_for(lambda m, s=stamp: stamp_to_ns(m.header.stamp) == s, 20.0,
                              f'{setup}: the pose')

    diagnostics = client.subscribe(DiagnosticArray, '/diagnostics', 50)

    def heard(stddev_text):
        # The node's reader keeps one amcl_pose: wait until it has taken this one in.
        return diagnostics.wait_for(lambda m: any(
            diagnostic_values(status).get('input topic') == f'/{setup}/image'
            and diagnostic_values(status).get('amcl pose stddev', '').startswith(stddev_text)
            for status in m.status), 20.0, f'{setup}: the node heard amcl_pose {stddev_text}')

    client.wait_for_subscribers(amcl)
    report(0.1, 0.1)  # tracking: well inside seed_amcl_position_stddev (0.5 m)
    heard('x 0.100 m')
    tracking_stamp = stamp_to_ns(frame().header.stamp)
    # Lost, as a spread particle cloud is, in position and heading: the node says so in its
    # log, then seeds with a pose tighter than AMCL's estimate.
    report(2.0, 1.0)
    node.wait_for_output('seeding it with the next pose', 20.0)
    pose = frame()
    stamp = stamp_to_ns(pose.header.stamp)
    seed = seeds.wait_for(lambda m: stamp_to_ns(m.header.stamp) == stamp, 10.0,
                          f'{setup}: initialpose after AMCL reported it is lost')
    assert seed.pose.pose.position.x == pose.pose.pose.position.x
    # One reliable publisher delivers in order: had the tracking frame seeded AMCL, that seed
    # would have arrived before this one.
    assert all(stamp_to_ns(m.header.stamp) != tracking_stamp for m in seeds.snapshot()), \
        f'{setup}: seeded although AMCL was tracking'
