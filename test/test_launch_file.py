"""The launch file, the shipped parameter file and the RViz configuration.

The launch file is always parsed; where ROS 2's ``launch`` is importable it is also evaluated
(declared arguments, the transport variable, the node it starts).
"""
import ast
import importlib.util
from pathlib import Path
import sys

import pytest
import yaml

from mspr_ros.ros.params import PARAM_NAMES, PARAM_SPECS
from ros2_cli_support import launch_missing, skip_reason

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = ROOT / 'launch' / 'localize.launch.py'
# Not importorskip('launch'): the repo's launch/ folder would pass it as a namespace package.
LAUNCH_MISSING = skip_reason(launch_missing())
needs_launch = pytest.mark.skipif(LAUNCH_MISSING is not None, reason=str(LAUNCH_MISSING))
ARGUMENTS = {'params_file', 'weights', 'device', 'use_sim_time', 'namespace', 'image_topic',
             'autostart', 'rviz', 'log_level'}


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
