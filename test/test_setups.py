"""The worked set-ups: standalone, beside AMCL, with robot_localization's EKF, under Nav2.

Static checks: every parameter file parses as an rcl parameter file, sets only parameters the
node declares (with their types), and each set-up says what it must (who owns map -> odom,
AMCL seeding, the EKF's ``pose0`` and ``pose0_config``, the lifecycle manager's
``bond_timeout``). ``launch/setup.launch.py`` is evaluated where ROS 2's launch is installed.
Over DDS: the node started with each set-up's file publishes map -> odom exactly when the set-up
says so, and the AMCL set-up seeds ``initialpose``.
"""
import ast
import importlib.util
from pathlib import Path
import time

from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped
import numpy as np
import pytest
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage
import yaml

from mspr_ros.ros.conversions import ns_to_stamp, rgb_to_image_msg, stamp_to_ns
from mspr_ros.ros.params import PARAM_SPECS
from ros2_cli_support import launch_missing, skip_reason
from ros_harness import domain_id, NODE_NAME, NodeProcess, RELIABLE_LATCHED, RosClient
from ros_harness import stop_all, TF_QOS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / 'config'
SETUP_LAUNCH = ROOT / 'launch' / 'setup.launch.py'
NODE_KEY = f'/**/{NODE_NAME}'
SPECS = {spec.name: spec for spec in PARAM_SPECS}
# set-up -> (publishes map -> odom, publishes initialpose)
SETUPS = {'standalone': (True, False), 'amcl': (False, True), 'ekf': (False, False)}
# No camera extrinsic on /tf here: the optical frame at the base origin, looking along +x.
CAMERA_TO_BASE = 'camera_to_base:=[0.0, 0.0, 0.0, -1.5707963267948966, 0.0, -1.5707963267948966]'
# robot_localization's *_config order.
EKF_AXES = ('x', 'y', 'z', 'roll', 'pitch', 'yaw', 'vx', 'vy', 'vz', 'vroll', 'vpitch', 'vyaw',
            'ax', 'ay', 'az')


def _node_block(path):
    document = yaml.safe_load(path.read_text())
    block = document[NODE_KEY]['ros__parameters']
    assert isinstance(block, dict) and block, path
    return document, block


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
    ekf = yaml.safe_load((CONFIG / 'ekf_map.yaml').read_text())['ekf_filter_node_map'][
        'ros__parameters']
    _, ours = _node_block(CONFIG / 'setup_ekf.yaml')
    assert ekf['pose0'] == f'{NODE_NAME}/pose', 'pose0 must be the node\'s ~/pose'
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


def test_nav2_lifecycle_manager_runs_without_bond_and_the_node_does_not_autostart():
    document = yaml.safe_load((CONFIG / 'nav2_lifecycle.yaml').read_text())
    manager = document['lifecycle_manager_mspr']['ros__parameters']
    assert manager['bond_timeout'] == 0.0 and isinstance(manager['bond_timeout'], float)
    assert manager['node_names'] == [NODE_NAME]
    assert manager['autostart'] is True
    node = document[NODE_KEY]['ros__parameters']
    assert node == {'autostart': False} and 'autostart' in SPECS


@pytest.mark.parametrize('path', sorted((ROOT / 'launch').glob('*.launch.py')),
                         ids=lambda p: p.name)
def test_launch_files_parse_and_define_a_description(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    assert 'generate_launch_description' in {
        n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


@pytest.fixture
def share_prefix(tmp_path, monkeypatch):
    """Return an ament prefix whose share/mspr_ros is this checkout (as --symlink-install)."""
    share = tmp_path / 'share'
    (share / 'ament_index' / 'resource_index' / 'packages').mkdir(parents=True)
    (share / 'ament_index' / 'resource_index' / 'packages' / 'mspr_ros').touch()
    (share / 'mspr_ros').mkdir()
    for folder in ('launch', 'config', 'rviz'):
        (share / 'mspr_ros' / folder).symlink_to(ROOT / folder)
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(tmp_path))
    return share / 'mspr_ros'


@pytest.mark.skipif(skip_reason(launch_missing()) is not None, reason=str(launch_missing()))
@pytest.mark.parametrize('setup', sorted(SETUPS))
def test_setup_launch_includes_the_localizer_with_the_setups_file(setup, share_prefix):
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
    spec = importlib.util.spec_from_file_location('setup_launch', SETUP_LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    context = LaunchContext()
    context.launch_configurations.update({'setup': setup, 'weights': '/w.safetensors'})
    for action in description.entities:
        if isinstance(action, DeclareLaunchArgument):
            action.execute(context)
    opaque = next(e for e in description.entities if isinstance(e, OpaqueFunction))
    actions = opaque.execute(context)
    include = next(a for a in actions if isinstance(a, IncludeLaunchDescription))
    arguments = dict((k, v) for k, v in include.launch_arguments)
    resolved = {k: ''.join(p.perform(context) for p in v) if isinstance(v, list) else v
                for k, v in arguments.items()}
    assert Path(resolved['params_file']).resolve() == (CONFIG / f'setup_{setup}.yaml').resolve()
    assert resolved['weights'] == '/w.safetensors'
    with pytest.raises(ValueError, match='standalone, amcl, ekf'):
        module.setup_params_file('gmapping')


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

    def report(stddev_m):
        message = PoseWithCovarianceStamped()
        message.header.frame_id = 'map'
        message.header.stamp = ns_to_stamp(client.now_ns())
        message.pose.pose.orientation.w = 1.0
        message.pose.covariance = list(np.diag([stddev_m ** 2] * 2 + [0.0] * 3 + [0.01]).ravel())
        amcl.publish(message)

    def frame():
        stamp = _send_frame(client, tf_pub, images, setup, rng)
        return poses.wait_for(lambda m, s=stamp: stamp_to_ns(m.header.stamp) == s, 20.0,
                              f'{setup}: the pose')

    client.wait_for_subscribers(amcl)
    report(0.1)  # tracking: well inside seed_amcl_position_stddev (0.5 m)
    tracking_stamp = stamp_to_ns(frame().header.stamp)
    report(2.0)  # lost: the node says so in its log before it seeds
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
