"""The launch files, the shipped parameter file and the RViz configuration.

The launch files are always parsed; where ROS 2's ``launch`` is importable they are also
evaluated as ``ros2 launch`` evaluates them, down to the command line of every node they would
start (declared arguments, the transport variable, the nodes): ``setup.launch.py`` and
``nav2_managed.launch.py`` load each node's shipped file first and the user's files after it
(later files override earlier ones; test_namespaces.py shows it over DDS), a missing file stops
the launch, and every node gets the ``namespace``.
"""
import ast
from dataclasses import dataclass
import importlib.util
from pathlib import Path
import sys
from typing import List

import pytest
import yaml

from mspr_ros.ros.params import PARAM_NAMES, PARAM_SPECS
from ros2_cli_support import launch_missing, skip_reason

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / 'config'
LAUNCH = ROOT / 'launch'
LAUNCH_FILE = LAUNCH / 'localize.launch.py'
# Not importorskip('launch'): the repo's launch/ folder would pass it as a namespace package.
LAUNCH_MISSING = skip_reason(launch_missing())
needs_launch = pytest.mark.skipif(LAUNCH_MISSING is not None, reason=str(LAUNCH_MISSING))
ARGUMENTS = {'params_file', 'weights', 'device', 'use_sim_time', 'namespace', 'image_topic',
             'autostart', 'rviz', 'log_level'}
SETUPS = ('standalone', 'amcl', 'ekf')
NODE_NAME = 'mspr_localizer'
EKF_NAME = 'ekf_filter_node_map'
MANAGER_NAME = 'lifecycle_manager_mspr'


def _load_launch_module():
    spec = importlib.util.spec_from_file_location('localize_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launch_file_parses_and_declares_its_arguments_literally():
    tree = ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))
    functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert 'generate_launch_description' in functions
    declared = {call.args[0].value for call in ast.walk(tree)
                if isinstance(call, ast.Call) and getattr(call.func, 'id', '') ==
                'DeclareLaunchArgument'}
    assert declared == ARGUMENTS


@needs_launch
def test_generate_launch_description(monkeypatch):
    import launch_ros.actions
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(Path(sys.executable).parent.parent))
    monkeypatch.delenv('FASTDDS_DEFAULT_PROFILES_FILE', raising=False)
    monkeypatch.delenv('FASTRTPS_DEFAULT_PROFILES_FILE', raising=False)
    description = _load_launch_module().generate_launch_description()
    arguments = {a.name: a for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert set(arguments) == ARGUMENTS
    assert all(a.description for a in arguments.values())
    default_params = ''.join(part.perform(None) for part in
                             arguments['params_file'].default_value)
    assert Path(default_params).resolve() == (ROOT / 'config' / 'mspr_ros.yaml').resolve()

    context = LaunchContext()
    for argument in arguments.values():
        argument.execute(context)
    env_action = next(e for e in description.entities if isinstance(e, SetEnvironmentVariable))
    env_action.execute(context)
    profile = Path(context.environment['FASTDDS_DEFAULT_PROFILES_FILE'])
    assert profile.resolve() == (ROOT / 'config' / 'fastdds_images.xml').resolve()
    setup = next(e for e in description.entities if isinstance(e, OpaqueFunction))
    nodes = [a for a in setup.execute(context) if isinstance(a, launch_ros.actions.Node)]
    assert len(nodes) == 1, 'rviz is off by default'
    assert nodes[0].node_package == 'mspr_ros' and nodes[0].node_executable == 'localizer'


@needs_launch
@pytest.mark.parametrize('variable', ['FASTDDS_DEFAULT_PROFILES_FILE',
                                      'FASTRTPS_DEFAULT_PROFILES_FILE'])
def test_a_profile_the_user_chose_is_kept(monkeypatch, variable):
    from launch import LaunchContext
    from launch.actions import SetEnvironmentVariable
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(Path(sys.executable).parent.parent))
    monkeypatch.delenv('FASTDDS_DEFAULT_PROFILES_FILE', raising=False)
    monkeypatch.delenv('FASTRTPS_DEFAULT_PROFILES_FILE', raising=False)
    monkeypatch.setenv(variable, '/robot/dds.xml')
    description = _load_launch_module().generate_launch_description()
    context = LaunchContext()
    next(e for e in description.entities if isinstance(e, SetEnvironmentVariable)).execute(
        context)
    assert context.environment['FASTDDS_DEFAULT_PROFILES_FILE'] == '/robot/dds.xml'


@needs_launch
def test_argument_values_become_typed_overrides_and_remaps():
    module = _load_launch_module()
    values = {'use_sim_time': 'true', 'autostart': 'false', 'weights': '/w.safetensors',
              'device': ''}
    assert module.parameter_overrides(values) == {
        'use_sim_time': True, 'autostart': False, 'weights': '/w.safetensors'}
    assert dict(module.image_remappings('/camera/image_raw')) == {
        'image': '/camera/image_raw', 'image/compressed': '/camera/image_raw/compressed'}


@needs_launch
def test_params_file_takes_several_files_in_order(tmp_path):
    module = _load_launch_module()
    first, second = tmp_path / 'setup.yaml', tmp_path / 'mine.yaml'
    for path in (first, second):
        path.write_text('{}\n')
    # In order: rcl applies --params-file arguments one after the other, later ones winning.
    assert module.params_files(f'{first},{second}') == [str(first), str(second)]
    assert module.params_files(f' {second} , {first}, ') == [str(second), str(first)]
    # launch_ros would skip a missing file with a warning; the launch stops instead.
    missing = tmp_path / 'missing.yaml'
    with pytest.raises(FileNotFoundError, match=f'params_file: no such file: {missing}'):
        module.params_files(f'{first},{missing}')


def test_params_file_lists_every_parameter_with_a_comment():
    path = ROOT / 'config' / 'mspr_ros.yaml'
    (key, block), = yaml.safe_load(path.read_text()).items()
    assert key.endswith('mspr_localizer')
    params = block['ros__parameters']
    assert set(params) == set(PARAM_NAMES)
    defaults = {spec.name: spec.default for spec in PARAM_SPECS}
    for name, value in params.items():
        assert value == defaults[name] or (value == [] and defaults[name] == []), name
    lines = path.read_text().splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith('#') and stripped.split(':')[0] in PARAM_NAMES:
            assert lines[index - 1].strip().startswith('#'), f'no comment above {stripped}'


def test_rviz_config_shows_map_tf_pose_image_and_pose_estimate_tool():
    config = yaml.safe_load((ROOT / 'rviz' / 'mspr_ros.rviz').read_text())
    manager = config['Visualization Manager']
    assert manager['Global Options']['Fixed Frame'] == 'map'
    displays = {d['Class']: d for d in manager['Displays']}
    assert 'rviz_default_plugins/TF' in displays
    pose = displays['rviz_default_plugins/PoseWithCovariance']
    assert pose['Topic']['Value'] == 'mspr_localizer/pose'
    assert pose['Topic']['Durability Policy'] == 'Transient Local'
    assert displays['rviz_default_plugins/Image']['Topic']['Value'] == 'image'
    tools = {t['Class']: t for t in manager['Tools']}
    assert tools['rviz_default_plugins/SetInitialPose']['Topic']['Value'] == 'initialpose'


# --- every launch file, evaluated as ros2 launch does ----------------------------------------


@pytest.mark.parametrize('path', sorted(LAUNCH.glob('*.launch.py')), ids=lambda p: p.name)
def test_launch_files_parse_and_define_a_description(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    assert 'generate_launch_description' in {
        n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


@pytest.fixture
def share_prefix(tmp_path, monkeypatch):
    """Return an ament prefix whose share/mspr_ros is this checkout (as --symlink-install)."""
    share = tmp_path / 'prefix' / 'share'
    (share / 'ament_index' / 'resource_index' / 'packages').mkdir(parents=True)
    (share / 'mspr_ros').mkdir()
    _register(share, 'mspr_ros')
    for folder in ('launch', 'config', 'rviz'):
        (share / 'mspr_ros' / folder).symlink_to(ROOT / folder)
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(share.parent))
    return share / 'mspr_ros'


def _register(share, package):
    """Make ``package`` look installed to ament_index (what the launch files ask)."""
    (share / 'ament_index' / 'resource_index' / 'packages' / package).touch()
    (share / package).mkdir(exist_ok=True)


@pytest.fixture
def with_nav2(share_prefix):
    """Also register Nav2's lifecycle manager, robot_localization and RViz."""
    for package in ('nav2_lifecycle_manager', 'robot_localization', 'rviz2'):
        _register(share_prefix.parent, package)
    return share_prefix


@dataclass
class LaunchedNode:
    """A node a launch file would start, with the ROS arguments its process would get.

    ``files`` are its ``--params-file`` arguments in order, resolved, but for the last one:
    launch_ros writes the launch file's dict of parameters (``overrides``) to a temporary file
    placed after the files the launch file lists.
    """

    package: str
    name: str
    namespace: str
    ros_args: List[str]
    files: List[Path]
    overrides: dict


def evaluate_launch(path, arguments):
    """Evaluate a launch file with ``arguments`` as ``ros2 launch`` does, starting nothing.

    Walks the description (argument declarations, includes, opaque functions), and for each
    launch_ros Node performs its substitutions and builds its command line after the
    executable. Returns ``(nodes, log_messages)``.
    """
    from launch import LaunchContext, LaunchDescription
    from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, LogInfo
    from launch.actions import OpaqueFunction, SetLaunchConfiguration
    from launch.utilities import perform_substitutions
    from launch_ros.actions import Node

    context = LaunchContext()
    context.launch_configurations.update(arguments)
    nodes, messages = [], []
    walked = (LaunchDescription, DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction,
              SetLaunchConfiguration)

    def walk(entity):
        if isinstance(entity, Node):
            entity._perform_substitutions(context)
            short_name = entity.node_name.rsplit('/', 1)[-1]
            # What Node.execute puts in the locals its -r __node/__ns arguments read.
            context.extend_locals({'ros_specific_arguments': {
                'name': f'__node:={short_name}', 'ns': f'__ns:={entity.expanded_node_namespace}'}})
            command = [perform_substitutions(context, part) for part in entity.cmd[1:]]
            *files, dict_file = [Path(command[i + 1]) for i, arg in enumerate(command)
                                 if arg == '--params-file']
            (block,) = yaml.safe_load(dict_file.read_text()).values()
            dict_file.unlink()
            nodes.append(LaunchedNode(entity.node_package, short_name,
                                      entity.expanded_node_namespace, command,
                                      [path.resolve() for path in files],
                                      block['ros__parameters']))
        elif isinstance(entity, LogInfo):
            messages.append(''.join(perform_substitutions(context, [part])
                                    for part in entity.msg))
        elif isinstance(entity, walked):
            for child in entity.visit(context) or []:
                walk(child)
        # SetEnvironmentVariable would change this process's environment: not walked.

    spec = importlib.util.spec_from_file_location(path.name.replace('.', '_'), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    walk(module.generate_launch_description())
    return nodes, messages


def _user_file(tmp_path, name, node_name, params):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({f'/**/{node_name}': {'ros__parameters': params}}))
    return path


def _by_name(nodes):
    by_name = {node.name: node for node in nodes}
    assert len(by_name) == len(nodes), [node.name for node in nodes]
    return by_name


@needs_launch
@pytest.mark.parametrize('setup', SETUPS)
def test_setup_launch_loads_the_setups_file_then_the_users(setup, with_nav2, tmp_path):
    mine = _user_file(tmp_path, 'mine.yaml', NODE_NAME, {'base_frame_id': 'base_footprint'})
    aligned = _user_file(tmp_path, 'aligned.yaml', NODE_NAME,
                         {'scenes.lab.map_from_scene': [1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]})
    my_ekf = _user_file(tmp_path, 'my_ekf.yaml', EKF_NAME, {'base_link_frame': 'base_footprint'})
    nodes, _ = evaluate_launch(LAUNCH / 'setup.launch.py', {
        'setup': setup, 'weights': '/w.safetensors', 'params_file': f'{mine}, {aligned}',
        'ekf_params_file': str(my_ekf)})
    nodes = _by_name(nodes)
    localizer = nodes[NODE_NAME]
    # Later --params-file arguments override earlier ones: the user's files come last, then
    # only the launch arguments (weights, autostart, use_sim_time).
    assert localizer.files == [(CONFIG / f'setup_{setup}.yaml').resolve(), mine, aligned]
    assert localizer.overrides == {'weights': '/w.safetensors', 'autostart': True,
                                   'use_sim_time': False}
    if setup == 'ekf':
        ekf = nodes[EKF_NAME]
        assert ekf.package == 'robot_localization'
        assert ekf.files == [(CONFIG / 'ekf_map.yaml').resolve(), my_ekf]
        assert ekf.overrides == {'use_sim_time': False}
    else:
        assert EKF_NAME not in nodes
    assert set(nodes) == {NODE_NAME} | ({EKF_NAME} if setup == 'ekf' else set())


@needs_launch
def test_setup_launch_without_robot_localization_says_how_to_start_the_ekf(
        share_prefix, tmp_path):
    my_ekf = _user_file(tmp_path, 'my_ekf.yaml', EKF_NAME, {'base_link_frame': 'base_footprint'})
    nodes, messages = evaluate_launch(LAUNCH / 'setup.launch.py',
                                      {'setup': 'ekf', 'ekf_params_file': str(my_ekf)})
    assert [node.name for node in nodes] == [NODE_NAME]
    (message,) = [m for m in messages if 'robot_localization' in m]
    assert EKF_NAME in message and 'ekf_map.yaml' in message and str(my_ekf) in message
    spec = importlib.util.spec_from_file_location('setup_launch', LAUNCH / 'setup.launch.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ValueError, match='standalone, amcl, ekf'):
        module.setup_params_file('gmapping')


@needs_launch
@pytest.mark.parametrize('setup', (None,) + SETUPS)
def test_nav2_managed_launch_runs_a_planar_setup_under_a_bonding_manager(
        setup, with_nav2, tmp_path):
    mine = _user_file(tmp_path, 'mine.yaml', NODE_NAME, {'two_d_mode': False})
    my_manager = _user_file(tmp_path, 'my_manager.yaml', MANAGER_NAME, {'bond_timeout': 8.0})
    arguments = {'params_file': str(mine), 'manager_params_file': str(my_manager)}
    if setup is not None:
        arguments['setup'] = setup
    nodes = _by_name(evaluate_launch(LAUNCH / 'nav2_managed.launch.py', arguments)[0])
    expected = setup or 'standalone'
    localizer = nodes[NODE_NAME]
    setup_file = (CONFIG / f'setup_{expected}.yaml').resolve()
    assert localizer.files == [setup_file, mine]
    # As shipped (no file of the user's) the node is planar; 6-DoF is the user's file's choice.
    assert yaml.safe_load(setup_file.read_text())[f'/**/{NODE_NAME}']['ros__parameters'][
        'two_d_mode'] is True
    # The manager configures and activates the node.
    assert localizer.overrides['autostart'] is False
    manager = nodes[MANAGER_NAME]
    assert manager.package == 'nav2_lifecycle_manager'
    assert manager.files == [(CONFIG / 'nav2_lifecycle.yaml').resolve(), my_manager]
    assert set(nodes) == {NODE_NAME, MANAGER_NAME} | ({EKF_NAME} if expected == 'ekf' else set())


@needs_launch
@pytest.mark.parametrize('path,argument', [('setup.launch.py', 'params_file'),
                                           ('setup.launch.py', 'ekf_params_file'),
                                           ('nav2_managed.launch.py', 'manager_params_file'),
                                           ('localize.launch.py', 'params_file')])
def test_a_missing_parameter_file_stops_the_launch(path, argument, with_nav2, tmp_path):
    # launch_ros alone would skip the file with a warning and run without the user's values.
    missing = tmp_path / 'no_such.yaml'
    with pytest.raises(FileNotFoundError, match=f'{argument}: no such file: {missing}'):
        evaluate_launch(LAUNCH / path, {'setup': 'ekf', argument: str(missing)})


@needs_launch
@pytest.mark.parametrize('path,arguments,started', [
    ('localize.launch.py', {'rviz': 'true'}, {NODE_NAME, 'rviz2'}),
    ('setup.launch.py', {'setup': 'standalone', 'rviz': 'true'}, {NODE_NAME, 'rviz2'}),
    ('setup.launch.py', {'setup': 'amcl'}, {NODE_NAME}),
    ('setup.launch.py', {'setup': 'ekf', 'rviz': 'true'}, {NODE_NAME, 'rviz2', EKF_NAME}),
    ('nav2_managed.launch.py', {'setup': 'amcl'}, {NODE_NAME, MANAGER_NAME}),
    ('nav2_managed.launch.py', {'setup': 'ekf'}, {NODE_NAME, EKF_NAME, MANAGER_NAME}),
], ids=['localize-rviz', 'setup-standalone-rviz', 'setup-amcl', 'setup-ekf-rviz',
        'nav2_managed-amcl', 'nav2_managed-ekf'])
def test_launch_files_pass_the_namespace_to_every_node(path, arguments, started, with_nav2):
    nodes, _ = evaluate_launch(LAUNCH / path, {'namespace': 'robot', **arguments})
    assert {node.name for node in nodes} == started
    for node in nodes:
        assert node.namespace == '/robot', node
        assert '__ns:=/robot' in node.ros_args, node
