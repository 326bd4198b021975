"""Rendered world through other cameras: distortion, screen windows, a bag through a lens.

A distorted wide lens is drawn where OpenCV projects it, screen windows never lose a pixel, and
``generate`` records the bag through another camera than the datasets'.
"""
import argparse
import dataclasses
import importlib
import json
import math

import cv2
import numpy as np
import pytest

from mspr_ros.camera.model import CameraModel
from mspr_training.data import iter_bag_images, read_rosbag
from mspr_training.data.rosbag import open_bag
from mspr_training.synth import (build_world, camera_pose, generate, Lighting, plan_path,
                                 plan_sequences, render, wide_camera)
from mspr_training.synth.cli import build_parser, main, parse_bag_camera
from mspr_training.synth.rosbag_writer import RosbagWriter
from mspr_training.synth.sequences import render_frames
from mspr_training.synth.textures import Material
from mspr_training.synth.world import Box, ROOM_FACES, Scene

RENDER = importlib.import_module('mspr_training.synth.render')
GREY = Material('', (0.5, 0.5, 0.5), None)
RED = Material('', (1.0, 0.0, 0.0), None)
#: Cameras whose rays differ from a pinhole's in each direction: barrel, pincushion, fisheye.
CAMERAS = {
    'pinhole': CameraModel.from_fov(160, 120, 65.0),
    'barrel': wide_camera(160, 120),
    'pincushion': CameraModel(160, 120, 130.0, 130.0, 79.5, 59.5, 'plumb_bob',
                              (0.25, 0.05, 0.0, 0.0, 0.0)),
    'fisheye': CameraModel(150, 120, 80.0, 80.0, 74.5, 59.5, 'equidistant',
                           (0.02, -0.01, 0.0, 0.0)),
}


def test_wide_camera_spans_its_field_of_view_through_the_distortion():
    camera = wide_camera()
    assert (camera.width, camera.height, camera.distortion_model) == (400, 300, 'plumb_bob')
    assert camera.distortion == (-0.28, 0.07, 0.0, 0.0, 0.0)
    assert camera.fx == camera.fy == pytest.approx(200.0 / 0.79)
    assert (camera.cx, camera.cy) == (199.5, 149.5)
    # The image's left and right borders see rays 45 degrees off the axis; a pinhole of the
    # same focal would see only 38.3.
    border = camera.normalized_coordinates(np.array([[-0.5, camera.cy], [399.5, camera.cy]]))
    np.testing.assert_allclose(np.degrees(np.arctan(border[:, 0])), [-45.0, 45.0], atol=1e-6)
    assert camera.horizontal_fov_deg() == pytest.approx(76.6, abs=0.05)
    assert wide_camera(320, 240, 70.0, 0.0, 0.0) == CameraModel.from_fov(320, 240, 70.0)
    with pytest.raises(ValueError, match='not monotonic|folds'):
        wide_camera(k1=-0.6, k2=0.0)


def test_wide_lens_is_drawn_where_opencv_projects_it():
    camera = wide_camera()
    marker = Box((4.9, 1.7, 2.7), (5.1, 1.9, 2.9), RED, 'marker')
    scene = Scene('test', (10.0, 8.0, 3.0), (GREY,) * 6, (marker,), (1.0, 2.0))
    pose = camera_pose((2.0, 4.0, 1.5), yaw=0.0)
    rotation, origin = pose[:3, :3], pose[:3, 3]
    result = render(scene, pose, camera)
    # Points of the marker's front face (x = 4.9, 2.9 m ahead), up and right in the image where
    # the lens bends most: each lands on the marker where OpenCV projects it.
    ys, zs = np.meshgrid(np.linspace(1.73, 1.87, 5), np.linspace(2.73, 2.87, 5))
    face = np.stack([np.full(ys.size, 4.9), ys.ravel(), zs.ravel()], axis=1)
    points = (face - origin) @ rotation
    pixels = camera.project(points)
    cols, rows = np.round(pixels).astype(int).T
    assert np.all(result.primitive_id[rows, cols] == len(ROOM_FACES))
    np.testing.assert_allclose(result.depth[rows, cols], 2.9, atol=1e-4)
    # A renderer ignoring the lens would draw the marker about 40 px further out.
    pinhole = CameraModel.pinhole(400, 300, camera.fx, camera.fy, camera.cx, camera.cy)
    straight = pinhole.project(points)
    assert np.linalg.norm(straight - pixels, axis=1).min() > 30
    cols, rows = np.round(straight).astype(int).T
    assert not np.any(result.primitive_id[rows, cols] == len(ROOM_FACES))
    # Every pixel's depth along its own ray lands on the room face it shows.
    rays = camera.ray_directions().astype(np.float64)
    hits = origin + (result.depth[..., None] * rays) @ rotation.T
    checked = 0
    for face_id, (_, axis, side) in enumerate(ROOM_FACES):
        mask = result.primitive_id == face_id
        if mask.sum() > 100:
            checked += 1
            np.testing.assert_allclose(hits[mask][:, axis], scene.size[axis] * side, atol=2e-3)
    assert checked >= 4


def full_frame(bounds, rotation, origin, camera, margin=1):
    """Return a screen window that tests every ray."""
    return slice(0, camera.height), slice(0, camera.width)


@pytest.mark.parametrize('name', sorted(CAMERAS))
def test_windowed_render_equals_full_frame_render(name, monkeypatch):
    camera = CAMERAS[name]
    world = build_world(seed=4, num_scenes=3)
    views = [(scene, pose) for index, scene in enumerate(world.scenes)
             for pose in plan_path(scene, 12, seed=index)[::4]]
    windowed = [render(scene, pose, camera, Lighting(vignetting=0.3)) for scene, pose in views]
    monkeypatch.setattr(RENDER, '_screen_window', full_frame)
    for (scene, pose), fast in zip(views, windowed):
        slow = render(scene, pose, camera, Lighting(vignetting=0.3))
        np.testing.assert_array_equal(fast.primitive_id, slow.primitive_id)
        np.testing.assert_array_equal(fast.depth, slow.depth)
        np.testing.assert_array_equal(fast.rgb, slow.rgb)
    # The views show objects up to the image borders, where a lens moves them most.
    border = np.concatenate([np.concatenate([r.primitive_id[:, [0, -1]].ravel(),
                                             r.primitive_id[[0, -1]].ravel()])
                             for r in windowed])
    assert np.count_nonzero(border >= len(ROOM_FACES)) > 20


def test_vignetting_darkens_the_corners_of_a_distorted_camera():
    camera = wide_camera(160, 120)
    scene = Scene('test', (10.0, 8.0, 3.0), (GREY,) * 6, (), (1.0, 2.0))
    pose = camera_pose((5.0, 4.0, 1.5), yaw=0.3)
    flat = render(scene, pose, camera, Lighting(vignetting=0.0)).rgb.astype(float)
    dark = render(scene, pose, camera, Lighting(vignetting=0.5)).rgb.astype(float)
    for row, col in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        np.testing.assert_allclose(dark[row, col], 0.5 * flat[row, col], atol=1.0)
    np.testing.assert_allclose(dark[59:61, 79:81], flat[59:61, 79:81], atol=1.0)


def camera_infos(bag):
    """Return the ``camera_info`` messages of a bag, read with rosbags."""
    with open_bag(bag) as reader:
        connections = [c for c in reader.connections if c.topic == '/camera/camera_info']
        return [reader.deserialize(raw, c.msgtype)
                for c, _, raw in reader.messages(connections=connections)]


def assert_camera_info(message, camera, model, coefficients):
    """Check one CameraInfo against a camera."""
    assert (message.width, message.height) == (camera.width, camera.height)
    assert message.distortion_model == model
    np.testing.assert_array_equal(message.d, coefficients)
    np.testing.assert_array_equal(message.k, camera.matrix().ravel())
    np.testing.assert_array_equal(message.r, np.eye(3).ravel())
    projection = np.hstack([camera.matrix(), np.zeros((3, 1))])
    np.testing.assert_array_equal(message.p, projection.ravel())
    assert CameraModel.from_camera_info(message.width, message.height, message.distortion_model,
                                        message.d, message.k) == camera


def test_bag_refuses_frames_of_another_camera(tmp_path):
    world = build_world(seed=1, num_scenes=1)
    plans = plan_sequences(world, 1, 1, 1, 1)
    pinhole = CameraModel.from_fov(64, 48)
    frame = next(render_frames(world, plans, pinhole))
    writer = RosbagWriter(tmp_path / 'bag', wide_camera(64, 48))
    with pytest.raises(ValueError, match='but the bag records'):
        writer.add(frame)  # same size, other lens: camera_info would lie
    with pytest.raises(ValueError, match='but the bag records'):
        writer.add(dataclasses.replace(frame, camera=None, rgb=frame.rgb[:40]))
    writer.add(dataclasses.replace(frame, camera=None))  # a bare frame of the right size
    writer.close()


def test_generate_records_the_bag_through_another_camera(tmp_path):
    options = dict(num_scenes=1, train_frames=2, test_frames=3, train_sequences=1,
                   size=(48, 36), seed=2)
    lens = wide_camera(64, 48)
    plain = generate(tmp_path / 'plain', **options)
    wide = generate(tmp_path / 'wide', bag_camera=lens, **options)
    assert plain.parameters['bag_camera'] is None
    assert wide.parameters['bag_camera'] == lens.to_dict()
    # The dataset layouts keep the dataset camera, pixel for pixel.
    images = sorted(p.relative_to(tmp_path / 'plain')
                    for p in (tmp_path / 'plain').rglob('*.png'))
    assert len(images) == 2 * 5 + 5  # cambridge colour, 7-Scenes colour and depth
    for path in images:
        np.testing.assert_array_equal(cv2.imread(str(tmp_path / 'plain' / path), -1),
                                      cv2.imread(str(tmp_path / 'wide' / path), -1))
    # Without bag_camera the bag holds the dataset camera and frames; with it, the lens.
    dataset_camera = CameraModel.from_fov(48, 36, 65.0)
    for message in camera_infos(tmp_path / 'plain/bag'):
        assert_camera_info(message, dataset_camera, 'plumb_bob', np.zeros(5))
    infos = camera_infos(tmp_path / 'wide/bag')
    assert len(infos) == 3
    for message in infos:
        assert_camera_info(message, lens, 'plumb_bob', lens.distortion)
    plain_images = [i.rgb for i in iter_bag_images(tmp_path / 'plain/bag', '/camera/image_raw')]
    wide_images = [i.rgb for i in iter_bag_images(tmp_path / 'wide/bag', '/camera/image_raw')]
    assert [i.shape for i in plain_images] == [(36, 48, 3)] * 3
    assert [i.shape for i in wide_images] == [(48, 64, 3)] * 3
    seven_scenes = tmp_path / 'plain/7scenes/atrium/seq-02'
    for index, image in enumerate(plain_images):
        colour = cv2.imread(str(seven_scenes / f'frame-{index:06d}.color.png'))
        np.testing.assert_array_equal(image, colour[..., ::-1])
    # Same poses, stamps and light: the lens's frame is the dataset frame's view through it.
    world = build_world(2, 1)
    test_plan = [p for p in plan_sequences(world, 2, 3, 1, 1) if p.split == 'test'][0]
    for index, image in enumerate(wide_images):
        expected = render(world.scenes[0], test_plan.poses[index], lens, test_plan.lighting)
        np.testing.assert_array_equal(image, expected.rgb)
    topics = ('/camera/image_raw', '/ground_truth/camera_pose')
    plain_samples = read_rosbag(tmp_path / 'plain/bag', *topics)
    wide_samples = read_rosbag(tmp_path / 'wide/bag', *topics)
    assert [s.stamp_ns for s in plain_samples] == [s.stamp_ns for s in wide_samples]
    np.testing.assert_array_equal([s.position for s in plain_samples],
                                  [s.position for s in wide_samples])
    sidecar = json.loads((tmp_path / 'wide/bag.json').read_text())
    assert sidecar['camera'] == sidecar['intrinsics'] == lens.to_dict()
    plain_sidecar = json.loads((tmp_path / 'plain/bag.json').read_text())
    assert plain_sidecar['camera'] == plain_sidecar['intrinsics'] == dataset_camera.to_dict()
    # A folder made through one bag camera is not reused for another.
    assert generate(tmp_path / 'plain', **options).cached
    assert not generate(tmp_path / 'plain', bag_camera=lens, **options).cached
    assert len(camera_infos(tmp_path / 'plain/bag')) == 3
    assert camera_infos(tmp_path / 'plain/bag')[0].width == 64


def test_cli_bag_camera(tmp_path, capsys):
    assert parse_bag_camera('wide') == wide_camera()
    assert parse_bag_camera('640x480:100') == CameraModel.from_fov(640, 480, 100.0)
    assert parse_bag_camera('640x480:100:-0.3,0.08') == wide_camera(640, 480, 100.0, -0.3, 0.08)
    for bad in ('fisheye', '640x480', '640x480:wide', '640x480:100:-0.3', '640x480:200'):
        with pytest.raises(argparse.ArgumentTypeError, match='bag camera must be'):
            parse_bag_camera(bad)
    assert '--bag-camera' in build_parser().format_help()
    out = tmp_path / 'synth'
    assert main(['--out', str(out), '--scenes', '1', '--train-frames', '1', '--test-frames', '1',
                 '--train-sequences', '1', '--size', '32x24', '--formats', 'bag',
                 '--bag-camera', '80x60:100:-0.2,0.03', '--quiet']) == 0
    assert 'rendered in' in capsys.readouterr().out
    [message] = camera_infos(out / 'bag')
    assert (message.width, message.height) == (80, 60)
    assert list(message.d) == [-0.2, 0.03, 0.0, 0.0, 0.0]
    t = math.tan(math.radians(50.0))
    focal = 40.0 / (t * (1 - 0.2 * t ** 2 + 0.03 * t ** 4))
    assert message.k[0] == pytest.approx(focal)
