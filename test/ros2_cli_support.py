"""Say whether ROS 2's real command line (launch, launch_ros, ros2cli, ``ros2``) is usable.

``pytest.importorskip('launch')`` is not enough: this repository's own ``launch/`` folder (the
launch files, no ``__init__.py``) imports as a *namespace package* named ``launch`` whenever the
repo root is on ``sys.path`` and the real package is absent, and the test then dies on
``cannot import name 'LaunchContext'``. The checks here look for what the tests use (a class,
an executable), so a fresh clone without the CLI skips with the reason, however it is laid out.

CI sets ``MSPR_REQUIRE_ROS2_CLI=1`` (``.ci/run``): there a missing CLI fails these tests instead
of skipping them, so the path CI is meant to cover cannot quietly disappear.

Standard library only: ``test_ros2_cli_support.py`` imports it from an interpreter started with
``-S`` (no site-packages) to reproduce a clone with nothing installed beside it.
"""
import importlib
import os
from pathlib import Path
import sys
from typing import Callable, Optional

# module -> attribute the tests use; a namespace package or an unrelated PyPI project lacks it.
LAUNCH_API = (('launch', 'LaunchContext'), ('launch_ros.actions', 'Node'))
CLI_API = (('ros2cli.cli', 'main'),)
INSTALL_HINT = 'the set-up installs it from ../shared/vendor/ros2_launch; a ROS 2 install has it'
REQUIRE_VARIABLE = 'MSPR_REQUIRE_ROS2_CLI'


def skip_reason(problem: Optional[str]) -> Optional[str]:
    """Return ``problem`` as a skip reason, or None: nothing missing, or CI requires the CLI.

    Where ``MSPR_REQUIRE_ROS2_CLI=1`` the test runs anyway and fails on what is missing.
    """
    if problem is None or os.environ.get(REQUIRE_VARIABLE) == '1':
        return None
    return problem


def _module_problem(name: str, attribute: str,
                    importer: Callable[[str], object]) -> Optional[str]:
    """Say why ``name.attribute`` is unusable, or return None when it is there."""
    try:
        module = importer(name)
    except ImportError as error:  # also ModuleNotFoundError
        return f"ROS 2's {name} is not installed ({error}; {INSTALL_HINT})"
    if getattr(module, attribute, None) is not None:
        return None
    if getattr(module, '__file__', None) is None:
        where = ', '.join(getattr(module, '__path__', None) or ()) or '?'
        return (f"'{name}' is only a namespace package ({where}), not ROS 2's {name}: "
                f'{INSTALL_HINT}')
    return f"'{name}' ({module.__file__}) has no {attribute}: not ROS 2's {name}"


def launch_missing(importer: Callable[[str], object] = importlib.import_module) -> Optional[str]:
    """Return why ROS 2's ``launch``/``launch_ros`` cannot be used, or None when they can."""
    for name, attribute in LAUNCH_API:
        problem = _module_problem(name, attribute, importer)
        if problem:
            return problem
    return None


def ros2_executable() -> Path:
    """Return the ``ros2`` command beside this interpreter (where the set-up puts it)."""
    return Path(sys.executable).parent / 'ros2'


def cli_missing(importer: Callable[[str], object] = importlib.import_module,
                executable: Optional[Path] = None) -> Optional[str]:
    """Return why the ``ros2`` command line cannot be used, or None when it can."""
    executable = ros2_executable() if executable is None else executable
    for name, attribute in LAUNCH_API + CLI_API:
        problem = _module_problem(name, attribute, importer)
        if problem:
            return problem
    if not executable.exists():
        return f'ROS 2 command line not installed: {executable} is missing ({INSTALL_HINT})'
    return None
