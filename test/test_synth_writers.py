"""Round trips synth -> Cambridge / 7-Scenes / rosbag2 -> readers, and the generate CLI."""
import dataclasses
import json

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation
import yaml

from mspr_ros.camera.model import CameraModel
from mspr_training.data import (iter_bag_images, load_rgb, read_7scenes, read_bag_trajectory,
                                read_cambridge, read_rosbag)
from mspr_training.synth import build_world, generate, plan_sequences, wide_camera
from mspr_training.synth.cli import main
from mspr_training.synth.dataset_writers import CambridgeWriter, SevenScenesWriter
from mspr_training.synth.odometry_drift import OdometryDrift
from mspr_training.synth.rosbag_writer import RosbagWriter, SEQUENCE_GAP_NS, START_NS
from mspr_training.synth.sequences import render_frames

GT_TF = ('/tf', '/ground_truth/tf')


@pytest.fixture(scope='module')
def rendered():
    """Two scenes, 2 train sequences of 2 frames and 1 test sequence of 3, rendered once."""
    world = build_world(seed=3, num_scenes=2)
    plans = plan_sequences(world, train_frames=4, test_frames=3, train_sequences=2)
    camera = CameraModel.from_fov(64, 48)
    return world, camera, list(render_frames(world, plans, camera))


def frames_of(frames, scene, split):
    """Return the frames of one scene and split, in order."""
    return [f for f in frames if f.plan.scene == scene and f.plan.split == split]


def assert_same_pose(sample, pose):
    """Check a read sample against a 4 x 4 ground-truth pose to 1e-6."""
    np.testing.assert_allclose(sample.position, pose[:3, 3], atol=1e-6)
    np.testing.assert_allclose(sample.matrix()[:3, :3], pose[:3, :3], atol=1e-6)
    assert sample.orientation[3] >= 0


def test_cambridge_round_trip(rendered, tmp_path):
    world, _, frames = rendered
    writer = CambridgeWriter(tmp_path)
    for frame in frames:
        writer.add(frame)
    assert writer.close() == {'atrium': {'test': 3, 'train': 4},
                              'corridor': {'test': 3, 'train': 4}}
    for scene in world.scene_names:
        for split in ('train', 'test'):
            samples = read_cambridge(tmp_path / scene, split)
            expected = frames_of(frames, scene, split)
            assert len(samples) == len(expected)
            for sample, frame in zip(samples, expected):
                assert sample.scene == scene and sample.sequence == f'seq{frame.plan.number}'
                assert_same_pose(sample, frame.pose)
                np.testing.assert_array_equal(load_rgb(sample), frame.rgb)
    assert (tmp_path / 'atrium/dataset_test.txt').read_text().startswith(
        'Visual Landmark Dataset V1\n')


def test_cambridge_nvm_states_each_image_camera_and_pose(rendered, tmp_path):
    world, camera, frames = rendered
    writer = CambridgeWriter(tmp_path)
    for frame in frames:
        writer.add(frame)
    writer.close()
    for scene in world.scene_names:
        expected = [f for f in frames if f.plan.scene == scene]
        lines = (tmp_path / scene / 'reconstruction.nvm').read_text().split('\n')
        assert lines[:3] == ['NVM_V3', '', str(len(expected))]
        for line, frame in zip(lines[3:], expected):
            fields = line.split()
            assert fields[0] == f'seq{frame.plan.number}/frame{frame.index + 1:05d}.png'
            assert (tmp_path / scene / fields[0]).is_file()
            assert float(fields[1]) == camera.fx  # exactly: the training camera is recovered
            w, x, y, z, *centre = (float(v) for v in fields[2:9])
            # World-to-camera rotation and camera centre, as in the dataset_*.txt listings.
            np.testing.assert_allclose(Rotation.from_quat([x, y, z, w]).as_matrix(),
                                       frame.pose[:3, :3].T, atol=1e-8)
            np.testing.assert_allclose(centre, frame.pose[:3, 3], atol=1e-8)
            assert fields[9:] == ['0', '0']
        assert lines[3 + len(expected):] == ['', '0', '', '0', '']
    # NVM states one square-pixel focal per image, centred: nothing else can be written.
    with pytest.raises(ValueError, match='NVM file states only square-pixel pinholes'):
        CambridgeWriter(tmp_path / 'wide').add(dataclasses.replace(frames[0],
                                                                   camera=wide_camera(64, 48)))
    with pytest.raises(ValueError, match='does not record its camera'):
        CambridgeWriter(tmp_path / 'unknown').add(dataclasses.replace(frames[0], camera=None))


def test_7scenes_round_trip_with_depth(rendered, tmp_path):
    world, camera, frames = rendered
    writer = SevenScenesWriter(tmp_path)
    for frame in frames:
        writer.add(frame)
    writer.close()
    assert (tmp_path / 'corridor/TrainSplit.txt').read_text() == 'sequence1\nsequence2\n'
    assert (tmp_path / 'corridor/TestSplit.txt').read_text() == 'sequence3\n'
    for scene in world.scene_names:
        for split in ('train', 'test'):
            samples = read_7scenes(tmp_path / scene, split)
            expected = frames_of(frames, scene, split)
            assert [s.sequence for s in samples] == [f'seq-{f.plan.number:02d}' for f in expected]
            for sample, frame in zip(samples, expected):
                assert_same_pose(sample, frame.pose)
                np.testing.assert_array_equal(load_rgb(sample), frame.rgb)
    for scene in world.scene_names:
        stated = json.loads((tmp_path / scene / 'camera.json').read_text())
        assert stated == camera.to_dict()
        assert CameraModel.from_dict(stated) == camera
    mixed = SevenScenesWriter(tmp_path / 'mixed')
    mixed.add(frames[0])
    with pytest.raises(ValueError, match='states one camera'):
        mixed.add(dataclasses.replace(frames[1], camera=wide_camera(64, 48)))
    frame = frames[0]
    depth_path = tmp_path / 'atrium/seq-01/frame-000000.depth.png'
    depth = cv2.imread(str(depth_path), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16
    np.testing.assert_allclose(depth / 1000.0, frame.depth, atol=6e-4)


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_rosbag_round_trip(rendered, tmp_path, storage):
    world, camera, frames = rendered
    bag_path = tmp_path / 'walk'
    writer = RosbagWriter(bag_path, camera, storage=storage, compressed='png', seed=9)
    for frame in frames:
        writer.add(frame)
    metadata = writer.close()

    samples = read_rosbag(bag_path, '/camera/image_raw', pose_topic='/ground_truth/camera_pose',
                          scene_topic='/ground_truth/scene', max_gap_ns=40_000_000)
    assert len(samples) == len(frames)
    for sample, frame in zip(samples, frames):
        assert sample.scene == frame.plan.scene and sample.frame == 'camera_optical'
        assert_same_pose(sample, frame.pose)
        np.testing.assert_array_equal(sample.image, frame.rgb)
    for image, frame in zip(iter_bag_images(bag_path, '/camera/image_raw/compressed'), frames):
        np.testing.assert_array_equal(image.rgb, frame.rgb)  # PNG is lossless

    # 30 Hz inside a sequence, a 1 s gap when the next sequence starts.
    stamps = np.array([s.stamp_ns for s in samples])
    assert stamps[0] == START_NS
    steps = np.diff(stamps)
    new_sequence = np.array([a.plan is not b.plan for a, b in zip(frames[:-1], frames[1:])])
    assert np.all(steps[~new_sequence] == 33_333_333)
    assert np.all(steps[new_sequence] == 33_333_333 + SEQUENCE_GAP_NS)

    # Ground truth through TF: map -> odom (true, on /ground_truth/tf) -> base_link (drifting
    # odometry on /tf) -> camera_optical (extrinsic on /tf_static) equals the pose topics.
    via_tf = read_bag_trajectory(bag_path, frames=('map', 'camera_optical'), tf_topics=GT_TF)
    via_topic = read_bag_trajectory(bag_path, pose_topic='/ground_truth/camera_pose')
    np.testing.assert_array_equal(via_tf.stamps_ns, via_topic.stamps_ns)
    np.testing.assert_allclose(via_tf.positions, via_topic.positions, atol=1e-9)
    np.testing.assert_allclose(via_tf.orientations, via_topic.orientations, atol=1e-9)
    map_base = read_bag_trajectory(bag_path, frames=('map', 'base_link'), tf_topics=GT_TF)
    base_topic = read_bag_trajectory(bag_path, pose_topic='/ground_truth/base_pose')
    np.testing.assert_allclose(map_base.positions, base_topic.positions, atol=1e-9)
    # Odometry is not the map: odom -> base_link differs from map -> base_link, and /odom
    # carries the same odometry as /tf.
    odom_base = read_bag_trajectory(bag_path, frames=('odom', 'base_link'))
    assert np.linalg.norm(odom_base.positions - map_base.positions, axis=1).min() > 0.1
    odom_topic = read_bag_trajectory(bag_path, pose_topic='/odom')
    np.testing.assert_allclose(odom_topic.positions, odom_base.positions, atol=1e-9)
    assert odom_topic.frame_id == 'odom'
    with pytest.raises(Exception, match="frame 'map' is not in the TF tree"):
        read_bag_trajectory(bag_path, frames=('map', 'camera_optical'))
    # The odometry drifts: the true map -> odom starts at the sidecar's and moves away from it.
    map_odom = read_bag_trajectory(bag_path, frames=('map', 'odom'),
                                   tf_topics=('/ground_truth/tf',))
    drift = np.linalg.norm(map_odom.positions - map_odom.positions[0], axis=1)
    assert drift[0] == 0 and drift[-1] > 1e-3

    sidecar = json.loads((tmp_path / 'walk.json').read_text())
    assert sidecar == json.loads(json.dumps(metadata))
    assert sidecar['scenes'] == world.scene_names and sidecar['storage'] == storage
    assert sidecar['camera'] == sidecar['intrinsics'] == camera.to_dict()
    assert [s['frames'] for s in sidecar['sequences']] == [2, 2, 3, 2, 2, 3]
    assert np.linalg.norm(sidecar['T_map_odom']['position']) > 0.1
    np.testing.assert_allclose(sidecar['T_map_odom']['position'], map_odom.positions[0],
                               atol=1e-9)
    assert sidecar['odometry_drift'] == {**OdometryDrift().to_dict(), 'seed': 9}
    assert sidecar['T_map_odom_changes'] is True
    assert sidecar['T_base_camera']['position'] == [0.2, 0.0, 1.2]
    bag_metadata = yaml.safe_load((bag_path / 'metadata.yaml').read_text())
    custom = bag_metadata['rosbag2_bagfile_information']['custom_data']['mspr_synth']
    assert json.loads(custom)['T_map_odom'] == sidecar['T_map_odom']


def test_rosbag_without_drift_keeps_map_odom_constant(rendered, tmp_path):
    _, camera, frames = rendered
    writer = RosbagWriter(tmp_path / 'exact', camera, seed=9,
                          odometry_drift=OdometryDrift.none())
    for frame in frames:
        writer.add(frame)
    metadata = writer.close()
    assert metadata['T_map_odom_changes'] is False
    map_odom = read_bag_trajectory(tmp_path / 'exact', frames=('map', 'odom'),
                                   tf_topics=('/ground_truth/tf',))
    np.testing.assert_allclose(map_odom.positions, np.tile(metadata['T_map_odom']['position'],
                                                           (len(frames), 1)), atol=1e-9)
    np.testing.assert_allclose(map_odom.orientations,
                               np.tile(metadata['T_map_odom']['orientation_xyzw'],
                                       (len(frames), 1)), atol=1e-9)


def test_generate_writes_manifest_reuses_cache_and_cli_runs(tmp_path, capsys):
    options = dict(num_scenes=2, train_frames=2, test_frames=2, train_sequences=1,
                   size=(48, 36), seed=1)
    out = tmp_path / 'synth'
    manifest = generate(out, preview=True, **options)
    assert not manifest.cached
    assert manifest.scenes == ['atrium', 'corridor']
    assert manifest.counts == {'atrium': {'train': 2, 'test': 2},
                               'corridor': {'train': 2, 'test': 2}}
    stored = json.loads((out / 'manifest.json').read_text())
    assert stored['parameters']['size'] == [48, 36] and stored['counts'] == manifest.counts
    assert len(read_cambridge(out / 'cambridge/corridor', 'train')) == 2
    assert len(read_7scenes(out / '7scenes/atrium', 'test')) == 2
    bag_samples = read_rosbag(out / 'bag', '/camera/image_raw', '/ground_truth/camera_pose',
                              scene_topic='/ground_truth/scene')
    assert [s.scene for s in bag_samples] == ['atrium'] * 2 + ['corridor'] * 2
    sheet = cv2.imread(str(out / 'preview.png'))
    assert sheet.shape[0] > 2 * 36 and sheet.shape[1] == 2 * 48  # 2 scenes x 2 frames

    image = out / 'cambridge/atrium/seq1/frame00001.png'
    written = image.stat().st_mtime_ns
    again = generate(out, **options)
    assert again.cached and again.counts == manifest.counts
    assert image.stat().st_mtime_ns == written

    assert main(['--out', str(out), '--scenes', '1', '--train-frames', '2', '--test-frames',
                 '1', '--train-sequences', '1', '--size', '40x30', '--formats',
                 '7scenes', '--quiet']) == 0
    assert 'rendered in' in capsys.readouterr().out
    assert not (out / 'cambridge').exists() and not (out / 'bag').exists()
    assert read_7scenes(out / '7scenes/atrium', 'test')[0].image_path.exists()
    assert main(['--out', str(out), '--scenes', '1', '--train-frames', '2', '--test-frames',
                 '1', '--train-sequences', '1', '--size', '40x30', '--formats',
                 '7scenes', '--quiet']) == 0
    assert 'reused cached' in capsys.readouterr().out


def test_generate_refuses_folders_it_did_not_write_and_bad_arguments(tmp_path, capsys):
    (tmp_path / 'cambridge').mkdir()
    with pytest.raises(FileExistsError, match='holds no manifest.json'):
        generate(tmp_path, num_scenes=1, train_frames=1, test_frames=1, train_sequences=1,
                 size=(16, 12))
    assert main(['--out', str(tmp_path), '--scenes', '1', '--train-frames', '1',
                 '--train-sequences', '1', '--test-frames', '1', '--size', '16x12',
                 '--quiet']) == 2
    assert 'holds no manifest.json' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['--out', str(tmp_path), '--size', 'big'])
    with pytest.raises(SystemExit):
        main(['--out', str(tmp_path), '--formats', 'cambridge,hdf5'])
    with pytest.raises(ValueError, match='at least one frame per sequence'):
        generate(tmp_path / 'x', num_scenes=1, train_frames=1, train_sequences=2)


def test_site_split_is_drawn_as_the_test_walks_and_leaves_train_and_test_alone(tmp_path, capsys):
    """A site split: walks of its own, under test conditions, in both dataset layouts."""
    world = build_world(2, 1)
    base = plan_sequences(world, 4, 4, 2, 1)
    with_site = plan_sequences(world, 4, 4, 2, 1, site_frames=6, site_sequences=2)
    assert [(p.split, p.number) for p in with_site] == [
        ('train', 1), ('train', 2), ('test', 3), ('site', 4), ('site', 5)]
    for before, after in zip(base, with_site):
        np.testing.assert_array_equal(before.poses, after.poses)
        assert before.lighting == after.lighting
    test, site = with_site[2], with_site[3:]
    # Drawn like the test walk (shifted light: an exposure training never has) but on paths
    # and light of their own, so calibrating on them never sees a test frame.
    assert all(abs(p.lighting.exposure - 1.0) >= 0.25 for p in [test, *site])
    assert all(p.lighting.exposure == 1.0 for p in with_site[:2])
    assert all(not np.allclose(p.poses[:3], test.poses[:3]) and p.lighting != test.lighting
               for p in site)
    with pytest.raises(ValueError, match='site'):
        plan_sequences(world, 4, 4, 2, 1, site_frames=1, site_sequences=2)

    out = tmp_path / 'synth'
    options = dict(num_scenes=1, train_frames=2, test_frames=2, train_sequences=1,
                   size=(40, 30), seed=2, formats=('cambridge', '7scenes'))
    plain = generate(out, **options)
    assert 'site_frames' not in plain.parameters, 'worlds rendered before stay reusable'
    manifest = generate(out, site_frames=3, **options)
    assert not manifest.cached and manifest.counts == {'atrium': {'train': 2, 'test': 2,
                                                                  'site': 3}}
    assert len(read_cambridge(out / 'cambridge/atrium', 'site')) == 3
    assert (out / '7scenes/atrium/SiteSplit.txt').read_text() == 'sequence3\n'
    assert len(read_7scenes(out / '7scenes/atrium', 'site')) == 3
    assert len(read_7scenes(out / '7scenes/atrium', 'test')) == 2
    assert main(['--out', str(out), '--scenes', '1', '--train-frames', '2', '--test-frames',
                 '2', '--train-sequences', '1', '--size', '40x30', '--formats',
                 'cambridge,7scenes', '--seed', '2', '--site-frames', '3', '--quiet']) == 0
    assert 'reused cached' in capsys.readouterr().out
