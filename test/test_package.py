"""Package-level checks: layout, installability, lint (as ament does).

The layer rules (what may import what) are import-linter contracts checked by
test_architecture.py.
"""
import ast
from glob import glob
from pathlib import Path
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ROOT / 'training' / 'mspr_training'


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


def test_training_package_imports_core():
    users = [p for p in TRAINING.rglob('*.py')
             if any(_top(m) == 'mspr_ros' for m in _imported_modules(p))]
    assert users, 'mspr_training should build on mspr_ros'


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
                   'lifecycle_msgs', 'std_srvs', 'tf2_ros_py', 'python3-pil', 'python3-numpy'):
        assert needed in depends
    # tf2_ros is the C++ package: the node imports the Python tf2_ros from tf2_ros_py.
    assert 'tf2_ros' not in depends
    # What rosdep and colcon read: catkin_pkg's own validation (format 3 rules).
    catkin_pkg = pytest.importorskip('catkin_pkg.package')
    catkin_pkg.parse_package(str(ROOT / 'package.xml')).validate()


def test_setup_installs_every_launch_and_config_file(monkeypatch):
    # colcon installs what setup.py's data_files name; a launch or parameter file left out
    # would exist in the checkout and be missing after `colcon build`.
    tree = ast.parse((ROOT / 'setup.py').read_text())
    call = next(n for n in ast.walk(tree)
                if isinstance(n, ast.Call) and getattr(n.func, 'id', '') == 'setup')
    value = next(kw.value for kw in call.keywords if kw.arg == 'data_files')
    monkeypatch.chdir(ROOT)  # setup.py's globs are relative to its folder
    installed = eval(compile(ast.Expression(value), 'setup.py', 'eval'),
                     {'glob': glob, 'package_name': 'mspr_ros'})
    files = {source for _, sources in installed for source in sources}
    for folder, pattern in (('launch', '*.launch.py'), ('config', '*'), ('rviz', '*.rviz')):
        for path in (ROOT / folder).glob(pattern):
            assert f'{folder}/{path.name}' in files, f'{folder}/{path.name} is not installed'


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
