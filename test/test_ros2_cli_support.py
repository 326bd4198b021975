"""Tests needing ROS 2's command line skip, with the reason, in a clone that lacks it.

The failure this guards: in a fresh clone, ``import launch`` finds the repo's own ``launch/``
folder as a namespace package, so ``pytest.importorskip('launch')`` passes and the test dies on
``cannot import name 'LaunchContext'``.
"""
import os
from pathlib import Path
import subprocess
import sys
import types

import pytest

from ros2_cli_support import cli_missing, launch_missing, REQUIRE_VARIABLE, skip_reason

ROOT = Path(__file__).resolve().parents[1]
TEST_DIR = Path(__file__).resolve().parent

# A pytest plugin for a child run: ROS 2's launch/CLI packages look absent, and ``launch``
# resolves to the repo's launch/ folder as a namespace package, exactly as in a bare clone.
HIDE_CLI_PLUGIN = '''
import importlib.machinery
import sys

HIDDEN = ('launch', 'launch_ros', 'ros2cli', 'ros2launch', 'ros2lifecycle')


class HideRos2Cli:
    def find_spec(self, name, path=None, target=None):
        top = name.split('.')[0]
        if name == 'launch':
            spec = importlib.machinery.ModuleSpec('launch', None, is_package=True)
            spec.submodule_search_locations = [{launch_dir!r}]
            return spec
        if top in HIDDEN:
            raise ModuleNotFoundError(f'No module named {{name!r}} (hidden by the test)',
                                      name=name)
        return None


for module in [m for m in sys.modules if m.split('.')[0] in HIDDEN]:
    del sys.modules[module]
sys.meta_path.insert(0, HideRos2Cli())
'''


def _namespace_module(name, path):
    module = types.ModuleType(name)
    module.__path__ = [path]
    return module


def test_a_namespace_package_named_launch_is_not_ros2_launch():
    reason = launch_missing(lambda name: _namespace_module(name, '/clone/launch'))
    assert reason and 'namespace package' in reason and '/clone/launch' in reason


def test_an_unrelated_module_without_the_api_is_refused():
    unrelated = types.ModuleType('launch')
    unrelated.__file__ = '/site-packages/launch/__init__.py'  # e.g. PyPI's unrelated 'launch'
    assert 'has no LaunchContext' in launch_missing(lambda name: unrelated)


def test_an_absent_package_gives_its_import_error():
    def absent(name):
        raise ModuleNotFoundError(f'No module named {name!r}')
    assert "No module named 'launch'" in launch_missing(absent)
    assert "No module named 'launch'" in cli_missing(absent)


def test_a_missing_ros2_executable_is_named(tmp_path):
    complete = types.ModuleType('complete')
    complete.__file__ = __file__
    complete.LaunchContext = complete.Node = complete.main = object()
    missing = tmp_path / 'bin' / 'ros2'
    assert str(missing) in cli_missing(lambda name: complete, executable=missing)
    missing.parent.mkdir()
    missing.touch()
    assert cli_missing(lambda name: complete, executable=missing) is None


def test_the_real_packages_are_accepted_when_installed():
    try:
        from launch import LaunchContext  # noqa: F401
        from launch_ros.actions import Node  # noqa: F401
    except ImportError:
        assert launch_missing() is not None
    else:
        assert launch_missing() is None


def test_bare_clone_without_site_packages_gets_the_namespace_reason():
    # -S: no site-packages at all; the working directory (the repo root) is on sys.path.
    code = ('import sys; sys.path.insert(0, %r)\n'
            'from ros2_cli_support import launch_missing, cli_missing\n'
            'print(launch_missing()); print(cli_missing())') % str(TEST_DIR)
    out = subprocess.run([sys.executable, '-S', '-c', code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    launch_reason, cli_reason = out.stdout.strip().splitlines()
    assert 'namespace package' in launch_reason and str(ROOT / 'launch') in launch_reason
    assert cli_reason == launch_reason


def test_ci_turns_the_skip_into_a_failure(monkeypatch):
    monkeypatch.delenv(REQUIRE_VARIABLE, raising=False)
    assert skip_reason('launch is missing') == 'launch is missing'
    assert skip_reason(None) is None
    monkeypatch.setenv(REQUIRE_VARIABLE, '1')
    assert skip_reason('launch is missing') is None


# The tests that need ROS 2's launch or CLI (the rest of those files runs anywhere).
NEEDS_CLI = ['test/test_launch_file.py::test_generate_launch_description',
             'test/test_launch_file.py::test_a_profile_the_user_chose_is_kept',
             'test/test_launch_file.py::test_argument_values_become_typed_overrides_and_remaps',
             'test/test_ros2_cli.py']


@pytest.mark.slow
def test_cli_tests_skip_with_their_reason_when_the_cli_is_hidden(tmp_path):
    (tmp_path / 'hide_ros2_cli.py').write_text(
        HIDE_CLI_PLUGIN.format(launch_dir=str(ROOT / 'launch')))
    out = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider', '-p',
         'hide_ros2_cli', *NEEDS_CLI],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**{k: v for k, v in os.environ.items() if k != REQUIRE_VARIABLE},
             'PYTHONPATH': str(tmp_path)})
    report = out.stdout + out.stderr
    assert out.returncode == 0, report[-4000:]
    assert 'failed' not in report and 'error' not in report.lower(), report[-4000:]
    assert 'passed' not in report, report[-4000:]
    skipped = [line for line in report.splitlines() if line.startswith('SKIPPED')]
    assert skipped and all('namespace package' in line for line in skipped), report[-4000:]
