"""An rclpy node in this process that talks to a node in another, with waits on deadlines.

- ``RosClient``: a node in its own rclpy context on a chosen ROS domain, spun by a background
  executor, with helpers for publishers, subscriptions, services, lifecycle and parameters;
- ``Inbox``: the messages of one subscription, with waits on conditions (no sleep polling);
- ``own_status`` / ``diagnostic_values``: the localizer's status in ``/diagnostics``.

Used by the node tests and the benchmarks; it imports no module of ``mspr_ros.ros``.
"""
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter

from mspr_training.node_process import NODE_NAME, prepare_environment

# Read-only services are asked again after this long without an answer (see RosClient.call).
READ_ONLY_RESEND_S = 5.0

POLL_S = 0.05


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = POLL_S) -> Any:
    """Return the first truthy ``predicate()`` within ``timeout`` s, else fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f'timed out after {timeout:.1f} s waiting for {what}')
        time.sleep(interval)


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

    def _wait(self, ready: Callable[[], Optional[tuple]], timeout: float,
              failure: Callable[[], str]) -> Any:
        """Wait (under the lock) until ``ready()`` returns ``(value,)``; return the value."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = ready()
                if found is not None:
                    return found[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(failure())
                self._changed.wait(remaining)

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float, what: str) -> Any:
        """Return the first message (old or new) satisfying ``predicate``, within ``timeout``."""
        def first() -> Optional[tuple]:
            return next(((msg,) for msg in self.messages if predicate(msg)), None)
        return self._wait(first, timeout, lambda: (
            f'timed out after {timeout:.1f} s waiting for {what} '
            f'({len(self.messages)} messages received)'))

    def wait_count(self, count: int, timeout: float, what: str) -> List[Any]:
        """Wait until at least ``count`` messages arrived; return them."""
        def enough() -> Optional[tuple]:
            return (list(self.messages),) if len(self.messages) >= count else None
        return self._wait(enough, timeout, lambda: (
            f'timed out after {timeout:.1f} s waiting for {count} {what} '
            f'({len(self.messages)} received)'))


class RosClient:
    """An rclpy node in this process, in its own context on ``domain``, spun in a thread."""

    def __init__(self, domain: int, name: str = 'mspr_test_client'):
        """Create the context, the node and the spinning thread."""
        prepare_environment()
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

    def call(self, srv_type, name: str, request: Any = None, timeout: float = 20.0,
             resend_s: Optional[float] = None) -> Any:
        """Call a service (waiting for it to appear) and return the response.

        ``resend_s``: for a read-only service, send the request again when no answer came
        within this long. The service can see a new client before its reply writer has matched
        the client's reader, and Fast DDS then drops the reply: seen under load with a fresh
        client per call. Never for a service that changes state (a transition twice).
        """
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f'service {name} did not appear within {timeout:.0f} s')
            done = threading.Event()
            deadline = time.monotonic() + timeout
            futures = []
            while True:
                futures.append(client.call_async(request if request is not None
                                                 else srv_type.Request()))
                futures[-1].add_done_callback(lambda _: done.set())
                left = deadline - time.monotonic()
                if done.wait(left if resend_s is None else min(resend_s, max(left, 0.0))):
                    return next(f for f in futures if f.done()).result()
                if time.monotonic() >= deadline:
                    raise AssertionError(
                        f'service {name} did not answer within {timeout:.0f} s')
        finally:
            self.node.destroy_client(client)

    def get_state(self, node_fqn: str) -> str:
        """Lifecycle state label of ``node_fqn`` (GetState service)."""
        from lifecycle_msgs.srv import GetState
        return self.call(GetState, f'{node_fqn}/get_state',
                         resend_s=READ_ONLY_RESEND_S).current_state.label

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
        return self.call(GetParameters, f'{node_fqn}/get_parameters', request,
                         resend_s=READ_ONLY_RESEND_S).values

    def close(self) -> None:
        """Stop spinning, join the thread, destroy the node and the context."""
        self.executor.shutdown()
        self._thread.join(10.0)
        self.node.destroy_node()
        self.context.try_shutdown()


def status_name(node_name: str = NODE_NAME) -> str:
    """Return the name of the localizer's ``DiagnosticStatus`` (as the node writes it)."""
    return f'{node_name}: localization'


def own_status(array_msg, node_name: str = NODE_NAME):
    """Return the localizer's status in a ``DiagnosticArray`` (None when absent)."""
    return next((status for status in array_msg.status
                 if status.name == status_name(node_name)), None)


def diagnostic_values(status) -> Dict[str, str]:
    """Key -> value of a ``DiagnosticStatus``."""
    return {kv.key: kv.value for kv in status.values}
