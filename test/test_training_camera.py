"""The training camera: what each dataset states, what the network saw, what the bundle keeps."""
import json
import math

import cv2
import numpy as np
import pytest
import torch

from mspr_ros.bundle import BundleError, load_bundle, save_bundle
from mspr_ros.camera.model import CameraModel, network_camera
from mspr_ros.geometry.transforms import Transform
from mspr_ros.localizer import CameraError, Localizer
from mspr_ros.model.ms_transformer import build_model
from mspr_ros.preprocess import PreprocessingConfig
from mspr_training.bags.writer import BagWriter
from mspr_training.config import DataConfig
from mspr_training.data import DatasetError, load_rgb, read_7scenes, read_cambridge, read_rosbag
from mspr_training.data.cameras import SEVEN_SCENES_CAMERA
from mspr_training.datasets import read_split
from mspr_training.training_camera import MIXED_CAMERA_SPREAD, scene_camera

PREPROCESSING = PreprocessingConfig(resize=64, crop=56)
PINHOLE = CameraModel.from_fov(320, 240, 65.0)


def _image(path, width, height, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    cv2.imwrite(str(path), rgb)


def test_a_scene_of_one_pinhole_records_what_the_network_saw():
    record = scene_camera([PINHOLE] * 5, PREPROCESSING)
    assert record.camera == network_camera(PINHOLE, 64, 56)
    assert (record.camera.width, record.camera.height) == (56, 56)
    assert record.reason is None and record.images == 5 and record.distinct == 1


def test_unknown_distorted_and_mixed_cameras_are_reported_not_hidden():
    assert scene_camera([PINHOLE, None], PREPROCESSING).camera is None
    assert '1 of 2' in scene_camera([PINHOLE, None], PREPROCESSING).reason
    distorted = CameraModel(320, 240, 200, 200, 159.5, 119.5, 'plumb_bob', (-0.2, 0, 0, 0, 0))
    record = scene_camera([distorted] * 3, PREPROCESSING)
    assert record.camera is None and 'distortion' in record.reason
    wider = CameraModel.from_fov(320, 240, 90.0)
    mixed = scene_camera([PINHOLE, PINHOLE, wider], PREPROCESSING)
    assert mixed.spread > MIXED_CAMERA_SPREAD and 'median' in mixed.reason
    assert mixed.camera == network_camera(PINHOLE, 64, 56)  # what most images looked like


def test_7scenes_states_the_kinect_camera_scaled_to_the_images_or_its_camera_file(tmp_path):
    scene = tmp_path / 'chess'
    (scene / 'TrainSplit.txt').parent.mkdir(parents=True)
    (scene / 'TrainSplit.txt').write_text('sequence1\n')
    _image(scene / 'seq-01' / 'frame-000000.color.png', 64, 48)
    (scene / 'seq-01' / 'frame-000000.pose.txt').write_text(
        '1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n')
    camera = read_7scenes(scene)[0].camera
    assert camera.width == 64 and math.isclose(camera.fx, 58.5)
    assert camera == SEVEN_SCENES_CAMERA.scaled(64, 48)
    stated = CameraModel.from_fov(64, 48, 70.0)
    (scene / 'camera.json').write_text(json.dumps(stated.to_dict()))
    assert read_7scenes(scene)[0].camera == stated
    (scene / 'camera.json').write_text('{"width": 64}')
    with pytest.raises(Exception, match='camera.json.*not a camera'):
        read_7scenes(scene)


def test_cambridge_reads_each_images_focal_from_the_reconstruction(tmp_path):
    scene = tmp_path / 'KingsCollege'
    _image(scene / 'seq1' / 'frame00001.png', 96, 54)
    _image(scene / 'seq1' / 'frame00002.png', 96, 54, seed=1)
    (scene / 'dataset_train.txt').write_text(
        'Visual Landmark Dataset V1\nImageFile, Camera Position [X Y Z W P Q R]\n\n'
        'seq1/frame00001.png 1 2 3 1 0 0 0\nseq1/frame00002.png 1 2 3 1 0 0 0\n')
    assert read_cambridge(scene)[0].camera is None  # no reconstruction: unknown
    # The NVM lists .jpg names for the .png files, as Cambridge Landmarks ships them.
    (scene / 'reconstruction.nvm').write_text(
        'NVM_V3\n\n2\nseq1/frame00001.jpg 80.5 1 0 0 0 1 2 3 0 0\n'
        'seq1/frame00002.jpg 81.5 1 0 0 0 1 2 3 0 0\n\n0\n\n0\n')
    first, second = read_cambridge(scene)
    assert (first.camera.fx, second.camera.fx) == (80.5, 81.5)
    assert (first.camera.width, first.camera.height, first.camera.cx) == (96, 54, 47.5)
    (scene / 'reconstruction.nvm').write_text('NVM_V3\n\n1\nseq1/frame00001.jpg abc 1\n')
    with pytest.raises(Exception, match='reconstruction.nvm:4'):
        read_cambridge(scene)


def test_bag_images_carry_the_camera_info_of_their_stamp(tmp_path):
    bag = tmp_path / 'walk'
    wide = CameraModel(32, 24, 20.0, 20.0, 15.5, 11.5, 'plumb_bob', (-0.2, 0.05, 0, 0, 0))
    with BagWriter(bag) as writer:
        for topic, kind in (('/camera/image_raw', 'sensor_msgs/msg/Image'),
                            ('/camera/camera_info', 'sensor_msgs/msg/CameraInfo'),
                            ('/gt', 'geometry_msgs/msg/PoseStamped')):
            writer.add_topic(topic, kind)
        for index in range(4):
            stamp = 1_000_000_000 + index * 100_000_000
            writer.write_pose('/gt', stamp, 'map', Transform.identity())
            if index < 3:
                writer.write_camera_info('/camera/camera_info', stamp, 'camera', wide)
            size = (24, 32) if index < 3 else (48, 64)
            writer.write_image('/camera/image_raw', stamp, 'camera',
                               np.zeros((*size, 3), np.uint8))
    samples = read_rosbag(bag, '/camera/image_raw', '/gt')
    assert [s.camera for s in samples[:3]] == [wide] * 3
    assert samples[3].camera is None  # the camera_info states another image size


@pytest.fixture(scope='module')
def bundles(tiny_model_config, tmp_path_factory):
    """Save a bundle with a training camera and one exported before cameras were recorded."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config)
    folder = tmp_path_factory.mktemp('camera_bundles')
    names = ['atrium', 'corridor', 'lab']
    camera = network_camera(PINHOLE, 256, 224)
    with_camera = save_bundle(folder / 'camera.safetensors', model, tiny_model_config, names,
                              training_camera={name: camera for name in names})
    without = save_bundle(folder / 'old.safetensors', model, tiny_model_config, names)
    return with_camera, without, camera


def test_the_bundle_keeps_the_training_camera_and_refuses_a_wrong_one(bundles, tmp_path,
                                                                      tiny_model_config):
    with_camera, without, camera = bundles
    assert load_bundle(with_camera).training_camera == {n: camera for n in
                                                        ('atrium', 'corridor', 'lab')}
    assert load_bundle(without).training_camera == {}
    model = build_model(tiny_model_config)
    with pytest.raises(ValueError, match='pinhole of the 224 x 224 network input'):
        save_bundle(tmp_path / 'bad.safetensors', model, tiny_model_config,
                    ['atrium', 'corridor', 'lab'], training_camera={'lab': PINHOLE})
    # Same length, so the safetensors framing stays valid: only the camera is wrong.
    text = with_camera.read_bytes().replace(b'\\"distortion_model\\": \\"none\\"',
                                            b'\\"distortion_model\\": \\"nope\\"', 1)
    assert text != with_camera.read_bytes()
    tampered = tmp_path / 'tampered.safetensors'
    tampered.write_bytes(text)
    with pytest.raises(BundleError, match='tampered.safetensors.*training_camera'):
        load_bundle(tampered)


def test_the_localizer_reprojects_each_camera_once_and_agrees_with_resize_and_crop(bundles):
    with_camera, without, _ = bundles
    localizer = Localizer.from_file(with_camera, device='cpu')
    rng = np.random.default_rng(3)
    base = cv2.resize(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), (320, 240),
                      interpolation=cv2.INTER_CUBIC)
    plain = localizer.localize(base)
    for _ in range(5):
        reprojected = localizer.localize(base, PINHOLE)
    assert localizer.reprojection_builds == 1
    # The training camera's own images take either path to nearly the same input.
    assert np.linalg.norm(reprojected.position - plain.position) < 0.05 * (
        1.0 + np.linalg.norm(plain.position))
    localizer.localize(cv2.resize(base, (400, 300)), CameraModel.from_fov(400, 300, 80.0))
    assert localizer.reprojection_builds == 2
    old = Localizer.from_file(without, device='cpu')
    assert old.training_camera is None and 'no training camera' in old.training_camera_problem
    with pytest.raises(CameraError, match='no training camera'):
        old.localize(base, PINHOLE)
    with pytest.raises(ValueError, match='400x300.*320x240'):
        localizer.localize(base, CameraModel.from_fov(400, 300, 80.0))


def test_mixed_camera_training_reads_every_image_through_the_most_common_camera(tmp_path):
    scene = tmp_path / 'ShopFacade'
    rows, nvm = [], []
    for index, (width, height, focal) in enumerate([(96, 72, 80.0), (96, 72, 80.0),
                                                    (128, 96, 70.0)]):
        name = f'seq1/frame{index:05d}.png'
        _image(scene / name, width, height, seed=index)
        rows.append(f'{name} 0 0 0 1 0 0 0')
        nvm.append(f'{name} {focal} 1 0 0 0 0 0 0 0 0')
    (scene / 'dataset_train.txt').write_text(
        'Visual Landmark Dataset V1\nImageFile, Camera Position [X Y Z W P Q R]\n\n'
        + '\n'.join(rows) + '\n')
    (scene / 'reconstruction.nvm').write_text('NVM_V3\n\n3\n' + '\n'.join(nvm) + '\n\n0\n')
    native = read_split(DataConfig(format='cambridge', root=str(tmp_path)), 'train')
    mixed = scene_camera([s.camera for s in native['ShopFacade']], PREPROCESSING)
    assert mixed.distinct == 2 and 'median' in mixed.reason
    data = DataConfig(format='cambridge', root=str(tmp_path), camera='reproject')
    samples = read_split(data, 'train')['ShopFacade']
    reference = CameraModel(96, 72, 80.0, 80.0, 47.5, 35.5)
    assert [s.camera for s in samples] == [reference] * 3
    assert [s.source_camera is not None for s in samples] == [False, False, True]
    assert load_rgb(samples[2]).shape == (72, 96, 3)  # brought to the reference camera
    assert load_rgb(samples[0]).shape == (72, 96, 3)
    clean = scene_camera([s.camera for s in samples], PREPROCESSING)
    assert clean.reason is None and clean.camera == network_camera(reference, 64, 56)
    (scene / 'reconstruction.nvm').unlink()
    with pytest.raises(DatasetError, match='reproject.*state no camera'):
        read_split(data, 'train')
