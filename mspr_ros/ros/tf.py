"""TF for the node: broadcasters and a transform listener with one interface, two backends.

With a full ROS 2 install ``tf2_ros`` is importable and used (``TransformBroadcaster``,
``StaticTransformBroadcaster``, ``Buffer`` + ``TransformListener``). The PyPI wheels have no
``tf2_ros``, so the fallback publishes ``tf2_msgs/TFMessage`` itself, with tf2's QoS:

- ``/tf``: reliable, volatile, depth 100;
- ``/tf_static``: reliable, transient local, depth 1, and every static transform sent so far in
  one message (a late subscriber gets them all, like tf2's static broadcaster);

and listens with subscriptions that feed ``mspr_ros.geometry.tf_history.TransformBuffer``
(``/tf_static``
subscribed transient local, so it receives transforms latched before it started); lookups wait
on new data up to their timeout.

Both backends raise ``TransformUnavailable`` (a ``LookupError``) naming the frames and the
reason when a lookup fails within its timeout, and both ``clear()`` their history when the clock
jumps back, keeping the static transforms (tf2's ``BufferCore::clear``).

The node picks the backend with its ``tf_backend`` parameter (``auto``: tf2_ros when it imports).
tf2_ros is used as upstream defines it: ``TransformListener(buffer, node, *, spin_thread=False,
qos=None, static_qos=None)`` has no callback group argument (its subscriptions get their own
reentrant group), and ``Buffer(node=node)`` adds a ``tf2_frames`` service and a clock jump
callback to the node, both released by ``close()``.
"""
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

from geometry_msgs.msg import TransformStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from tf2_msgs.msg import TFMessage

from mspr_ros.geometry.tf_history import TransformBuffer
from mspr_ros.geometry.transforms import Transform
from mspr_ros.ros.conversions import stamp_to_ns, transform_from_msg

TF_TOPIC = '/tf'
TF_STATIC_TOPIC = '/tf_static'
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST)
TF_STATIC_PUBLISHER_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                     durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                     history=HistoryPolicy.KEEP_LAST)
TF_STATIC_LISTENER_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                    durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                    history=HistoryPolicy.KEEP_LAST)


class TransformUnavailable(LookupError):
    """No transform ``target <- source`` at the requested time within the timeout."""


def _tf2_ros():
    """Return the ``tf2_ros`` module, or None when it is not installed."""
    try:
        import tf2_ros
    except ImportError:
        return None
    return tf2_ros


def lookup_or_raise(buffer: TransformBuffer, target: str, source: str,
                    stamp_ns: Optional[int], timeout_s: float) -> Transform:
    """Return ``T_target_source`` from ``buffer`` at ``stamp_ns`` (None: latest common time).

    Waits up to ``timeout_s`` for data; raises ``TransformUnavailable`` naming both frames, the
    time and the buffer's reason (unknown frame, extrapolation, not connected).
    """
    try:
        return buffer.lookup(target, source, stamp_ns, timeout=max(0.0, timeout_s))
    except (LookupError, ValueError) as error:  # ValueError: an invalid frame name
        raise TransformUnavailable(
            f"no transform '{target}' <- '{source}' at {_describe_time(stamp_ns)} within "
            f'{timeout_s:.3f} s: {error}') from error


def _describe_time(stamp_ns: Optional[int]) -> str:
    return 'latest' if stamp_ns is None else f't={stamp_ns * 1e-9:.9f} s'


class TopicTfBroadcaster:
    """Publishes ``TFMessage`` on ``/tf`` (tf2's dynamic broadcaster QoS)."""

    def __init__(self, node: Node):
        """Create the /tf publisher on ``node``."""
        self._node = node
        self._publisher = node.create_publisher(TFMessage, TF_TOPIC, TF_QOS)

    def send(self, transforms: Sequence[TransformStamped]) -> None:
        """Publish the transforms in one message."""
        self._publisher.publish(TFMessage(transforms=list(transforms)))

    def close(self) -> None:
        """Destroy the publisher."""
        self._node.destroy_publisher(self._publisher)


class TopicStaticTfBroadcaster:
    """Publishes every static transform sent so far on latched ``/tf_static``."""

    def __init__(self, node: Node):
        """Create the latched /tf_static publisher on ``node``."""
        self._node = node
        self._publisher = node.create_publisher(TFMessage, TF_STATIC_TOPIC,
                                                TF_STATIC_PUBLISHER_QOS)
        self._transforms: Dict[str, TransformStamped] = {}

    def send(self, transforms: Sequence[TransformStamped]) -> None:
        """Add or replace (by child frame) the transforms and publish all of them."""
        for transform in transforms:
            self._transforms[transform.child_frame_id] = transform
        self._publisher.publish(TFMessage(transforms=list(self._transforms.values())))

    def close(self) -> None:
        """Destroy the publisher."""
        self._node.destroy_publisher(self._publisher)


class TopicTfListener:
    """Subscribes to ``/tf`` and ``/tf_static`` and answers lookups from a buffer."""

    def __init__(self, node: Node, on_bad_transform: Optional[Callable[[str], None]] = None):
        """``on_bad_transform`` receives a message for each invalid transform received."""
        self._node = node
        self._buffer = TransformBuffer()
        self._on_bad_transform = on_bad_transform
        self._subscriptions = [
            node.create_subscription(TFMessage, TF_TOPIC, self._on_tf, TF_QOS),
            node.create_subscription(TFMessage, TF_STATIC_TOPIC, self._on_tf_static,
                                     TF_STATIC_LISTENER_QOS),
        ]

    def _on_tf(self, msg: TFMessage) -> None:
        self._store(msg, static=False)

    def _on_tf_static(self, msg: TFMessage) -> None:
        self._store(msg, static=True)

    def _store(self, msg: TFMessage, static: bool) -> None:
        for stamped in msg.transforms:
            try:
                transform = transform_from_msg(stamped.transform)
                self._buffer.set_transform(stamped.header.frame_id, stamped.child_frame_id,
                                           stamp_to_ns(stamped.header.stamp), transform,
                                           static=static)
            except ValueError as error:
                if self._on_bad_transform is not None:
                    self._on_bad_transform(
                        f"ignored invalid transform '{stamped.header.frame_id}' -> "
                        f"'{stamped.child_frame_id}': {error}")

    def lookup(self, target: str, source: str, stamp_ns: Optional[int],
               timeout_s: float) -> Transform:
        """Return ``T_target_source`` at ``stamp_ns`` (None: latest); see ``lookup_or_raise``."""
        return lookup_or_raise(self._buffer, target, source, stamp_ns, timeout_s)

    def clear(self) -> None:
        """Forget the time line (the clock jumped back); static transforms stay."""
        self._buffer.clear(keep_static=True)

    def close(self) -> None:
        """Destroy the subscriptions."""
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._subscriptions = []


class Tf2RosBroadcaster:
    """``tf2_ros.TransformBroadcaster`` behind the ``send``/``close`` interface."""

    def __init__(self, node: Node, tf2_ros):
        """Wrap a new ``tf2_ros.TransformBroadcaster`` of ``node``."""
        self._node = node
        self._broadcaster = tf2_ros.TransformBroadcaster(node)

    def send(self, transforms: Sequence[TransformStamped]) -> None:
        """Publish the transforms on /tf."""
        self._broadcaster.sendTransform(list(transforms))

    def close(self) -> None:
        """Destroy the broadcaster's publisher."""
        self._node.destroy_publisher(self._broadcaster.pub_tf)


class Tf2RosStaticBroadcaster:
    """``tf2_ros.StaticTransformBroadcaster`` behind the ``send``/``close`` interface.

    tf2_ros latches every child frame sent so far in one message but keeps a child's first
    value: a second send of the same child is dropped. The node sends each scene frame once
    per configure, on a broadcaster made by that configure, so nothing is lost.
    """

    def __init__(self, node: Node, tf2_ros):
        """Wrap a new ``tf2_ros.StaticTransformBroadcaster`` of ``node``."""
        self._node = node
        self._broadcaster = tf2_ros.StaticTransformBroadcaster(node)

    def send(self, transforms: Sequence[TransformStamped]) -> None:
        """Add the transforms to the latched message and publish it."""
        self._broadcaster.sendTransform(list(transforms))

    def close(self) -> None:
        """Destroy the broadcaster's publisher."""
        self._node.destroy_publisher(self._broadcaster.pub_tf)


class Tf2RosListener:
    """``tf2_ros.Buffer`` + ``TransformListener`` behind the ``lookup``/``close`` interface."""

    def __init__(self, node: Node, tf2_ros):
        """Create a buffer and a listener spun by ``node``'s executor."""
        from rclpy.duration import Duration
        from rclpy.time import Time
        self._duration, self._time = Duration, Time
        self._node = node
        self._tf2_ros = tf2_ros
        self._buffer = tf2_ros.Buffer(node=node)
        self._listener = tf2_ros.TransformListener(self._buffer, node, spin_thread=False)

    def lookup(self, target: str, source: str, stamp_ns: Optional[int],
               timeout_s: float) -> Transform:
        """Return ``T_target_source`` at ``stamp_ns`` (None: latest)."""
        when = self._time() if stamp_ns is None else self._time(nanoseconds=stamp_ns)
        try:
            stamped = self._buffer.lookup_transform(
                target, source, when, timeout=self._duration(seconds=timeout_s))
        except self._tf2_ros.TransformException as error:
            raise TransformUnavailable(
                f"no transform '{target}' <- '{source}' at {_describe_time(stamp_ns)} within "
                f'{timeout_s:.3f} s: {error}') from error
        return transform_from_msg(stamped.transform)

    def clear(self) -> None:
        """Forget the time line (the clock jumped back); tf2 keeps the static transforms."""
        self._buffer.clear()

    def close(self) -> None:
        """Unsubscribe from /tf and /tf_static; drop the buffer's service and jump callback."""
        self._listener.unregister()
        self._node.destroy_service(self._buffer.srv)
        self._buffer.jump_handle.unregister()


@dataclass
class TfInterfaces:
    """The node's TF endpoints; ``backend`` is 'tf2_ros' or 'mspr_ros'."""

    broadcaster: object
    static_broadcaster: object
    listener: object
    backend: str

    def close(self) -> None:
        """Destroy every publisher and subscription."""
        for endpoint in (self.broadcaster, self.static_broadcaster, self.listener):
            endpoint.close()


def create_tf_interfaces(node: Node, use_tf2_ros: Optional[bool] = None,
                         on_bad_transform: Optional[Callable[[str], None]] = None
                         ) -> TfInterfaces:
    """Create broadcaster, static broadcaster and listener for ``node``.

    ``use_tf2_ros`` None picks tf2_ros when importable; False forces the topic fallback; True
    requires tf2_ros (ImportError otherwise).
    """
    tf2_ros = None if use_tf2_ros is False else _tf2_ros()
    if use_tf2_ros and tf2_ros is None:
        raise ImportError("tf_backend is 'tf2_ros' but tf2_ros does not import here: install "
                          "ROS 2's tf2_ros, or set tf_backend to 'auto' or 'mspr_ros'")
    if tf2_ros is not None:
        return TfInterfaces(Tf2RosBroadcaster(node, tf2_ros),
                            Tf2RosStaticBroadcaster(node, tf2_ros),
                            Tf2RosListener(node, tf2_ros), 'tf2_ros')
    return TfInterfaces(TopicTfBroadcaster(node), TopicStaticTfBroadcaster(node),
                        TopicTfListener(node, on_bad_transform), 'mspr_ros')


def use_tf2_ros(tf_backend: str) -> Optional[bool]:
    """Return the ``tf_backend`` parameter as ``create_tf_interfaces``'s ``use_tf2_ros``."""
    return {'auto': None, 'tf2_ros': True, 'mspr_ros': False}[tf_backend]
