"""The node under a Nav2 lifecycle manager, driven the way ``nav2_lifecycle_manager`` does it.

Nav2's manager (``lifecycle_manager.cpp`` with ``nav2_util::LifecycleServiceClient``) sends
each ``ChangeState`` and waits for the answer without a deadline, then asks ``GetState`` with a
2 s deadline and fails the bring-up unless the node reports the transition's goal state.
``startup`` configures, then activates, every node; ``pause``/``resume`` deactivate/activate;
``reset`` deactivates and cleans up; ``shutdown`` deactivates, cleans up and shuts down. With
``bond_timeout > 0`` it also bonds with each node it activated (``createBondConnection``): a
``bond_core`` bond on the topic ``bond`` with the node's name as id, a 0.1 s heartbeat and
``bond_timeout`` as heartbeat timeout, which must form within ``bond_timeout / 2`` or the
bring-up fails; it drops the bond after a deactivate, and a 200 ms timer resets every node
when a bond of the active set breaks.

The manager here is that sequence in Python over real DDS, on a node named and namespaced as
``launch/nav2_managed.launch.py`` starts Nav2's, reading ``config/nav2_lifecycle.yaml`` as its
parameter file (so rcl resolves its keys and the node names as for Nav2's), with images
streaming while the node is active (the GetState deadline must hold while the model runs). Its
bond is bondpy's ``Bond`` (``test/test_bond.py`` covers the bond on its own); in a clone
without bondpy (``test/ros_components.py``) it manages without bonds.
"""
import threading
import time

from geometry_msgs.msg import PoseWithCovarianceStamped
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
import numpy as np
import pytest
import rclpy
from rclpy.duration import Duration
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from mspr_ros.ros.conversions import rgb_to_image_msg, stamp_to_ns
from ros_components import missing, required
from ros_harness import domain_id, NODE_NAME, NodeProcess, RELIABLE_LATCHED, REPO, RosClient
from ros_harness import stop_all

pytestmark = [pytest.mark.ros, pytest.mark.slow]
MANAGER_CONFIG = REPO / 'config' / 'nav2_lifecycle.yaml'
# As launch/nav2_managed.launch.py names it.
MANAGER_NAME = 'lifecycle_manager_mspr'
# LifecycleManager::createBondConnection's heartbeat period.
BOND_HEARTBEAT_PERIOD_S = 0.1
# The node's death notice is acknowledged before its deactivate answers: the manager's side
# must be broken at once, not after its heartbeat timeout.
BOND_BREAK_PROMPT_S = 1.0
# nav2_util::LifecycleServiceClient::get_state's default deadline.
GET_STATE_TIMEOUT_S = 2.0
# The manager waits for ChangeState and for the services to appear without a deadline; a test
# needs one.
CHANGE_STATE_LIMIT_S = 120.0
DISCOVERY_LIMIT_S = 60.0
GOAL = {Transition.TRANSITION_CONFIGURE: State.PRIMARY_STATE_INACTIVE,
        Transition.TRANSITION_ACTIVATE: State.PRIMARY_STATE_ACTIVE,
        Transition.TRANSITION_DEACTIVATE: State.PRIMARY_STATE_INACTIVE,
        Transition.TRANSITION_CLEANUP: State.PRIMARY_STATE_UNCONFIGURED,
        Transition.TRANSITION_UNCONFIGURED_SHUTDOWN: State.PRIMARY_STATE_FINALIZED}


class Nav2StyleManager:
    """What nav2_lifecycle_manager does to its nodes, over lifecycle_msgs services and bonds."""

    def __init__(self, client, namespace, bonds=True):
        """Be the manager of ``namespace``, its parameters from ``config/nav2_lifecycle.yaml``.

        As Nav2's, it declares ``node_names``, ``autostart`` and ``bond_timeout`` (default 4.0)
        and resolves the node names in its own namespace. As nav2_util's
        ``LifecycleServiceClient`` does on construction, one client per service and node is
        made once and the manager blocks until the services exist (discovery has no deadline
        there; the 2 s deadline is the GetState call's). ``bonds`` false manages without bonds
        whatever ``bond_timeout`` says (no bondpy here).
        """
        self.client = client
        self.node = rclpy.create_node(
            MANAGER_NAME, namespace=namespace, context=client.context,
            cli_args=['--ros-args', '--params-file', str(MANAGER_CONFIG)])
        self.node.declare_parameter('node_names', Parameter.Type.STRING_ARRAY)
        self.node.declare_parameter('autostart', False)
        self.node.declare_parameter('bond_timeout', 4.0)
        self.node_names = list(self.node.get_parameter('node_names').value)
        self.bond_timeout = self.node.get_parameter('bond_timeout').value if bonds else 0.0
        client.executor.add_node(self.node)
        self.system_active = False
        self.get_state_latencies = []
        # Per transition: seconds from the bond's creation (after the activate and its
        # GetState) to the bond formed, and from the deactivate's answer to the bond broken.
        self.bond_formed_after = []
        self.bond_broken_after = []
        self._bonds = {}
        self._services = {}
        for node in self.node_names:
            for srv_type, suffix in ((GetState, 'get_state'), (ChangeState, 'change_state')):
                service = self.node.create_client(srv_type, f'{node}/{suffix}')
                assert service.wait_for_service(timeout_sec=DISCOVERY_LIMIT_S), \
                    f'{service.srv_name} did not appear within {DISCOVERY_LIMIT_S:.0f} s'
                self._services[node, suffix] = service

    def close(self):
        """Drop the bonds and the manager's node."""
        for node in list(self._bonds):
            self._drop_bond(node)
        self.client.executor.remove_node(self.node)
        self.node.destroy_node()

    def _call(self, node, suffix, request, deadline_s):
        future = self._services[node, suffix].call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        assert done.wait(deadline_s), f'{node}/{suffix} did not answer within {deadline_s} s'
        return future.result()

    def get_state(self, node):
        """Call GetState with the manager's 2 s deadline; return the state id."""
        started = time.monotonic()
        response = self._call(node, 'get_state', GetState.Request(), GET_STATE_TIMEOUT_S)
        self.get_state_latencies.append(time.monotonic() - started)
        return response.current_state.id

    def change_state_for_node(self, node, transition):
        """Do as changeStateForNode: ChangeState, GetState must report the goal state; bonds.

        After an activate the bond must form (``createBondConnection``); after a deactivate the
        manager drops it (``bond_map_.erase``), which here also records when the node's death
        notice broke it.
        """
        request = ChangeState.Request()
        request.transition.id = transition
        response = self._call(node, 'change_state', request, CHANGE_STATE_LIMIT_S)
        if not (response.success and self.get_state(node) == GOAL[transition]):
            return False
        if transition == Transition.TRANSITION_ACTIVATE:
            return self._create_bond(node)
        if transition == Transition.TRANSITION_DEACTIVATE and node in self._bonds:
            answered = time.monotonic()
            broken = self._bonds[node].wait_until_broken(Duration(seconds=BOND_BREAK_PROMPT_S))
            self.bond_broken_after.append(time.monotonic() - answered if broken else None)
            self._drop_bond(node)
        return True

    def _create_bond(self, node):
        """Bond with ``node`` unless bonded or bonds are off; False if none forms in time."""
        if node in self._bonds or self.bond_timeout <= 0.0:
            return True
        from bondpy.bondpy import Bond
        started = time.monotonic()
        # The bond id is the name in node_names, which must equal the node's own name.
        bond = Bond(self.node, 'bond', node)
        bond.heartbeat_timeout = float(self.bond_timeout)
        bond.heartbeat_period = BOND_HEARTBEAT_PERIOD_S
        bond.start()
        self._bonds[node] = bond
        if not bond.wait_until_formed(Duration(seconds=self.bond_timeout / 2)):
            return False
        self.bond_formed_after.append(time.monotonic() - started)
        return True

    def _drop_bond(self, node):
        """Break the bond (if the node has not) and destroy it without killing the executor.

        ``Bond.shutdown()`` alone destroys the endpoints behind the node's back, and the
        executor spinning it dies; they are destroyed through the node first.
        """
        bond = self._bonds.pop(node)
        if not bond.is_broken():
            bond.break_bond()
            # Without the node's answer the disconnect timeout (2 s) ends it.
            bond.wait_until_broken(Duration(seconds=3.0))
        self.node.destroy_subscription(bond.sub)
        self.node.destroy_publisher(bond.pub)
        if bond.is_broken():
            bond.shutdown()

    def broken_bonds(self):
        """Do as checkBondConnections: the bonded nodes whose bond broke while active."""
        if not self.system_active:
            return []
        return [node for node, bond in self._bonds.items() if bond.is_broken()]

    def change_state_for_all(self, transition):
        """Configure/activate in order, the other transitions in reverse order."""
        forward = transition in (Transition.TRANSITION_CONFIGURE,
                                 Transition.TRANSITION_ACTIVATE)
        names = self.node_names if forward else list(reversed(self.node_names))
        return all(self.change_state_for_node(n, transition) for n in names)

    def startup(self):
        """Configure every node, then activate every node."""
        self.system_active = (self.change_state_for_all(Transition.TRANSITION_CONFIGURE)
                              and self.change_state_for_all(Transition.TRANSITION_ACTIVATE))
        return self.system_active

    def pause(self):
        """Deactivate every node."""
        self.system_active = False
        return self.change_state_for_all(Transition.TRANSITION_DEACTIVATE)

    def resume(self):
        """Activate every node."""
        self.system_active = self.change_state_for_all(Transition.TRANSITION_ACTIVATE)
        return self.system_active

    def reset(self):
        """Deactivate, then clean up, every node."""
        self.system_active = False
        return (self.change_state_for_all(Transition.TRANSITION_DEACTIVATE)
                and self.change_state_for_all(Transition.TRANSITION_CLEANUP))

    def shutdown(self):
        """Deactivate, clean up and shut down every node (reverse order)."""
        self.system_active = False
        return (self.change_state_for_all(Transition.TRANSITION_DEACTIVATE)
                and self.change_state_for_all(Transition.TRANSITION_CLEANUP)
                and self.change_state_for_all(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN))


class ImageStream:
    """A camera at ~10 Hz on a background thread, as on a robot."""

    def __init__(self, client, topic):
        """Start publishing random 160x120 frames on ``topic``."""
        self.publisher = client.publisher(Image, topic, 5)
        self.client = client
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        rng = np.random.default_rng(0)
        while not self._stop.wait(0.1):
            rgb = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
            self.publisher.publish(rgb_to_image_msg(rgb, 'rgb8', self.client.now_ns(), 'cam'))

    def close(self):
        """Stop publishing."""
        self._stop.set()
        self._thread.join(5.0)


@pytest.fixture(scope='module')
def managed(tiny_bundle_path, tmp_path_factory):
    """Start a node with the manager's parameter file, and one with the default autostart.

    The manager's file sets ``autostart: false``; the second node configures and activates
    itself, which a manager cannot bring up.
    """
    tmp = tmp_path_factory.mktemp('manager')
    domain = domain_id(62)
    common = ['-p', f'weights:={tiny_bundle_path}', '-p', 'min_scene_confidence:=0.0',
              '-p', 'max_image_age:=60.0', '-p', "odom_frame_id:=''", '-p',
              'camera_to_base:=[0.0, 0.0, 0.0, -1.5707963267948966, 0.0, -1.5707963267948966]']
    nodes = {
        'managed': NodeProcess(domain, tmp / 'managed.log', namespace='/managed',
                               ros_args=['--params-file', str(MANAGER_CONFIG)] + common),
        'autostarted': NodeProcess(domain, tmp / 'autostarted.log', namespace='/autostarted',
                                   ros_args=common),
    }
    client = RosClient(domain)
    try:
        yield nodes, client
    finally:
        client.close()
        stop_all(nodes.values())


def _manager(client, namespace):
    """Return the manager of ``namespace``, bonding wherever bondpy is here or required."""
    return Nav2StyleManager(client, namespace, bonds=missing('bondpy') is None or required())


def _wait_pose(inbox, since_ns, timeout=30.0):
    return inbox.wait_for(lambda m: stamp_to_ns(m.header.stamp) > since_ns, timeout,
                          'a pose from the streamed images')


def test_manager_brings_the_node_up_pauses_resets_and_shuts_it_down(managed):
    nodes, client = managed
    node = nodes['managed']
    node.wait_for_output('autostart is false')
    manager = _manager(client, '/managed')
    camera = None
    try:
        (name,) = manager.node_names
        assert name == NODE_NAME, 'the bond id is the name in node_names: the node name'
        assert manager.get_state(name) == State.PRIMARY_STATE_UNCONFIGURED, \
            'a managed node must wait for the manager, not configure itself'
        poses = client.subscribe(PoseWithCovarianceStamped, f'/managed/{name}/pose',
                                 RELIABLE_LATCHED)
        camera = ImageStream(client, '/managed/image')
        assert manager.startup(), node.output()[-3000:]
        _wait_pose(poses, client.now_ns() - 10**9)

        # No bond broke while the model ran on the images (Nav2 would reset the set then).
        assert not manager.broken_bonds()
        assert manager.pause()
        paused_at = client.now_ns()
        assert manager.get_state(name) == State.PRIMARY_STATE_INACTIVE
        assert manager.resume()
        _wait_pose(poses, paused_at)

        assert not manager.broken_bonds()
        assert manager.reset()
        assert 'cleaned up: model released' in node.output()
        assert manager.startup(), 'a reset node must come up again'
        _wait_pose(poses, client.now_ns() - 10**9)

        assert not manager.broken_bonds()
        assert manager.shutdown()
        assert manager.get_state(name) == State.PRIMARY_STATE_FINALIZED
    finally:
        if camera is not None:
            camera.close()
        manager.close()
    assert max(manager.get_state_latencies) < GET_STATE_TIMEOUT_S
    if manager.bond_timeout > 0.0:
        # startup, resume, startup; broken by the node's deactivate in pause, reset, shutdown.
        assert len(manager.bond_formed_after) == 3
        assert len(manager.bond_broken_after) == 3
        bond_log = [line for line in node.output().splitlines() if 'bond' in line]
        assert None not in manager.bond_broken_after, \
            f'a deactivate did not break the bond at once: {manager.bond_broken_after}; ' \
            f'the node logged: {bond_log}'
        print(f'bond formed after {max(manager.bond_formed_after):.3f} s at most, broken '
              f'{max(manager.bond_broken_after):.3f} s at most after the deactivate answered')
    assert '[ERROR]' not in node.output(), node.output()[-3000:]
    # A finalized node exits cleanly on SIGINT, as a launch file ends it.
    assert node.stop(15.0) == 0, node.output()[-3000:]


def test_an_autostarting_node_makes_the_managers_bring_up_fail(managed):
    nodes, client = managed
    nodes['autostarted'].wait_active()
    manager = _manager(client, '/autostarted')
    try:
        # configure is refused from 'active': why the managed node needs autostart false.
        assert not manager.startup()
    finally:
        manager.close()
