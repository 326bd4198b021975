"""mspr-bag-eval on a recording of another camera: camera_info read offline, replayed live.

The bag is the rendered world's test walk seen through a distorted wide camera
(``wide_camera``, 160 x 120); the bundle records a 65 deg pinhole as its training camera. The
offline evaluator must read each image as the node would (``camera_model``), and the live
replay must hand the node the bag's ``camera_info``, so that both give the same poses.
"""
import json

import numpy as np
import pytest
import torch

from mspr_ros.bundle import save_bundle
from mspr_ros.camera.model import CameraModel, network_camera
from mspr_ros.localizer import Localizer
from mspr_ros.model.ms_transformer import build_model
from mspr_training.bags.cli import main
from mspr_training.bags.offline import default_params_file, evaluate_offline
from mspr_training.bags.offline import read_node_parameters
from mspr_training.bags.report import FrameStatus
from mspr_training.data.rosbag import iter_bag_images
from mspr_training.synth import build_world, plan_sequences, write_rosbag
from mspr_training.synth.camera import wide_camera
from ros_harness import domain_id

WIDE = wide_camera(160, 120)
TRAINING = CameraModel.from_fov(160, 120, 65.0)
OVERRIDES = {'min_scene_confidence': '0.0'}


@pytest.fixture(scope='module')
def recording(tmp_path_factory, tiny_model_config):
    """Write a 5 Hz bag of 9 wide-camera frames and a bundle with a training camera."""
    folder = tmp_path_factory.mktemp('camera_bag')
    world = build_world(seed=0, num_scenes=3)
    plans = plan_sequences(world, train_frames=1, test_frames=3, train_sequences=1,
                           test_sequences=1)
    write_rosbag(world, folder / 'bag', storage='mcap', rate_hz=5.0, plans=plans, camera=WIDE)
    torch.manual_seed(0)
    names = ['atrium', 'corridor', 'lab']
    bundle = save_bundle(folder / 'camera.safetensors', build_model(tiny_model_config),
                         tiny_model_config, names, training_camera={
                             name: network_camera(TRAINING, 256, 224) for name in names})
    images = [image.rgb for image in iter_bag_images(folder / 'bag', '/camera/image_raw')]
    return folder / 'bag', bundle, images


def _offline(bag, bundle, **parameters):
    values = read_node_parameters(default_params_file(), overrides={
        **OVERRIDES, **{name: json.dumps(value) for name, value in parameters.items()}})
    return evaluate_offline(bag, Localizer.from_file(bundle, device='cpu'), parameters=values)


def test_offline_reads_each_image_with_the_bags_camera_info_by_the_nodes_rule(recording):
    bag, bundle, images = recording
    localizer = Localizer.from_file(bundle, device='cpu')
    auto = _offline(bag, bundle)
    assert [f.status for f in auto.frames] == [FrameStatus.ANSWERED] * len(images)
    moved = 0
    for frame, rgb in zip(auto.frames, images):
        np.testing.assert_allclose(frame.scene_position, localizer.localize(rgb, WIDE).position,
                                   atol=1e-6)
        moved += not np.allclose(frame.scene_position, localizer.localize(rgb).position,
                                 atol=1e-3)
    assert moved == len(images)  # the reprojection changed every answer
    ignored = _offline(bag, bundle, camera_model='ignore')
    for frame, rgb in zip(ignored.frames, images):
        np.testing.assert_allclose(frame.scene_position, localizer.localize(rgb).position,
                                   atol=1e-6)
    strict = _offline(bag, bundle, camera_model='require',
                      camera_info_topic='/elsewhere/camera_info')
    assert [f.status for f in strict.frames] == [FrameStatus.DROPPED] * len(images)
    assert 'no camera_info on /elsewhere/camera_info' in strict.frames[0].error


@pytest.mark.ros
def test_live_replay_gives_the_node_the_bags_camera_info(recording, tmp_path):
    bag, bundle, _ = recording
    out = tmp_path / 'live'
    status = main([str(bag), '--weights', str(bundle), '--live', '--device', 'cpu',
                   *[f'--param={name}:={value}' for name, value in OVERRIDES.items()],
                   '--out', str(out), '--quiet', '--domain-id', str(domain_id(14))])
    assert status == 0, (out / 'node.log').read_text()[-3000:]
    report = json.loads((out / 'report.json').read_text())
    assert report['counts']['answered'] == 9, report['counts']
    assert 'reprojected' in report['node_diagnostics']['camera']
    offline = _offline(bag, bundle)
    for live, reference in zip(report['frames'], offline.frames):
        assert live['stamp_ns'] == reference.stamp_ns
        np.testing.assert_allclose(live['camera_position'], reference.camera_position,
                                   atol=1e-4, rtol=0)
