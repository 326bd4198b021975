"""The bond a Nav2 lifecycle manager expects from each node it activates.

``nav2_lifecycle_manager`` watches every managed node through a ``bond`` (``bond_core``): the
node sends heartbeats on the ``bond`` topic with its own name as the bond id; when they stop for
the manager's ``bond_timeout`` the manager takes the node for dead and brings the whole set down
(or respawns it, ``attempt_respawn_reconnection``). ``nav2_util::LifecycleNode`` forms the bond
on activate with a 0.1 s heartbeat period and a 4 s heartbeat timeout, and breaks it on
deactivate, cleanup and shutdown; this class does the same with ``bondpy``.

bondpy ships with every ROS 2 distribution (``bond_core``); the PyPI wheels lack it, and there
``bond_heartbeat_period > 0`` logs one warning and forms no bond (set the manager's
``bond_timeout: 0.0`` then).

Three bondpy details shape this module (``test/test_bond.py`` shows each one):

- ``Bond.shutdown()`` destroys its publisher and subscription behind the node's back, which
  kills an executor spinning the node; after ``break_bond`` it also publishes once more, on the
  publisher it has just destroyed, and raises (``InvalidHandle``: the transition fails and the
  node goes through on_error). ``stop`` therefore never calls it: it marks the bond shut down
  (the publishing thread ends, ``__del__`` does nothing) and destroys both through the node.
- ``stop`` cannot wait for the manager's answer as ``bondcpp``'s destructor does (the
  transitions run on the executor that would deliver it, and the manager may be gone):
  ``break_bond`` sends the death notice, as ``nav2_util::LifecycleNode::destroyBond`` does,
  it is repeated for ``DEATH_NOTICE_REPEAT_S`` (or until the manager answers), and ``stop``
  waits (at most ``DEATH_NOTICE_ACK_S``) until DDS reports them delivered, so that the manager
  sees the break at once rather than after its heartbeat timeout. bondpy repeats the notice
  only when the bond had heard the manager; one that had not (the manager's heartbeats not yet
  discovered while the manager already hears the node) sends it once, and ``stop`` repeats it
  there. After Ctrl-C the context is gone and nothing can be sent: the manager then notices the
  silence.
- bondpy declares the parameter ``/bond_disable_heartbeat_timeout`` on every heartbeat timeout;
  the second one on a node raises in bondpy's timer thread and leaves the bond alive with a dead
  manager. ``_NodeBond`` declares it once, as ``bondcpp`` does; it also arms the heartbeat
  timer when the bond forms, not on the manager's second message.
"""
from functools import lru_cache
import time
from typing import Optional

import rclpy
from rclpy.duration import Duration

# nav2_util::LifecycleNode::createBond.
BOND_TOPIC = 'bond'
HEARTBEAT_TIMEOUT_S = 4.0
# How long stop waits for DDS to report the death notices delivered (a live manager answers in
# milliseconds).
DEATH_NOTICE_ACK_S = 0.5
# How long the death notice repeats before the bond's endpoints go. bondpy's and bondcpp's
# manager side keep one message of the bond topic, where the manager's own heartbeats also
# arrive every 0.1 s: a single notice that the manager's executor has not taken before its next
# heartbeat is overwritten, and the manager sees the break only after its heartbeat timeout
# (test/test_lifecycle_manager.py caught this on a loaded machine). The notice repeats every
# 50 ms meanwhile, as bondcpp's publishing thread repeats it while its destructor waits.
DEATH_NOTICE_REPEAT_S = 0.25


@lru_cache(maxsize=None)
def _bond_class():
    """Return bondpy's ``Bond`` with a repeatable heartbeat timeout, or None without bondpy."""
    try:
        from bond.msg import Constants
        from bondpy.bondpy import Bond
    except ImportError:
        return None

    class _NodeBond(Bond):
        """bondpy's ``Bond``: heartbeat timer armed when formed, timeout repeatable per node."""

        def Connected(self):  # noqa: N802 - bondpy's state machine calls it by this name
            # bondpy arms the heartbeat timer on the manager's second message only: a manager
            # dying right after the first would leave the node sending heartbeats forever.
            super().Connected()
            self.heartbeat_timer.reset()

        def _on_heartbeat_timeout(self):
            # bondpy's own version, declaring the switch only when it is not declared yet.
            name = Constants.DISABLE_HEARTBEAT_TIMEOUT_PARAM
            if not self.node.has_parameter(name):
                self.node.declare_parameter(name, False)
            if self.node.get_parameter(name).value:
                self.node.get_logger().warning(
                    f'heartbeat timeout is disabled: not breaking the bond (topic {self.topic},'
                    f' id {self.id})')
                return
            with self.lock:
                self.sm.HeartbeatTimeout()
            self._flush_pending_callbacks()

    return _NodeBond


class ManagerBond:
    """Forms and breaks the bond with a Nav2 lifecycle manager; one per node."""

    def __init__(self, node, heartbeat_period_s: float):
        """``heartbeat_period_s`` 0 disables the bond (no manager watches the node)."""
        self._node = node
        self._period = float(heartbeat_period_s)
        self._bond = None
        self._warned = False

    @property
    def active(self) -> bool:
        """True between ``start`` and ``stop``."""
        return self._bond is not None

    def start(self) -> None:
        """Form the bond (activate); idempotent."""
        if self._period <= 0.0 or self._bond is not None:
            return
        bond_class = _bond_class()
        if bond_class is None:
            if not self._warned:
                self._warned = True
                self._node.get_logger().warning(
                    'bondpy is not installed: no bond with a Nav2 lifecycle manager (set its '
                    'bond_timeout to 0.0, or bond_heartbeat_period to 0 here to silence this)')
            return
        bond = bond_class(self._node, BOND_TOPIC, self._node.get_name())
        bond.heartbeat_period = self._period
        bond.heartbeat_timeout = HEARTBEAT_TIMEOUT_S
        logger = self._node.get_logger()
        bond.on_formed = lambda: logger.info('bond formed: the lifecycle manager is heard')
        bond.start()
        self._bond = bond
        logger.info(
            f'bond started on {self._node.resolve_topic_name(BOND_TOPIC)} '
            f'(heartbeat {self._period:.2f} s, timeout {HEARTBEAT_TIMEOUT_S:.1f} s)')

    def stop(self) -> None:
        """Break the bond and release its endpoints (deactivate, cleanup, shutdown); no raise."""
        bond: Optional[object] = self._bond
        self._bond = None
        if bond is None:
            return
        if rclpy.ok(context=self._node.context):
            try:
                with bond.lock:
                    heard_manager = bond.sm.getState().getName() != 'SM.WaitingForSister'
                bond.break_bond()
                _repeat_death_notice(bond, heard_manager)
                bond.pub.wait_for_all_acked(Duration(seconds=DEATH_NOTICE_ACK_S))
            except RuntimeError as error:  # RCLError, InvalidHandle: Ctrl-C came in between
                self._node.get_logger().debug(f'bond: death notice not sent ({error})')
        with bond.lock:
            # The publishing thread ends at its next turn, and Bond.shutdown (also run by
            # __del__) becomes a no-op.
            bond.is_shutdown = True
            bond.condition.notify_all()
        for timer in (bond.connect_timer, bond.heartbeat_timer, bond.disconnect_timer):
            timer.cancel()
        self._node.destroy_subscription(bond.sub)
        self._node.destroy_publisher(bond.pub)


def _repeat_death_notice(bond, heard_manager: bool) -> None:
    """Repeat the death notice for ``DEATH_NOTICE_REPEAT_S``, or until the manager answers it.

    A bond that has heard its manager is dying (``AwaitSisterDeath``): bondpy's publishing
    thread repeats the notice until the manager's answer kills it, which ends the wait early. A
    bond that has not heard its manager yet (the manager's heartbeats not yet discovered, on a
    busy machine) goes straight to dead on ``break_bond``: bondpy sends the notice once and its
    thread ends, while the manager, which hears the node, waits for it. Here it is repeated.
    """
    from bond.msg import Constants
    deadline = time.monotonic() + DEATH_NOTICE_REPEAT_S
    with bond.lock:
        while (remaining := deadline - time.monotonic()) > 0.0:
            if heard_manager:
                if bond.sm.getState().getName() == 'SM.Dead':
                    return
            else:
                bond._publish(False)
            bond.condition.wait(min(remaining, Constants.DEAD_PUBLISH_PERIOD))
