"""Package-level checks: layout, dependency direction, installability, lint (as ament does)."""
import ast
from pathlib import Path
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / 'mspr_ros'
TRAINING = ROOT / 'training' / 'mspr_training'
# The thin ROS shell: the only modules of mspr_ros allowed to import rclpy or ROS messages.
ROS_SHELL = {'node', 'ros_conversions', 'tf_support', 'diagnostics', 'node_params'}
ROS_MODULE_PREFIXES = ('rclpy', 'sensor_msgs', 'geometry_msgs', 'std_msgs', 'std_srvs', 'nav_msgs',
                       'diagnostic_msgs', 'lifecycle_msgs', 'tf2_ros', 'tf2_msgs', 'cv_bridge',
                       'rosgraph_msgs', 'builtin_interfaces', 'launch', 'launch_ros')


def _imported_modules(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _top(name):
    return name.split('.')[0]


def test_core_never_imports_training_package():
    offenders = {p.name: sorted(m for m in _imported_modules(p) if _top(m) == 'mspr_training')
                 for p in CORE.rglob('*.py')}
    assert not {k: v for k, v in offenders.items() if v}


def test_training_package_imports_core():
    users = [p for p in TRAINING.rglob('*.py')
             if any(_top(m) == 'mspr_ros' for m in _imported_modules(p))]
    assert users, 'mspr_training should build on mspr_ros'


def test_core_modules_are_ros_free():
    offenders = {}
    for path in CORE.glob('*.py'):
        if path.stem in ROS_SHELL:
            continue
        ros = sorted(m for m in _imported_modules(path) if _top(m) in ROS_MODULE_PREFIXES)
        if ros:
            offenders[path.name] = ros
    assert not offenders, f'ROS imports in the ROS-free core: {offenders}'


def test_importing_core_does_not_load_training_or_ros():
    code = ('import sys, importlib, pkgutil, mspr_ros\n'
            'core = [m.name for m in pkgutil.iter_modules(mspr_ros.__path__)\n'
            '        if m.name not in %r]\n'
            'for name in core: importlib.import_module("mspr_ros." + name)\n'
            'bad = [m for m in sys.modules if m.split(".")[0] in ("mspr_training", "rclpy")]\n'
            'assert not bad, bad\n'
            'print(len(core))\n') % (sorted(ROS_SHELL),)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 5


def test_whole_stack_imports_together():
    code = 'import mspr_ros, mspr_training, rclpy, torch, torchvision, cv2; print("ok")'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr


def test_package_xml_is_format_3_and_matches_setup():
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.tag == 'package' and root.get('format') == '3'
    assert root.findtext('name') == 'mspr_ros'
    assert root.find('export/build_type').text == 'ament_python'
    setup_text = (ROOT / 'setup.py').read_text()
    version = re.search(r"version='([^']+)'", setup_text).group(1)
    assert root.findtext('version') == version
    depends = {e.text for e in root if e.tag.endswith('depend')}
    for needed in ('rclpy', 'sensor_msgs', 'geometry_msgs', 'tf2_msgs', 'diagnostic_msgs',
                   'lifecycle_msgs', 'std_srvs'):
        assert needed in depends


def test_ament_layout_files_exist():
    assert (ROOT / 'resource' / 'mspr_ros').is_file()
    cfg = (ROOT / 'setup.cfg').read_text()
    assert 'script_dir=$base/lib/mspr_ros' in cfg and 'install_scripts=$base/lib/mspr_ros' in cfg
    setup_text = (ROOT / 'setup.py').read_text()
    for share in ('launch', 'config', 'rviz'):
        assert f"'/{share}', glob('{share}/" in setup_text
    assert 'localizer = mspr_ros.ros.node:main' in setup_text


def test_wheel_tf2_msgs_is_hidden_from_colcon():
    # A full ROS 2 install has the real tf2_msgs; colcon must never build our wheel-only copy.
    assert (ROOT / 'tools' / 'wheel_ros' / 'COLCON_IGNORE').exists()


def test_every_dependency_is_pinned():
    for line in (ROOT / 'requirements' / 'lock.txt').read_text().splitlines():
        line = line.strip()
        if line and not line.startswith('#'):
            assert '==' in line, f'unpinned requirement: {line}'


def test_flake8_clean():
    pytest.importorskip('flake8')
    targets = [str(ROOT / p) for p in ('mspr_ros', 'training', 'launch', 'test', 'benchmarks')
               if (ROOT / p).exists()]
    out = subprocess.run([sys.executable, '-m', 'flake8', *targets], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]
