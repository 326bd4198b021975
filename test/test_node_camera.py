"""Any camera over real DDS: the node reads ``camera_info``, reprojects into the training camera.

One node per rule, both on ``/image``: ``auto`` (the default) reads ``/camera_info`` beside it;
``strict`` runs ``camera_model: require`` on its own ``camera_info`` topic. The images are the
rendered world seen through the training camera and through a 90 deg camera with barrel
distortion (``mspr_training.synth.camera.wide_camera``). The camera frame is the base frame, so a
published pose is the network's camera pose and can be compared with the core ``Localizer``.
"""
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseWithCovarianceStamped
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image
import torch

from mspr_ros.bundle import save_bundle
from mspr_ros.camera.model import CameraModel, network_camera
from mspr_ros.localizer import Localizer
from mspr_ros.model.ms_transformer import build_model
from mspr_ros.ros.conversions import ns_to_stamp, rgb_to_image_msg, stamp_to_ns
from mspr_training.synth import build_world, plan_sequences
from mspr_training.synth.camera import wide_camera
from mspr_training.synth.render import render
from ros_harness import diagnostic_values, domain_id, NodeProcess, own_status
from ros_harness import RELIABLE_LATCHED, RosClient, stop_all

pytestmark = pytest.mark.ros
TRAINING = CameraModel.from_fov(320, 240, 65.0)
WIDE = wide_camera()
NARROW = CameraModel.from_fov(400, 300, 30.0)
NAMES = ['atrium', 'corridor', 'lab']
# camera_info_timeout: a deadline a loaded CI machine keeps; the wait ends when it lands.
PARAMS = {'min_scene_confidence': 0.0, 'max_image_age': 30.0, 'odom_frame_id': '',
          'base_frame_id': 'camera', 'fusion': 'none', 'diagnostics_period': 0.1,
          'camera_info_timeout': 2.0}


def camera_info(camera: CameraModel, stamp_ns: int) -> CameraInfo:
    """Return ``camera`` as a driver publishes it."""
    msg = CameraInfo(width=camera.width, height=camera.height,
                     distortion_model='plumb_bob' if camera.is_pinhole
                     else camera.distortion_model,
                     d=list(camera.distortion) or [0.0] * 5, k=camera.matrix().ravel().tolist())
    msg.r = np.eye(3).ravel().tolist()
    msg.p = np.hstack([camera.matrix(), np.zeros((3, 1))]).ravel().tolist()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = 'camera'
    return msg


@pytest.fixture(scope='module')
def views():
    """Render four views, each through the training camera and through the wide camera."""
    world = build_world(0, 3)
    plans = [p for p in plan_sequences(world, 6, 3, 1, 1, 'same') if p.split == 'train']
    pairs = []
    for plan in plans[:2]:
        scene = next(s for s in world.scenes if s.name == plan.scene)
        for pose in plan.poses[:2]:
            pairs.append((render(scene, pose, TRAINING, plan.lighting).rgb,
                          render(scene, pose, WIDE, plan.lighting).rgb))
    return pairs


@pytest.fixture(scope='module')
def system(tiny_model_config, tmp_path_factory):
    """Start the two nodes on a bundle whose training camera is ``TRAINING``, and a client."""
    tmp = tmp_path_factory.mktemp('camera')
    torch.manual_seed(0)
    bundle = save_bundle(tmp / 'camera.safetensors', build_model(tiny_model_config),
                         tiny_model_config, NAMES, training_camera={
                             name: network_camera(TRAINING, 256, 224) for name in NAMES})
    domain = domain_id(12)
    nodes = {'auto': NodeProcess(domain, tmp / 'auto.log', name='auto', params={
                 **PARAMS, 'weights': str(bundle)}),
             'strict': NodeProcess(domain, tmp / 'strict.log', name='strict', params={
                 **PARAMS, 'weights': str(bundle), 'camera_model': 'require',
                 'camera_info_topic': '/strict_camera/camera_info'})}
    client = RosClient(domain)
    try:
        inbox = {name: client.subscribe(PoseWithCovarianceStamped, f'/{name}/pose',
                                        RELIABLE_LATCHED) for name in nodes}
        diagnostics = client.subscribe(DiagnosticArray, '/diagnostics', 100)
        images = client.publisher(Image, '/image', 5)
        infos = {'auto': client.publisher(CameraInfo, '/camera_info', 5),
                 'strict': client.publisher(CameraInfo, '/strict_camera/camera_info', 5)}
        for node in nodes.values():
            node.wait_active()
        client.wait_for_subscribers(images)
        yield (nodes, client, inbox, diagnostics, images, infos,
               Localizer.from_file(bundle, device='cpu'))
    finally:
        client.close()
        stop_all(nodes.values())


def _status(diagnostics, node, predicate, what):
    """Wait for a status of ``node`` whose key-values satisfy ``predicate``; return it."""
    def matches(msg):
        status = own_status(msg, node)
        return status is not None and predicate(status, diagnostic_values(status))
    return own_status(diagnostics.wait_for(matches, 15.0, what), node)


def _send(client, images, rgb, info=None, camera=None):
    """Publish ``rgb`` (and, first, its camera_info) with a fresh stamp; return the stamp."""
    stamp = client.now_ns()
    # The image first: its camera_info, on another topic, lands after it, and the node waits
    # for it (camera_info_timeout) instead of reading the image with the previous camera.
    images.publish(rgb_to_image_msg(rgb, 'rgb8', stamp, 'camera'))
    if info is not None:
        info.publish(camera_info(camera, stamp))
    return stamp


def _pose(inbox, stamp):
    msg = inbox.wait_for(lambda m: stamp_to_ns(m.header.stamp) == stamp, 15.0, 'a pose')
    position = msg.pose.pose.position
    return np.array([position.x, position.y, position.z])


def test_wide_distorted_images_with_camera_info_give_the_training_cameras_poses(system, views):
    nodes, client, inbox, diagnostics, images, infos, localizer = system
    reference = [localizer.localize(train).position for train, _ in views]
    # Before any camera_info, auto resizes and crops, as before cameras were read.
    _, wide = views[0]
    stamp = _send(client, images, wide)
    assert np.allclose(_pose(inbox['auto'], stamp), localizer.localize(wide).position,
                       atol=1e-4)
    reprojected, resized = [], []
    for (_, wide), truth in zip(views, reference):
        stamp = _send(client, images, wide, infos['auto'], WIDE)
        position = _pose(inbox['auto'], stamp)
        # The node's path is the core's: the same remap into the training camera.
        assert np.allclose(position, localizer.localize(wide, WIDE).position, atol=1e-4)
        reprojected.append(np.linalg.norm(position - truth))
        resized.append(np.linalg.norm(localizer.localize(wide).position - truth))
    # Reprojected, the wide images give the training camera's answers; resized they do not.
    assert sum(reprojected) < 0.5 * sum(resized), (reprojected, resized)
    status = _status(diagnostics, 'auto', lambda s, v: 'reprojected' in v['camera'],
                     'reprojecting')
    # One remap for the camera over the whole stream, never one per frame.
    assert diagnostic_values(status)['camera reprojections built'] == '1'


def test_require_answers_nothing_without_a_fitting_camera_info_and_says_why(system, views):
    nodes, client, inbox, diagnostics, images, infos, _ = system
    _, wide = views[1]
    for count in range(1, 4):  # one at a time: each waits out camera_info_timeout first
        _send(client, images, wide)
        status = _status(diagnostics, 'strict',
                         lambda s, v, c=count: int(v['rejected no_camera_info']) >= c,
                         'no_camera_info')
    assert status.level == DiagnosticStatus.ERROR
    assert 'no camera_info on /strict_camera/camera_info' in diagnostic_values(status)['camera']
    assert 'no camera_info' in nodes['strict'].output()
    # A camera narrower than the training one cannot be brought to it: still nothing.
    _send(client, images, wide, infos['strict'], NARROW)
    status = _status(diagnostics, 'strict',
                     lambda s, v: int(v['rejected camera_coverage']) >= 1, 'camera_coverage')
    assert 'cannot cover the training field of view' in diagnostic_values(status)['camera']
    assert not inbox['strict'].snapshot()
    # With the wide camera it answers.
    stamp = _send(client, images, wide, infos['strict'], WIDE)
    _pose(inbox['strict'], stamp)
