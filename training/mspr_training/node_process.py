"""The localizer node (or another ROS program) in its own process, on an isolated ROS domain.

What the node tests and the benchmarks need to start a node and stop it cleanly:

- ``domain_id``: a ROS domain from the process id and an offset, so parallel runs do not see each
  other; ``ros_env``: the environment of every process we start (the Fast DDS image profile,
  localhost discovery, a chosen OpenMP thread count, this checkout's ``mspr_ros``);
- ``param_args`` / ``node_command``: ``--ros-args`` command lines with YAML-typed parameters;
- ``NodeProcess``: the program in its own process group, its output captured to a file, stopped
  by process group with SIGINT and then SIGKILL after a deadline (the launch files and
  ``ros2 launch`` start children that must go too).

It imports neither rclpy nor ``mspr_ros.ros``: starting a node needs only its module name.
"""
import logging
import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import time
from typing import Any, Dict, Iterable, List, MutableMapping, Optional, Sequence

import mspr_ros
from mspr_ros.runtime.dds_profile import with_image_profile

LOGGER = logging.getLogger(__name__)

NODE_NAME = 'mspr_localizer'
NODE_MODULE = 'mspr_ros.ros.node'
# The folder holding the mspr_ros package (the checkout's root in a source tree).
PACKAGE_PARENT = Path(mspr_ros.__file__).resolve().parents[1]
# Enough for a node process to import torch + rclpy and load a tiny bundle on a busy 2-core box.
START_TIMEOUT_S = 60.0
# The line the node prints once an autostarted lifecycle node is active.
ACTIVE_PATTERN = r'active: waiting for images'
OUTPUT_POLL_S = 0.05


def prepare_environment(env: Optional[MutableMapping[str, str]] = None
                        ) -> MutableMapping[str, str]:
    """Give ``env`` (default ``os.environ``) the image profile and localhost-only discovery.

    Called before this process creates its first DDS participant, so that it talks to the
    nodes it starts over the same transport; settings the user made are kept.
    """
    env = with_image_profile(env)
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    return env


def domain_id(offset: int) -> int:
    """Return a ROS domain id in 1..101 from this process id and an ``offset``.

    11 is invertible modulo 101, so offsets 0..100 give distinct ids within one process.
    """
    return 1 + (os.getpid() + 11 * offset) % 101


def ros_env(domain: int, threads: int = 1, **extra: str) -> Dict[str, str]:
    """Return the environment of a process on ``domain`` with ``threads`` OpenMP threads."""
    env = dict(os.environ)
    env.update({
        'ROS_DOMAIN_ID': str(domain),
        'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
        'OMP_NUM_THREADS': str(threads),
        'PYTHONUNBUFFERED': '1',
        'RCUTILS_COLORIZED_OUTPUT': '0',
        # Where `ros2 launch` / ament_index find the package (the venv, as colcon's install/).
        'AMENT_PREFIX_PATH': str(Path(sys.executable).parent.parent),
    })
    env.update(extra)
    return dict(with_image_profile(with_package_path(env)))


def with_package_path(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Put the folder of this process's ``mspr_ros`` first on ``env``'s ``PYTHONPATH``; return it.

    A child must import the same mspr_ros as this process, wherever it is started from.
    """
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT),
                                                      env.get('PYTHONPATH', '')]))
    return env


def yaml_value(value: Any) -> str:
    """Return ``value`` as the YAML text of ``-p name:=value`` (strings quoted)."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, (list, tuple)):
        return '[' + ', '.join(yaml_value(v) if isinstance(v, str) else repr(float(v))
                               for v in value) + ']'
    return repr(value)


def param_args(params: Dict[str, Any]) -> List[str]:
    """Return ``-p name:=value`` arguments (values written as YAML)."""
    args = []
    for name, value in params.items():
        args += ['-p', f'{name}:={yaml_value(value)}']
    return args


def node_command(params: Optional[Dict[str, Any]] = None, ros_args: Sequence[str] = (),
                 name: str = NODE_NAME, namespace: str = '',
                 program: Optional[Sequence[str]] = None) -> List[str]:
    """Return the command line of ``program`` (default: the localizer node) as ``name``.

    ``ros_args`` are extra ``--ros-args`` arguments after the parameters.
    """
    command = list(program or [sys.executable, '-m', NODE_MODULE])
    command += ['--ros-args', '-r', f'__node:={name}']
    if namespace:
        command += ['-r', f'__ns:={namespace}']
    return command + param_args(params or {}) + list(ros_args)


class NodeProcess:
    """A node process in its own process group, its output going to ``log_path``."""

    def __init__(self, domain: int, log_path: Path, params: Optional[Dict[str, Any]] = None,
                 ros_args: Sequence[str] = (), name: str = NODE_NAME, namespace: str = '',
                 program: Optional[Sequence[str]] = None, threads: int = 1):
        """Start ``program`` (default: the localizer node) on ROS domain ``domain``.

        ``threads`` is the OpenMP thread count of the process: one for tests, which run beside
        each other; a benchmark gives the node the thread count of what it compares against.
        """
        self.name = name
        self.namespace = namespace
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, 'w')
        self.process = subprocess.Popen(
            node_command(params, ros_args, name, namespace, program), cwd=PACKAGE_PARENT,
            env=ros_env(domain, threads), stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)

    @property
    def fqn(self) -> str:
        """Fully qualified node name, e.g. ``/robot/mspr_localizer``."""
        return f"{self.namespace.rstrip('/')}/{self.name}" if self.namespace else f'/{self.name}'

    def output(self) -> str:
        """Everything the node printed so far."""
        return self.log_path.read_text(errors='replace')

    def wait_for_output(self, pattern: str, timeout: float = START_TIMEOUT_S) -> re.Match:
        """Wait for a regex in the log; fail early (with the log) if the process exits."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.output())
            if match:
                return match
            if self.process.poll() is not None:
                raise AssertionError(f'node exited ({self.process.returncode}) before printing '
                                     f'{pattern!r}:\n{self.output()[-4000:]}')
            if time.monotonic() >= deadline:
                raise AssertionError(f'node did not print {pattern!r} within {timeout:.0f} s:\n'
                                     f'{self.output()[-4000:]}')
            time.sleep(OUTPUT_POLL_S)

    def wait_active(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until an autostarted node reports it is active."""
        self.wait_for_output(ACTIVE_PATTERN, timeout)

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGINT the process group, SIGKILL it after ``timeout``; return the exit code."""
        stop_process_group(self.process, timeout)
        self._log.close()
        return self.process.returncode


def interrupt_process_group(process: subprocess.Popen) -> None:
    """Send SIGINT to the group of ``process`` (started with ``start_new_session``) if alive."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGINT)
        except ProcessLookupError:
            pass


def stop_process_group(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGINT a process started with ``start_new_session``; SIGKILL the group after a deadline."""
    interrupt_process_group(process)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        LOGGER.warning('process %d ignored SIGINT for %.0f s: killing its group', process.pid,
                       timeout)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group (e.g. launched nodes)
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.wait(timeout)


def stop_all(nodes: Iterable[NodeProcess], timeout: float = 10.0) -> None:
    """Stop several nodes concurrently: SIGINT all of them first, then wait for each."""
    nodes = list(nodes)
    for node in nodes:
        interrupt_process_group(node.process)
    for node in nodes:
        node.stop(timeout)
