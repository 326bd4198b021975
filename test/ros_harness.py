"""Helpers for tests that talk to the localizer node over real DDS.

- ``domain_id``: a ROS domain per test module (and per CLI test), so parallel runs and modules do
  not see each other; ``ros_env``: the environment every process we start gets (the Fast DDS
  image profile, localhost discovery, one OpenMP thread).
- ``NodeProcess``: the node in its own process, its log captured to a file, stopped by process
  group with SIGINT and then SIGKILL after a deadline.
- ``RosClient``: an rclpy node in the test process, in its own context on the module's domain,
  spun by a background executor; ``Inbox`` collects messages and waits on conditions with
  deadlines (no sleep polling).
"""
import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import cv2
import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from mspr_ros.runtime.dds_profile import with_image_profile

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
NODE_NAME = 'mspr_localizer'
# Enough for a node process to import torch + rclpy and load a tiny bundle on a busy 2-core box.
START_TIMEOUT_S = 60.0
RELIABLE_LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.TRANSIENT_LOCAL)
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
TF_STATIC_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)

# Every process the tests start (and this one) moves images over Fast DDS shared memory.
with_image_profile()
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')


def domain_id(offset: int) -> int:
    """Return a ROS domain id in 1..101 from this process id and a per-module ``offset``.

    11 is invertible modulo 101, so offsets 0..100 give distinct ids within one test run.
    """
    return 1 + (os.getpid() + 11 * offset) % 101


def ros_env(domain: int, **extra: str) -> Dict[str, str]:
    """Return the environment for a process on ``domain``."""
    env = dict(os.environ)
    env.update({
        'ROS_DOMAIN_ID': str(domain),
        'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
        'OMP_NUM_THREADS': '1',
        'PYTHONUNBUFFERED': '1',
        'RCUTILS_COLORIZED_OUTPUT': '0',
        # Where `ros2 launch` / ament_index find the package (the venv, as colcon's install/).
        'AMENT_PREFIX_PATH': str(Path(PYTHON).parent.parent),
        # The editable install may not map the package; the checkout is the truth either way.
        'PYTHONPATH': os.pathsep.join(filter(None, [str(REPO), env.get('PYTHONPATH', '')])),
    })
    env.update(extra)
    return with_image_profile(env)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.05) -> Any:
    """Return the first truthy ``predicate()`` within ``timeout`` s, else fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f'timed out after {timeout:.1f} s waiting for {what}')
        time.sleep(interval)


def param_args(params: Dict[str, Any]) -> List[str]:
    """Return ``-p name:=value`` arguments (values written as YAML, strings quoted)."""
    args = []
    for name, value in params.items():
        if isinstance(value, bool):
            text = 'true' if value else 'false'
        elif isinstance(value, str):
            text = "'" + value.replace("'", "''") + "'"
        elif isinstance(value, (list, tuple)):
            text = '[' + ', '.join(
                f"'{v}'" if isinstance(v, str) else repr(float(v)) for v in value) + ']'
        else:
            text = repr(value)
        args += ['-p', f'{name}:={text}']
    return args


class NodeProcess:
    """The localizer node (``python -m mspr_ros.ros.node``) in its own process group."""

    def __init__(self, domain: int, log_path: Path, params: Optional[Dict[str, Any]] = None,
                 ros_args: Sequence[str] = (), name: str = NODE_NAME, namespace: str = ''):
        """Start the node; ``ros_args`` are extra ``--ros-args`` arguments."""
        self.name = name
        self.namespace = namespace
        self.log_path = Path(log_path)
        command = [PYTHON, '-m', 'mspr_ros.ros.node', '--ros-args', '-r', f'__node:={name}']
        if namespace:
            command += ['-r', f'__ns:={namespace}']
        command += param_args(params or {}) + list(ros_args)
        self._log = open(self.log_path, 'w')
        self.process = subprocess.Popen(command, cwd=REPO, env=ros_env(domain), stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

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
            time.sleep(0.05)

    def wait_active(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until an autostarted node reports it is active."""
        self.wait_for_output(r'active: waiting for images', timeout)

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGINT the process group, SIGKILL it after ``timeout``; return the exit code."""
        stop_process_group(self.process, timeout)
        self._log.close()
        return self.process.returncode


def stop_all(nodes: Iterable[NodeProcess], timeout: float = 10.0) -> None:
    """Stop several nodes concurrently: SIGINT all of them first, then wait for each."""
    nodes = list(nodes)
    for node in nodes:
        if node.process.poll() is None:
            try:
                os.killpg(node.process.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    for node in nodes:
        node.stop(timeout)


def stop_process_group(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGINT a process started with ``start_new_session``; SIGKILL the group after a deadline."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group (e.g. launched nodes)
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.wait(timeout)


class Inbox:
    """Messages received on one subscription, with waits on conditions."""

    def __init__(self):
        """Start empty."""
        self.messages: List[Any] = []
        self._changed = threading.Condition()

    def add(self, msg: Any) -> None:
        """Store a message (subscription callback)."""
        with self._changed:
            self.messages.append(msg)
            self._changed.notify_all()

    def snapshot(self) -> List[Any]:
        """Copy of the messages so far."""
        with self._changed:
            return list(self.messages)

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float, what: str) -> Any:
        """Return the first message (old or new) satisfying ``predicate``, within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for msg in self.messages:
                    if predicate(msg):
                        return msg
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f'timed out after {timeout:.1f} s waiting for {what} '
                                         f'({len(self.messages)} messages received)')
                self._changed.wait(remaining)

    def wait_count(self, count: int, timeout: float, what: str) -> List[Any]:
        """Wait until at least ``count`` messages arrived; return them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f'timed out after {timeout:.1f} s waiting for {count} '
                                         f'{what} ({len(self.messages)} received)')
                self._changed.wait(remaining)
            return list(self.messages)


class RosClient:
    """An rclpy node in this process, in its own context on ``domain``, spun in a thread."""

    def __init__(self, domain: int, name: str = 'mspr_test_client'):
        """Create the context, the node and the spinning thread."""
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node(name, context=self.context)
        # Single-threaded as the node's: rclpy's multi-threaded executor delays large messages.
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - the context was shut down under us at close()
            pass

    def now_ns(self) -> int:
        """Return the client's clock (system time), nanoseconds."""
        return self.node.get_clock().now().nanoseconds

    def subscribe(self, msg_type, topic: str, qos: Any = 10) -> Inbox:
        """Subscribe and return the inbox collecting the messages."""
        inbox = Inbox()
        self.node.create_subscription(msg_type, topic, inbox.add, qos)
        return inbox

    def publisher(self, msg_type, topic: str, qos: Any = 10):
        """Create a publisher."""
        return self.node.create_publisher(msg_type, topic, qos)

    def wait_for_subscribers(self, publisher, timeout: float = 20.0) -> None:
        """Wait until ``publisher`` is matched by at least one subscription."""
        wait_until(lambda: publisher.get_subscription_count() > 0, timeout,
                   f'a subscriber on {publisher.topic_name}')

    def call(self, srv_type, name: str, request: Any = None, timeout: float = 20.0) -> Any:
        """Call a service (waiting for it to appear) and return the response."""
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f'service {name} did not appear within {timeout:.0f} s')
            future = client.call_async(request if request is not None else srv_type.Request())
            done = threading.Event()
            future.add_done_callback(lambda _: done.set())
            if not done.wait(timeout):
                raise AssertionError(f'service {name} did not answer within {timeout:.0f} s')
            return future.result()
        finally:
            self.node.destroy_client(client)

    def get_state(self, node_fqn: str) -> str:
        """Lifecycle state label of ``node_fqn`` (GetState service)."""
        from lifecycle_msgs.srv import GetState
        return self.call(GetState, f'{node_fqn}/get_state').current_state.label

    def change_state(self, node_fqn: str, transition_id: int, timeout: float = 60.0) -> bool:
        """Trigger a lifecycle transition (ChangeState service); return its success."""
        from lifecycle_msgs.srv import ChangeState
        request = ChangeState.Request()
        request.transition.id = transition_id
        return self.call(ChangeState, f'{node_fqn}/change_state', request, timeout).success

    def set_parameters(self, node_fqn: str, params: Dict[str, Any]) -> list:
        """Set parameters remotely; return the ``SetParametersResult`` list.

        Values are ``Parameter`` objects or plain values (typed by rclpy; an empty list has no
        type, so pass ``Parameter(name, Parameter.Type.STRING_ARRAY, [])`` for it).
        """
        from rcl_interfaces.srv import SetParameters
        request = SetParameters.Request()
        request.parameters = [
            (value if isinstance(value, Parameter) else Parameter(name, value=value))
            .to_parameter_msg() for name, value in params.items()]
        return self.call(SetParameters, f'{node_fqn}/set_parameters', request).results

    def get_parameters(self, node_fqn: str, names: Iterable[str]) -> list:
        """Get parameter values remotely (``ParameterValue`` messages)."""
        from rcl_interfaces.srv import GetParameters
        request = GetParameters.Request(names=list(names))
        return self.call(GetParameters, f'{node_fqn}/get_parameters', request).values

    def close(self) -> None:
        """Stop spinning, join the thread, destroy the node and the context."""
        self.executor.shutdown()
        self._thread.join(10.0)
        self.node.destroy_node()
        self.context.try_shutdown()


def small_photos(size=(160, 120)) -> Dict[str, np.ndarray]:
    """Real photos from ``skimage.data`` resized to ``size`` (width, height), uint8 RGB."""
    from skimage import data
    photos = {'astronaut': data.astronaut(), 'coffee': data.coffee(), 'chelsea': data.chelsea()}
    return {name: np.ascontiguousarray(cv2.resize(img, size, interpolation=cv2.INTER_AREA))
            for name, img in photos.items()}


def diagnostic_values(status) -> Dict[str, str]:
    """Key -> value of a ``DiagnosticStatus``."""
    return {kv.key: kv.value for kv in status.values}


def own_status(array_msg, node_name: str = NODE_NAME):
    """Return the localizer's status in a ``DiagnosticArray`` (None when absent)."""
    for status in array_msg.status:
        if status.name == f'{node_name}: localization':
            return status
    return None
