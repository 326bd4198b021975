"""The node's bond with a Nav2 lifecycle manager (bondpy on both sides, real processes, real DDS).

``nav2_lifecycle_manager`` creates, after each activate, a bond on the topic ``bond`` with the
node's name as id, a 0.1 s heartbeat and its ``bond_timeout`` (default 4 s) as heartbeat
timeout; when it breaks, the manager takes the node for dead and resets the managed set. The
manager side here is bondpy's ``Bond`` in the test process (one per activation, as Nav2 makes
one per activation), or a manager in a process of its own where the test kills the manager.

bondpy details the tests work around on the manager side (``../shared/vendor/ros2_tf2/
README.md``): a bond's heartbeat timer starts only on the second message from the other side,
so each test waits for heartbeats before it kills anything; a second heartbeat timeout on one
rclpy node raises in bondpy's timer thread, so a manager node here sees at most one; and
``Bond.shutdown()`` destroys its endpoints behind the node's back, so ``_release`` destroys
them through the node first. The node's side (``mspr_ros/ros/bond.py``) must not suffer from
any of them: the tests below fail with bondpy's plain ``Bond`` there.
"""
import os
import signal
import sys
import threading
import time

from lifecycle_msgs.msg import Transition
import pytest
import rclpy
from rclpy.duration import Duration

from mspr_ros.ros.bond import HEARTBEAT_TIMEOUT_S
from ros_components import needs
from ros_harness import domain_id, NODE_NAME, NodeProcess, RosClient, stop_all, wait_until

pytestmark = [pytest.mark.ros, pytest.mark.slow, needs('bondpy')]

# nav2_lifecycle_manager's defaults: bond_timeout (its heartbeat timeout) and heartbeat period.
MANAGER_BOND_TIMEOUT_S = 4.0
MANAGER_HEARTBEAT_S = 0.1
# Nav2 aborts the bring-up when the bond has not formed bond_timeout / 2 after activate
# (LifecycleManager::createBondConnection).
FORM_DEADLINE_S = MANAGER_BOND_TIMEOUT_S / 2
# The node's death notice is delivered before its deactivate answers; a bond seen broken later
# than this was broken by the heartbeat timeout, not by the notice.
PROMPT_S = 1.0
# Slack around a heartbeat timeout: one heartbeat period plus scheduling on a busy 2-core box.
TIMEOUT_SLACK_S = 1.0
# How long a test waits for the node to fall silent. The bugs it guards kept the heartbeats going
# forever, so this only bounds the wait; it is generous because two CI runs sharing the 2 cores
# once waited more than 6 s (timeout + 2 s) for the silence.
SILENCE_WAIT_S = HEARTBEAT_TIMEOUT_S + 4 * TIMEOUT_SLACK_S
COMMON = ['-p', 'min_scene_confidence:=0.0', '-p', "odom_frame_id:=''", '-p',
          'camera_to_base:=[0.0, 0.0, 0.0, -1.5707963267948966, 0.0, -1.5707963267948966]',
          '-p', 'autostart:=false']
# A manager in a process of its own, for the test to kill: the bond Nav2's manager makes (with
# bondpy where Nav2 uses bondcpp), printing its instance id once the bond forms.
MANAGER_PROGRAM = f"""
import sys
import rclpy
from bondpy.bondpy import Bond
rclpy.init(args=sys.argv)
node = rclpy.create_node('manager')
bond = Bond(node, 'bond', {NODE_NAME!r})
bond.on_formed = lambda: print('bond formed', bond.instance_id, flush=True)
bond.heartbeat_timeout = {MANAGER_BOND_TIMEOUT_S!r}
bond.heartbeat_period = {MANAGER_HEARTBEAT_S!r}
bond.start()
rclpy.spin(node)
"""


@pytest.fixture(scope='module')
def nodes(tiny_bundle_path, tmp_path_factory):
    """Three unconfigured nodes: bonded (default heartbeat), unbonded (0.0), watched."""
    tmp = tmp_path_factory.mktemp('bond')
    domain = domain_id(64)
    weights = ['-p', f'weights:={tiny_bundle_path}']
    started = {
        'bonded': NodeProcess(domain, tmp / 'bonded.log', namespace='/bonded',
                              ros_args=COMMON + weights),
        'unbonded': NodeProcess(domain, tmp / 'unbonded.log', namespace='/unbonded',
                                ros_args=COMMON + weights + ['-p', 'bond_heartbeat_period:=0.0']),
        'watched': NodeProcess(domain, tmp / 'watched.log', namespace='/watched',
                               ros_args=COMMON + weights),
    }
    client = RosClient(domain)
    try:
        yield started, client, domain, tmp
    finally:
        client.close()
        stop_all(started.values())


class Heartbeats:
    """Every ``bond.msg.Status`` on one topic, with its arrival time (monotonic)."""

    def __init__(self, node, topic):
        """Subscribe on ``node`` (spun by the client's executor)."""
        from bond.msg import Status  # bondpy's messages: imported once the test runs
        self._lock = threading.Lock()
        self._arrivals = []
        node.create_subscription(Status, topic, self._add, 10)

    def _add(self, msg):
        with self._lock:
            self._arrivals.append((time.monotonic(), msg))

    def from_others(self, instance_id, since=0.0):
        """Return when the messages after ``since`` not sent by bond ``instance_id`` came."""
        with self._lock:
            return [t for t, msg in self._arrivals
                    if msg.id == NODE_NAME and msg.instance_id != instance_id and t > since]

    def by_sender(self, since=0.0):
        """Return {instance id: [(arrival time, active), ...]} of the node's bond messages."""
        senders = {}
        with self._lock:
            for t, msg in self._arrivals:
                if msg.id == NODE_NAME and t > since:
                    senders.setdefault(msg.instance_id, []).append((t, msg.active))
        return senders

    def of(self, instance_id, since=0.0):
        """Return (arrival time, active) of the messages after ``since`` from ``instance_id``."""
        with self._lock:
            return [(t, msg.active) for t, msg in self._arrivals
                    if msg.instance_id == instance_id and t > since]


def _manager_node(client, namespace):
    """Return a node named as the manager, in ``namespace``, spun by the client's executor."""
    node = rclpy.create_node('lifecycle_manager_mspr', namespace=namespace,
                             context=client.context)
    client.executor.add_node(node)
    return node


def _manager_bond(node):
    """Create and start the bond Nav2's manager makes with the node after an activate."""
    from bondpy.bondpy import Bond
    bond = Bond(node, 'bond', NODE_NAME)
    bond.heartbeat_timeout = MANAGER_BOND_TIMEOUT_S
    bond.heartbeat_period = MANAGER_HEARTBEAT_S
    bond.start()
    return bond


def _release(node, bond):
    """Break (if needed) and destroy a manager-side bond without killing the executor."""
    if not bond.is_broken():
        bond.break_bond()
        assert bond.wait_until_broken(Duration(seconds=2.0)), 'the node did not ack the break'
    node.destroy_subscription(bond.sub)
    node.destroy_publisher(bond.pub)
    bond.shutdown()


def _change(client, fqn, transition, goal):
    assert client.change_state(fqn, transition), f'{fqn}: transition {transition} failed'
    assert client.get_state(fqn) == goal


def _activate_and_form(client, fqn, manager):
    """Activate as Nav2 does, then form a new manager-side bond; return it and the time taken."""
    _change(client, fqn, Transition.TRANSITION_ACTIVATE, 'active')
    started = time.monotonic()
    bond = _manager_bond(manager)
    formed = bond.wait_until_formed(Duration(seconds=FORM_DEADLINE_S))
    elapsed = time.monotonic() - started
    assert formed, f'{fqn}: no bond {FORM_DEADLINE_S} s after activate (Nav2 aborts then)'
    return bond, elapsed


def _wait_heartbeat_timers_armed(heartbeats, bond, count=10):
    """Wait for 1 s of heartbeats both ways: bondpy arms its timer on the second one.

    The subscription of a bondpy bond keeps one message: a busy executor takes fewer than were
    sent, so the test waits for many.
    """
    since = time.monotonic()
    wait_until(lambda: len(heartbeats.from_others(bond.instance_id, since)) >= count
               and len(heartbeats.of(bond.instance_id, since)) >= count, 5.0,
               f'{count} heartbeats each way')


def _no_tracebacks(node):
    text = node.output()
    assert 'Traceback' not in text and '[ERROR]' not in text, text[-4000:]


def test_bond_forms_on_activate_breaks_on_deactivate_and_times_out_when_killed(nodes):
    started, client, _, _ = nodes
    node, fqn = started['bonded'], f'/bonded/{NODE_NAME}'
    node.wait_for_output('autostart is false')
    manager = _manager_node(client, '/bonded')
    heartbeats = Heartbeats(manager, 'bond')
    _change(client, fqn, Transition.TRANSITION_CONFIGURE, 'inactive')

    first, formed_after = _activate_and_form(client, fqn, manager)
    print(f'bond formed {formed_after:.3f} s after activate returned')
    _wait_heartbeat_timers_armed(heartbeats, first)
    started_at = time.monotonic()
    _change(client, fqn, Transition.TRANSITION_DEACTIVATE, 'inactive')
    assert first.wait_until_broken(Duration(seconds=PROMPT_S)), \
        'deactivate must break the bond at once (the death notice), not by a timeout'
    print(f'deactivate: bond broken after {time.monotonic() - started_at:.3f} s')
    node_instance = first.sister_instance_id
    sent = heartbeats.of(node_instance)
    assert sent[-1][1] is False, 'the node must end with a death notice'
    notices = [t for t, active in sent if not active]
    print(f'deactivate: {len(notices)} death notices over {notices[-1] - notices[0]:.3f} s')
    _release(manager, first)

    second, formed_after = _activate_and_form(client, fqn, manager)
    print(f'bond formed again {formed_after:.3f} s after activate returned')
    assert second.sister_instance_id != node_instance, 'a new activation makes a new bond'
    _wait_heartbeat_timers_armed(heartbeats, second)
    killed_at = time.monotonic()
    os.killpg(node.process.pid, signal.SIGKILL)
    assert second.wait_until_broken(
        Duration(seconds=MANAGER_BOND_TIMEOUT_S + TIMEOUT_SLACK_S)), \
        f'no break {MANAGER_BOND_TIMEOUT_S + TIMEOUT_SLACK_S} s after the node was killed'
    broken_after = time.monotonic() - killed_at
    last_heartbeat = max(heartbeats.from_others(second.instance_id))
    print(f'SIGKILL: bond broken after {broken_after:.3f} s '
          f'({time.monotonic() - last_heartbeat:.3f} s after the last heartbeat)')
    assert broken_after > MANAGER_BOND_TIMEOUT_S - TIMEOUT_SLACK_S, \
        'the bond broke before the heartbeat timeout: not by the silence'
    _release(manager, second)
    assert 'Traceback' not in node.output(), node.output()[-4000:]


def test_zero_heartbeat_period_forms_no_bond(nodes):
    started, client, _, _ = nodes
    node, fqn = started['unbonded'], f'/unbonded/{NODE_NAME}'
    node.wait_for_output('autostart is false')
    manager = _manager_node(client, '/unbonded')
    heartbeats = Heartbeats(manager, 'bond')
    _change(client, fqn, Transition.TRANSITION_CONFIGURE, 'inactive')
    _change(client, fqn, Transition.TRANSITION_ACTIVATE, 'active')
    bond = _manager_bond(manager)
    # Nav2's deadline: a node with bonds off cannot be managed with bond_timeout > 0.
    assert not bond.wait_until_formed(Duration(seconds=FORM_DEADLINE_S))
    assert not heartbeats.from_others(bond.instance_id), 'the node sent bond messages'
    publishers = client.node.get_publishers_info_by_topic('/unbonded/bond')
    assert [p.node_name for p in publishers] == ['lifecycle_manager_mspr'], publishers
    _release(manager, bond)
    assert 'bond started' not in node.output()
    _no_tracebacks(node)


def _start_manager_process(domain, tmp, namespace, index):
    """Start a manager process; return it and its bond's instance id once the bond formed."""
    manager = NodeProcess(domain, tmp / f'manager{index}.log', name='lifecycle_manager_mspr',
                          namespace=namespace, program=[sys.executable, '-c', MANAGER_PROGRAM])
    return manager, manager.wait_for_output(r'bond formed (\S+)').group(1)


def _wait_node_silent(heartbeats, manager_instance, since, manager_gone_at, what):
    """Return when the node's last heartbeat to ``manager_instance`` (after ``since``) came.

    The node counts as silent once it has sent nothing for five manager heartbeat periods and its
    heartbeat timeout (with slack) has passed since the manager went quiet at
    ``manager_gone_at``: a node starved by a busy machine can pause its heartbeats for half a
    second before its timeout, and taking that pause for the silence made the assertions on the
    last heartbeat's time fail on a node that went on sending (CI, stop 35).
    """
    def node_silent():
        sent = heartbeats.from_others(manager_instance, since)
        now = time.monotonic()
        return (sent and now - sent[-1] > 5 * MANAGER_HEARTBEAT_S
                and now - manager_gone_at > HEARTBEAT_TIMEOUT_S + TIMEOUT_SLACK_S and sent[-1])

    return wait_until(node_silent, SILENCE_WAIT_S, what)


def test_the_node_side_times_out_on_a_killed_manager_again_and_again(nodes):
    """The node stops its heartbeats when its manager dies, on every activation.

    bondpy declared a parameter on each heartbeat timeout: the second one on a node raised in
    bondpy's timer thread, and the node kept sending heartbeats to a dead manager forever.
    """
    started, client, domain, tmp = nodes
    node, fqn = started['watched'], f'/watched/{NODE_NAME}'
    node.wait_for_output('autostart is false')
    heartbeats = Heartbeats(client.node, '/watched/bond')
    _change(client, fqn, Transition.TRANSITION_CONFIGURE, 'inactive')
    for round_ in (1, 2):
        _change(client, fqn, Transition.TRANSITION_ACTIVATE, 'active')
        manager, manager_instance = _start_manager_process(domain, tmp, '/watched', round_)
        formed_at = time.monotonic()
        # The node's heartbeat timer armed: 1 s of heartbeats both ways.
        wait_until(lambda: len(heartbeats.of(manager_instance, formed_at)) >= 10
                   and len(heartbeats.from_others(manager_instance, formed_at)) >= 10, 5.0,
                   'heartbeats both ways')
        os.killpg(manager.process.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        manager.stop()

        last = _wait_node_silent(heartbeats, manager_instance, formed_at, killed_at,
                                 f'the node to stop its heartbeats (round {round_})')
        print(f'round {round_}: the node stopped its heartbeats {last - killed_at:.3f} s after '
              'its manager was killed')
        assert last - killed_at > HEARTBEAT_TIMEOUT_S - TIMEOUT_SLACK_S, \
            'the node stopped before its heartbeat timeout'
        _change(client, fqn, Transition.TRANSITION_DEACTIVATE, 'inactive')
    _no_tracebacks(node)


def _make_inactive(client, node, fqn):
    """Bring the node to inactive from whatever state the test before left it in."""
    node.wait_for_output('autostart is false')
    state = client.get_state(fqn)
    if state == 'active':
        _change(client, fqn, Transition.TRANSITION_DEACTIVATE, 'inactive')
    elif state == 'unconfigured':
        _change(client, fqn, Transition.TRANSITION_CONFIGURE, 'inactive')


def test_the_node_side_times_out_on_a_manager_that_sent_one_heartbeat(nodes):
    """A manager that dies right after its first message still leaves the node silent.

    bondpy armed the heartbeat timer on the second message only: the node kept sending
    heartbeats forever.
    """
    from bond.msg import Status
    started, client, _, _ = nodes
    node, fqn = started['watched'], f'/watched/{NODE_NAME}'
    _make_inactive(client, node, fqn)
    heartbeats = Heartbeats(client.node, '/watched/bond')
    publisher = client.publisher(Status, '/watched/bond', 1)
    _change(client, fqn, Transition.TRANSITION_ACTIVATE, 'active')

    def node_bond_matched():
        # The node's reader is known, and the publisher is matched with every reader known.
        readers = client.node.get_subscriptions_info_by_topic('/watched/bond')
        return (any(reader.node_name == NODE_NAME for reader in readers)
                and publisher.get_subscription_count() >= len(readers))

    wait_until(node_bond_matched, 10.0, "the publisher matched with the node's bond")
    heartbeat = Status(id=NODE_NAME, instance_id='manager-with-one-heartbeat', active=True,
                       heartbeat_timeout=MANAGER_BOND_TIMEOUT_S,
                       heartbeat_period=MANAGER_HEARTBEAT_S)
    heartbeat.header.stamp = client.node.get_clock().now().to_msg()
    publisher.publish(heartbeat)
    sent_at = time.monotonic()

    last = _wait_node_silent(heartbeats, heartbeat.instance_id, sent_at, sent_at,
                             'the node to stop its heartbeats')
    print(f'one heartbeat: the node stopped its heartbeats {last - sent_at:.3f} s after it')
    assert last - sent_at > HEARTBEAT_TIMEOUT_S - TIMEOUT_SLACK_S
    client.node.destroy_publisher(publisher)
    _change(client, fqn, Transition.TRANSITION_DEACTIVATE, 'inactive')


def test_a_bond_that_never_heard_its_manager_repeats_its_death_notice(nodes):
    """The manager hears the node before the node hears the manager (discovery on a busy box).

    The manager keeps one message of the bond topic, its own heartbeats among them; a node side
    that had not heard the manager went straight to dead on deactivate, sent its death notice
    once, and a manager that lost it saw the break only at its heartbeat timeout (the third
    deactivate of test_lifecycle_manager, on a loaded machine). No manager here at all: the
    node's bond is still waiting for its sister when it is deactivated.
    """
    started, client, _, _ = nodes
    node, fqn = started['watched'], f'/watched/{NODE_NAME}'
    _make_inactive(client, node, fqn)
    listener = Heartbeats(client.node, '/watched/bond')
    since = time.monotonic()
    _change(client, fqn, Transition.TRANSITION_ACTIVATE, 'active')
    wait_until(lambda: any(len(sent) >= 3 for sent in listener.by_sender(since).values()), 10.0,
               'heartbeats from the node')
    _change(client, fqn, Transition.TRANSITION_DEACTIVATE, 'inactive')
    (sent,) = listener.by_sender(since).values()
    notices = [t for t, active in sent if not active]
    assert notices and sent[-1][1] is False, 'the node must end with a death notice'
    print(f'unheard manager: {len(notices)} death notices over {notices[-1] - notices[0]:.3f} s')
    assert len(notices) >= 3, 'the death notice must repeat (one can be overwritten)'
    assert 'bond formed' not in node.output().split('bond started')[-1], \
        'no manager answered: the bond cannot have formed'


def test_ctrl_c_on_a_bonded_active_node_exits_cleanly(nodes):
    started, client, _, _ = nodes
    node, fqn = started['watched'], f'/watched/{NODE_NAME}'
    _make_inactive(client, node, fqn)
    manager = _manager_node(client, '/watched')
    bond, _ = _activate_and_form(client, fqn, manager)
    heartbeats = Heartbeats(manager, 'bond')
    _wait_heartbeat_timers_armed(heartbeats, bond)
    logged = len(node.output())
    interrupted_at = time.monotonic()
    assert node.stop(15.0) == 0, node.output()[-4000:]
    after = node.output()[logged:]
    assert 'Traceback' not in after and '[ERROR]' not in after, after[-4000:]
    # rclpy shuts the context down before the node can send a death notice: the manager sees
    # the silence after its heartbeat timeout.
    assert bond.wait_until_broken(Duration(seconds=MANAGER_BOND_TIMEOUT_S + TIMEOUT_SLACK_S))
    print(f'Ctrl-C: bond broken after {time.monotonic() - interrupted_at:.3f} s')
    _release(manager, bond)
