"""The node under a Nav2 lifecycle manager, driven the way ``nav2_lifecycle_manager`` does it.

Nav2's manager (``lifecycle_manager.cpp`` with ``nav2_util::LifecycleServiceClient``) sends
each ``ChangeState`` and waits for the answer without a deadline, then asks ``GetState`` with a
2 s deadline and fails the bring-up unless the node reports the transition's goal state.
``startup`` configures, then activates, every node; ``pause``/``resume`` deactivate/activate;
``reset`` deactivates and cleans up; ``shutdown`` deactivates, cleans up and shuts down. With
``bond_timeout: 0.0`` (``config/nav2_lifecycle.yaml``) it forms no bond.

The manager here is that sequence in Python over real DDS, with the manager's deadlines, its
parameters read from ``config/nav2_lifecycle.yaml``, and images streaming while the node is
active (the GetState deadline must hold while the model runs).
"""
import threading
import time

from geometry_msgs.msg import PoseWithCovarianceStamped
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
import numpy as np
import pytest
from sensor_msgs.msg import Image
import yaml

from mspr_ros.ros.conversions import rgb_to_image_msg, stamp_to_ns
from ros_harness import domain_id, NODE_NAME, NodeProcess, RELIABLE_LATCHED, REPO, RosClient
from ros_harness import stop_all

pytestmark = [pytest.mark.ros, pytest.mark.slow]
MANAGER_CONFIG = REPO / 'config' / 'nav2_lifecycle.yaml'
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
    """What nav2_lifecycle_manager does to its nodes, over lifecycle_msgs services."""

    def __init__(self, client, node_names, bond_timeout):
        """Manage ``node_names``; bonds are not emulated, so ``bond_timeout`` must be 0.

        As nav2_util's ``LifecycleServiceClient`` does on construction, one client per service
        and node is made once and the manager blocks until the services exist (discovery has no
        deadline there; the 2 s deadline is the GetState call's).
        """
        assert bond_timeout == 0.0, 'the node has no bond: the manager must not wait for one'
        self.client = client
        self.node_names = list(node_names)
        self.get_state_latencies = []
        self._services = {}
        for node in self.node_names:
            for srv_type, suffix in ((GetState, 'get_state'), (ChangeState, 'change_state')):
                service = client.node.create_client(srv_type, f'{node}/{suffix}')
                assert service.wait_for_service(timeout_sec=DISCOVERY_LIMIT_S), \
                    f'{node}/{suffix} did not appear within {DISCOVERY_LIMIT_S:.0f} s'
                self._services[node, suffix] = service

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
        """Do as changeStateForNode: ChangeState, then GetState must report the goal state."""
        request = ChangeState.Request()
        request.transition.id = transition
        response = self._call(node, 'change_state', request, CHANGE_STATE_LIMIT_S)
        return response.success and self.get_state(node) == GOAL[transition]

    def change_state_for_all(self, transition):
        """Configure/activate in order, the other transitions in reverse order."""
        forward = transition in (Transition.TRANSITION_CONFIGURE,
                                 Transition.TRANSITION_ACTIVATE)
        names = self.node_names if forward else list(reversed(self.node_names))
        return all(self.change_state_for_node(n, transition) for n in names)

    def startup(self):
        """Configure every node, then activate every node."""
        return (self.change_state_for_all(Transition.TRANSITION_CONFIGURE)
                and self.change_state_for_all(Transition.TRANSITION_ACTIVATE))

    def pause(self):
        """Deactivate every node."""
        return self.change_state_for_all(Transition.TRANSITION_DEACTIVATE)

    def resume(self):
        """Activate every node."""
        return self.change_state_for_all(Transition.TRANSITION_ACTIVATE)

    def reset(self):
        """Deactivate, then clean up, every node."""
        return (self.change_state_for_all(Transition.TRANSITION_DEACTIVATE)
                and self.change_state_for_all(Transition.TRANSITION_CLEANUP))

    def shutdown(self):
        """Deactivate, clean up and shut down every node (reverse order)."""
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
    config = yaml.safe_load(MANAGER_CONFIG.read_text())['lifecycle_manager_mspr'][
        'ros__parameters']
    # Relative names resolve in the manager's namespace, which is the node's.
    return Nav2StyleManager(client, [f'{namespace}/{n}' for n in config['node_names']],
                            config['bond_timeout'])


def _wait_pose(inbox, since_ns, timeout=30.0):
    return inbox.wait_for(lambda m: stamp_to_ns(m.header.stamp) > since_ns, timeout,
                          'a pose from the streamed images')


def test_manager_brings_the_node_up_pauses_resets_and_shuts_it_down(managed):
    nodes, client = managed
    node = nodes['managed']
    node.wait_for_output('autostart is false')
    manager = _manager(client, '/managed')
    (name,) = manager.node_names
    assert name == f'/managed/{NODE_NAME}'
    assert manager.get_state(name) == State.PRIMARY_STATE_UNCONFIGURED, \
        'a managed node must wait for the manager, not configure itself'
    poses = client.subscribe(PoseWithCovarianceStamped, f'{name}/pose', RELIABLE_LATCHED)
    camera = ImageStream(client, '/managed/image')
    try:
        assert manager.startup(), node.output()[-3000:]
        _wait_pose(poses, client.now_ns() - 10**9)

        assert manager.pause()
        paused_at = client.now_ns()
        assert manager.get_state(name) == State.PRIMARY_STATE_INACTIVE
        assert manager.resume()
        _wait_pose(poses, paused_at)

        assert manager.reset()
        assert 'cleaned up: model released' in node.output()
        assert manager.startup(), 'a reset node must come up again'
        _wait_pose(poses, client.now_ns() - 10**9)

        assert manager.shutdown()
        assert manager.get_state(name) == State.PRIMARY_STATE_FINALIZED
    finally:
        camera.close()
    assert max(manager.get_state_latencies) < GET_STATE_TIMEOUT_S
    assert '[ERROR]' not in node.output(), node.output()[-3000:]
    # A finalized node exits cleanly on SIGINT, as a launch file ends it.
    assert node.stop(15.0) == 0, node.output()[-3000:]


def test_an_autostarting_node_makes_the_managers_bring_up_fail(managed):
    nodes, client = managed
    nodes['autostarted'].wait_active()
    manager = _manager(client, '/autostarted')
    # configure is refused from 'active': why the managed node needs autostart false.
    assert not manager.startup()
