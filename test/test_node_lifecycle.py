"""Lifecycle over real DDS: transitions through lifecycle_msgs services, and bad weights.

Three node processes start together: one with ``autostart:=false`` driven through
configure/activate/deactivate/cleanup/re-configure, and two with broken weights files.
"""
from geometry_msgs.msg import PoseWithCovarianceStamped
from lifecycle_msgs.msg import Transition
import numpy as np
import pytest
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage

from mspr_ros.ros.conversions import rgb_to_image_msg, stamp_to_ns
from ros_harness import domain_id, NodeProcess, RELIABLE_LATCHED, RosClient, stop_all
from ros_harness import TF_STATIC_QOS

pytestmark = pytest.mark.ros
MANAGED = '/managed'
# No base <- camera TF here: camera_to_base set explicitly (the node fails closed otherwise).
BASE_PARAMS = {'min_scene_confidence': 0.0, 'max_image_age': 30.0, 'odom_frame_id': '',
               'transform_timeout': 0.5,
               'camera_to_base': [0.0, 0.0, 0.0, -1.5707963267948966, 0.0, -1.5707963267948966]}


@pytest.fixture(scope='module')
def nodes(tiny_bundle_path, tmp_path_factory):
    """Start the managed node plus two nodes whose weights are missing or garbage, and a client."""
    tmp = tmp_path_factory.mktemp('lifecycle')
    garbage = tmp / 'garbage.safetensors'
    garbage.write_bytes(b'this is not a safetensors file at all' * 10)
    missing = tmp / 'missing.safetensors'
    domain = domain_id(1)
    started = {
        'managed': NodeProcess(domain, tmp / 'managed.log', name='managed', params={
            **BASE_PARAMS, 'weights': str(tiny_bundle_path), 'autostart': False}),
        'missing': NodeProcess(domain, tmp / 'missing.log', name='missing',
                               params={'weights': str(missing)}),
        'garbage': NodeProcess(domain, tmp / 'garbage.log', name='garbage',
                               params={'weights': str(garbage)}),
    }
    client = RosClient(domain)
    try:
        yield started, client, {'missing': missing, 'garbage': garbage}
    finally:
        client.close()
        stop_all(started.values())


def _send_image(client, publisher, stamp):
    rgb = np.random.default_rng(stamp % 1000).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    publisher.publish(rgb_to_image_msg(rgb, 'rgb8', stamp, 'camera'))


def _expect_pose(client, publisher, inbox, timeout=10.0):
    """Publish images until one is answered; return the pose."""
    for _ in range(3):
        stamp = client.now_ns()
        _send_image(client, publisher, stamp)
        try:
            return inbox.wait_for(lambda m, s=stamp: stamp_to_ns(m.header.stamp) == s, timeout,
                                  'a pose')
        except AssertionError:
            continue
    raise AssertionError('no pose for three images')


def _expect_silence(client, publisher, inbox, seconds=1.5):
    """Publish an image and check that no pose answers it within ``seconds``."""
    stamp = client.now_ns()
    _send_image(client, publisher, stamp)
    with pytest.raises(AssertionError, match='timed out'):
        inbox.wait_for(lambda m: stamp_to_ns(m.header.stamp) == stamp, seconds, 'no pose')


def test_transitions_through_lifecycle_services(nodes):
    started, client, _ = nodes
    node = started['managed']
    node.wait_for_output('autostart is false')
    assert client.get_state(MANAGED) == 'unconfigured'
    poses = client.subscribe(PoseWithCovarianceStamped, f'{MANAGED}/pose', RELIABLE_LATCHED)
    static = client.subscribe(TFMessage, '/tf_static', TF_STATIC_QOS)
    images = client.publisher(Image, '/image', 5)

    assert client.change_state(MANAGED, Transition.TRANSITION_CONFIGURE)
    assert client.get_state(MANAGED) == 'inactive'
    static.wait_for(lambda m: {'atrium', 'corridor', 'lab'} <= {
        t.child_frame_id for t in m.transforms}, 10.0, 'scene frames latched at configure')
    assert images.get_subscription_count() == 0, 'inactive node must not subscribe to images'

    assert client.change_state(MANAGED, Transition.TRANSITION_ACTIVATE)
    assert client.get_state(MANAGED) == 'active'
    client.wait_for_subscribers(images)
    _expect_pose(client, images, poses)

    assert client.change_state(MANAGED, Transition.TRANSITION_DEACTIVATE)
    assert client.get_state(MANAGED) == 'inactive'
    _expect_silence(client, images, poses)

    assert client.change_state(MANAGED, Transition.TRANSITION_CLEANUP)
    assert client.get_state(MANAGED) == 'unconfigured'
    assert 'cleaned up: model released' in node.output()

    assert client.change_state(MANAGED, Transition.TRANSITION_CONFIGURE)
    assert client.change_state(MANAGED, Transition.TRANSITION_ACTIVATE)
    assert client.get_state(MANAGED) == 'active'
    client.wait_for_subscribers(images)
    _expect_pose(client, images, poses)
    assert '[ERROR]' not in node.output()


@pytest.mark.parametrize('which, problem', [('missing', 'no such bundle file'),
                                            ('garbage', 'safetensors')])
def test_bad_weights_fail_configure_naming_the_file(nodes, which, problem):
    started, client, files = nodes
    node = started[which]
    match = node.wait_for_output(r'\[ERROR\].*configure failed: (.*)')
    assert str(files[which]) in match.group(1)
    assert problem in match.group(1)
    assert client.get_state(f'/{which}') == 'unconfigured'
    errors = [line for line in node.output().splitlines() if '[ERROR]' in line]
    assert len(errors) == 1, errors
    assert node.process.poll() is None, 'a failed configure must not kill the node'
