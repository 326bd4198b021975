"""Every shipped parameter file reaches its node under a namespace; a user's file wins after it.

rcl matches a parameter file's keys against the node's full name: a bare ``mspr_localizer:``
matches ``/mspr_localizer`` only, so under ``namespace:=robot`` the file's values would be
silently ignored. The shipped files use ``/**/<node name>:`` keys. Here each file is loaded as the
launch files load it, by a real process started under a namespace (``--ros-args -r
__ns:=/robot/<case> --params-file <file>``), and the parameters are read back over the
node's parameter services (``rcl_interfaces`` ListParameters and GetParameters):

- mspr_localizer (``python -m mspr_ros.ros.node``) with each file that has a block for it;
- for the nodes not installed here (Nav2's ``lifecycle_manager``, robot_localization's
  ``ekf_node``) a stand-in rclpy node of the same name that declares whatever parameters rcl
  matched for it (``automatically_declare_parameters_from_overrides``), nothing else;
- the same processes given copies of the files with bare keys, which get nothing: the check
  can fail;
- the localizer given a set-up's file and then a user's file (as ``setup.launch.py`` orders
  them, tested in test_setups.py): the user's values win, the set-up's others stay.
"""
import sys

import pytest
from rcl_interfaces.srv import ListParameters
from rclpy.parameter import parameter_value_to_python
import yaml

from mspr_ros.ros.params import PARAM_SPECS
from mspr_training.ros_client import READ_ONLY_RESEND_S
from ros_harness import domain_id, NODE_NAME, NodeProcess, REPO, RosClient, stop_all

pytestmark = pytest.mark.ros
CONFIG = REPO / 'config'
MANAGER_NAME = 'lifecycle_manager_mspr'
EKF_NAME = 'ekf_filter_node_map'
DEFAULTS = {spec.name: spec.default for spec in PARAM_SPECS}
# The files with a block for the localizer, each in its own namespace under /robot.
LOCALIZER_FILES = {'standalone': 'setup_standalone.yaml', 'amcl': 'setup_amcl.yaml',
                   'ekf': 'setup_ekf.yaml', 'nav2': 'nav2_lifecycle.yaml'}
# Nodes not installed here -> (namespace case, file): beside the localizer, as launched.
STAND_IN_FILES = {MANAGER_NAME: ('nav2', 'nav2_lifecycle.yaml'),
                  EKF_NAME: ('ekf', 'ekf_map.yaml')}
# The user's own file of the merge case: a Nav2 robot's base frame, the scenes it may report,
# and 6-DoF over the set-up's planar default.
USER_PARAMS = {'base_frame_id': 'base_footprint', 'allowed_scenes': ['lab', 'corridor'],
               'two_d_mode': False}
READY = 'stand-in ready'
# What rclpy declares on every node, whatever its files say.
BUILT_IN = {'use_sim_time', 'start_type_description_service'}
# A node of any name that declares exactly the parameters rcl matched for it from the files.
STAND_IN = f'''
import sys
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
rclpy.init(args=sys.argv)
node = Node('stand_in', automatically_declare_parameters_from_overrides=True)
node.get_logger().info({READY!r})
try:
    rclpy.spin(node)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
'''


def _block(path, name):
    """Return the parameters ``path`` gives node ``name``, however the file keys them."""
    (block,) = [value['ros__parameters'] for key, value in yaml.safe_load(path.read_text()).items()
                if key.rsplit('/', 1)[-1] == name]
    return block


def _bare_copy(path, tmp):
    """Write ``path`` with every ``/**/name:`` key turned into ``name:`` (the old files)."""
    document = yaml.safe_load(path.read_text())
    bare = {key.removeprefix('/**/'): value for key, value in document.items()}
    copy = tmp / f'bare_{path.name}'
    copy.write_text(yaml.safe_dump(bare))
    return copy


def _localizer(domain, tmp, case, files, autostart=False):
    """Start the localizer with ``files`` under ``/robot/<case>``; no weights, not configured."""
    ros_args = [arg for path in files for arg in ('--params-file', str(path))]
    # Unconfigured is enough: every parameter is declared at construction.
    if not autostart:
        ros_args += ['-p', 'autostart:=false']
    return NodeProcess(domain, tmp / f'{case}_localizer.log', ros_args=ros_args,
                       namespace=f'/robot/{case}')


def _stand_in(domain, tmp, name, namespace, path):
    return NodeProcess(domain, tmp / f'{namespace.strip("/").replace("/", "_")}_{name}.log',
                       name=name, namespace=namespace, program=[sys.executable, '-c', STAND_IN],
                       ros_args=['--params-file', str(path)])


@pytest.fixture(scope='module')
def processes(tmp_path_factory):
    """Start every process of the module at once (about a second each); stop them after."""
    tmp = tmp_path_factory.mktemp('namespaces')
    domain = domain_id(63)
    user_file = tmp / 'mine.yaml'
    user_file.write_text(yaml.safe_dump({f'/**/{NODE_NAME}': {'ros__parameters': USER_PARAMS}}))
    localizers = {
        # nav2_lifecycle.yaml sets autostart: false itself; that is part of what is checked.
        case: _localizer(domain, tmp, case, [CONFIG / name], autostart=case == 'nav2')
        for case, name in LOCALIZER_FILES.items()}
    localizers['merged'] = _localizer(
        domain, tmp, 'merged', [CONFIG / LOCALIZER_FILES['standalone'], user_file])
    localizers['bare'] = _localizer(
        domain, tmp, 'bare', [_bare_copy(CONFIG / LOCALIZER_FILES['standalone'], tmp)])
    stand_ins = {name: _stand_in(domain, tmp, name, f'/robot/{case}', CONFIG / file_name)
                 for name, (case, file_name) in STAND_IN_FILES.items()}
    bare_stand_ins = {
        name: _stand_in(domain, tmp, name, '/robot/bare', _bare_copy(CONFIG / file_name, tmp))
        for name, (_, file_name) in STAND_IN_FILES.items()}
    everything = list(localizers.values()) + list(stand_ins.values()) + list(
        bare_stand_ins.values())
    client = None
    try:
        client = RosClient(domain, name='namespace_test_client')
        for process in localizers.values():
            process.wait_for_output('autostart is false')
        for process in list(stand_ins.values()) + list(bare_stand_ins.values()):
            process.wait_for_output(READY)
        yield {'localizers': localizers, 'stand_ins': stand_ins, 'bare': bare_stand_ins,
               'client': client}
    finally:
        if client is not None:
            client.close()
        stop_all(everything)


def _values(client, fqn, names):
    """Read parameters over GetParameters; an undeclared one reads None."""
    names = sorted(names)
    values = client.get_parameters(fqn, names)
    return {name: parameter_value_to_python(value)
            for name, value in zip(names, values, strict=True)}


def _names(client, fqn):
    request = ListParameters.Request(depth=ListParameters.Request.DEPTH_RECURSIVE)
    return set(client.call(ListParameters, f'{fqn}/list_parameters', request,
                           resend_s=READ_ONLY_RESEND_S).result.names)


def test_every_shipped_parameter_file_keys_its_nodes_for_any_namespace():
    files = sorted(CONFIG.glob('*.yaml'))
    assert {path.name for path in files} >= set(LOCALIZER_FILES.values()) | {
        'ekf_map.yaml', 'mspr_ros.yaml'}
    for path in files:
        for key in yaml.safe_load(path.read_text()):
            assert key.startswith('/**/'), f'{path.name}: {key!r} matches the root namespace only'


@pytest.mark.parametrize('case', sorted(LOCALIZER_FILES))
def test_the_localizer_reads_each_shipped_file_under_a_namespace(processes, case):
    process = processes['localizers'][case]
    assert process.fqn == f'/robot/{case}/{NODE_NAME}'
    expected = _block(CONFIG / LOCALIZER_FILES[case], NODE_NAME)
    # Read back as the node holds them, so the file took effect (not only parsed).
    assert _values(processes['client'], process.fqn, expected) == expected
    # Values equal to the defaults would read back the same had the key not matched.
    assert any(value != DEFAULTS[name] for name, value in expected.items()), case


@pytest.mark.parametrize('name', sorted(STAND_IN_FILES))
def test_the_files_of_nodes_not_installed_here_match_them_under_a_namespace(processes, name):
    process = processes['stand_ins'][name]
    case, file_name = STAND_IN_FILES[name]
    assert process.fqn == f'/robot/{case}/{name}'
    expected = _block(CONFIG / file_name, name)
    client = processes['client']
    # The stand-in declares only what rcl matched for it: every key of the file (and what
    # every node has).
    assert _names(client, process.fqn) - BUILT_IN == set(expected)
    assert _values(client, process.fqn, expected) == expected


def test_bare_keys_match_nothing_under_a_namespace(processes):
    client = processes['client']
    for name, process in processes['bare'].items():
        assert _names(client, process.fqn) <= BUILT_IN, name
    localizer = processes['localizers']['bare']
    # The set-up's values are lost: the node runs on its defaults (3-D, for one).
    shipped = _block(CONFIG / LOCALIZER_FILES['standalone'], NODE_NAME)
    assert _values(client, localizer.fqn, shipped) == {name: DEFAULTS[name] for name in shipped}


def test_a_users_file_after_the_setups_file_overrides_it(processes):
    process = processes['localizers']['merged']
    setup = _block(CONFIG / LOCALIZER_FILES['standalone'], NODE_NAME)
    assert setup['two_d_mode'] is True, 'the set-up is planar; the user asks for 6-DoF'
    values = _values(processes['client'], process.fqn, set(setup) | set(USER_PARAMS))
    assert values == {**setup, **USER_PARAMS}
