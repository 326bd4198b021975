"""mspr-bag-eval offline: rosbags readers + the core Localizer, matched to ground truth."""
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from scipy.spatial.transform import Rotation

from mspr_ros.camera.model import CameraModel
from mspr_ros.geometry.transforms import SceneAlignment, Transform
from mspr_ros.localizer import Localizer
from mspr_training.bags.cli import main
from mspr_training.bags.offline import alignment_overrides, evaluate_offline, GroundTruthSpec
from mspr_training.bags.offline import read_node_parameters
from mspr_training.bags.report import build_report, FrameStatus
from mspr_training.bags.report_files import write_report
from mspr_training.data import read_bag_trajectory, read_rosbag
from mspr_training.data.rosbag import typestore
from mspr_training.synth import build_world, plan_sequences, write_rosbag

IMAGE = '/camera/image_raw'
COMPRESSED = '/camera/image_raw/compressed'
GT = '/ground_truth/camera_pose'
SCENES = '/ground_truth/scene'
FRAMES = 15


@pytest.fixture(scope='module')
def world_plans():
    """Return the tiny bundle's three scenes, one 5-frame test sequence each."""
    world = build_world(seed=0, num_scenes=3)
    plans = plan_sequences(world, train_frames=1, test_frames=5, train_sequences=1,
                           test_sequences=1)
    return world, plans


def _render_bag(world_plans, path, storage, compressed=None):
    world, plans = world_plans
    write_rosbag(world, path, storage=storage, rate_hz=5.0, plans=plans,
                 camera=CameraModel.from_fov(160, 120), compressed=compressed)
    return path


@pytest.fixture(scope='module')
def mcap_bag(world_plans, tmp_path_factory) -> Path:
    """15 frames at 5 Hz, raw and lossless-compressed (PNG) images, mcap storage."""
    return _render_bag(world_plans, tmp_path_factory.mktemp('mcap') / 'bag', 'mcap', 'png')


@pytest.fixture(scope='module')
def sqlite_bag(world_plans, tmp_path_factory) -> Path:
    """Return the same recording in sqlite3 storage."""
    return _render_bag(world_plans, tmp_path_factory.mktemp('sqlite') / 'bag', 'sqlite3')


@pytest.fixture(scope='module')
def localizer(tiny_bundle_path) -> Localizer:
    """Return the tiny random-weights model on the CPU."""
    return Localizer.from_file(tiny_bundle_path, device='cpu')


def copy_bag(source: Path, target: Path, edit=lambda topic, index, raw: raw):
    """Copy a bag message by message; ``edit`` may change a raw message or drop it (None)."""
    store = typestore()
    counters = {}
    with Reader(source) as reader, Writer(target, version=8,
                                          storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {}
        for connection, log_time, raw in reader.messages():
            index = counters.get(connection.topic, 0)
            counters[connection.topic] = index + 1
            data = edit(connection.topic, index, bytes(raw))
            if data is None:
                continue
            if connection.topic not in connections:
                connections[connection.topic] = writer.add_connection(
                    connection.topic, connection.msgtype, typestore=store)
            writer.write(connections[connection.topic], log_time, data)
    return target


def _camera_poses(evaluation):
    return (np.array([f.camera_position for f in evaluation.frames]),
            np.array([f.camera_orientation for f in evaluation.frames]))


def test_both_storages_report_every_frame_with_paper_metrics(
        mcap_bag, sqlite_bag, localizer, tmp_path):
    status = main([str(mcap_bag), '--weights', str(localizer.bundle.path), '--device', 'cpu',
                   '--out', str(tmp_path / 'report'), '--write-bag', str(tmp_path / 'est.mcap'),
                   '--quiet'])
    assert status == 0
    report = json.loads((tmp_path / 'report' / 'report.json').read_text())
    assert report['mode'] == 'offline'
    assert report['counts'] == {'images': FRAMES, 'published': FRAMES, 'answered': FRAMES,
                                'dropped': 0, 'bad_images': 0, 'matched': FRAMES,
                                'unmatched': 0, 'answered_fraction': 1.0}
    assert report['ground_truth']['source'] == f'topic {GT}'
    assert report['latency']['count'] == FRAMES and report['latency']['p95_ms'] > 0
    assert {s['scene'] for s in report['metrics']['scenes']} == {'atrium', 'corridor', 'lab'}
    assert report['scene_accuracy_available'] is True
    for name in ('report.md', 'trajectory.png', 'errors.png', 'latency.png'):
        assert (tmp_path / 'report' / name).stat().st_size > 0
    # Ground truth in the report is the bag's, and each error is computed from the two poses.
    truth = read_rosbag(mcap_bag, IMAGE, pose_topic=GT, scene_topic=SCENES)
    for frame, sample in zip(report['frames'], truth):
        assert frame['stamp_ns'] == sample.stamp_ns and frame['gt_scene'] == sample.scene
        np.testing.assert_allclose(frame['gt_position'], sample.position, atol=1e-12)
        error = np.linalg.norm(np.subtract(frame['position'], frame['gt_position']))
        assert frame['position_error_m'] == pytest.approx(error, abs=1e-9)
    accuracy = np.mean([f['scene'] == f['gt_scene'] for f in report['frames']])
    assert report['metrics']['scene_accuracy'] == pytest.approx(accuracy)
    # The sqlite3 copy of the recording gives the very same estimates.
    sqlite = evaluate_offline(sqlite_bag, localizer)
    positions, orientations = _camera_poses(sqlite)
    np.testing.assert_allclose(positions, [f['camera_position'] for f in report['frames']],
                               atol=1e-9)
    np.testing.assert_allclose(orientations, [f['camera_orientation'] for f in report['frames']],
                               atol=1e-9)
    # --write-bag stores the estimates for RViz/Foxglove.
    written = read_bag_trajectory(tmp_path / 'est', pose_topic='/mspr_bag_eval/camera_pose')
    np.testing.assert_allclose(written.positions, positions, atol=1e-9)


def test_compressed_topic_gives_the_raw_topic_estimates(mcap_bag, localizer):
    raw = evaluate_offline(mcap_bag, localizer, IMAGE)
    compressed = evaluate_offline(mcap_bag, localizer, COMPRESSED)
    assert build_report(compressed).counts.answered == FRAMES
    # PNG is lossless, so the network sees identical pixels.
    for got, want in zip(_camera_poses(compressed), _camera_poses(raw)):
        np.testing.assert_allclose(got, want, atol=1e-9)


class OracleLocalizer:
    """Returns each image's true pose in its scene frame, through a non-identity alignment.

    The bag's scenes coincide with the map; the oracle pretends its scenes are rotated and
    shifted, so the evaluator must apply the bundle alignment to get the ground truth back.
    """

    def __init__(self, bag):
        self.scene_names = ['atrium', 'corridor', 'lab']
        self.alignment = SceneAlignment([1.0, -2.0, 0.5],
                                        Rotation.from_euler('z', 40, degrees=True).as_quat())
        # The bundle fields the evaluator reads; no learned error correlation (an older bundle).
        self.bundle = SimpleNamespace(path='oracle', scene_names=self.scene_names,
                                      scene_alignment=dict.fromkeys(self.scene_names,
                                                                    self.alignment),
                                      error_correlation={})
        self.truth = {}
        inverse = self.alignment.as_transform().inverse()
        for sample in read_rosbag(bag, IMAGE, pose_topic=GT, scene_topic=SCENES):
            T_scene_cam = inverse @ Transform(sample.position, sample.orientation)
            self.truth[hashlib.sha1(sample.image.tobytes()).hexdigest()] = (
                sample.scene, T_scene_cam)

    def localize(self, rgb):
        scene, pose = self.truth[hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest()]
        return SimpleNamespace(scene_name=scene, scene_confidence=1.0,
                               position=pose.translation, orientation=pose.rotation)


def test_perfect_estimates_score_zero_for_camera_and_base_ground_truth(mcap_bag):
    oracle = OracleLocalizer(mcap_bag)
    camera = build_report(evaluate_offline(mcap_bag, oracle))
    assert camera.counts.matched == FRAMES
    assert np.nanmax(camera.position_errors_m) < 1e-6
    assert np.nanmax(camera.orientation_errors_deg) < 1e-4
    assert camera.metrics.scene_accuracy == 1.0
    assert all(r == 1.0 for r in camera.metrics.recall.values())
    # Ground truth as a TF pair ending at base_link (map -> odom -> base_link): the evaluator
    # turns each camera estimate into a base pose with the bag's camera extrinsic.
    base = build_report(evaluate_offline(
        mcap_bag, oracle, ground_truth=GroundTruthSpec(frames=('map', 'base_link'))))
    assert base.evaluation.compared_frame == 'base_link'
    assert base.counts.matched == FRAMES
    assert np.nanmax(base.position_errors_m) < 1e-6
    assert np.nanmax(base.orientation_errors_deg) < 1e-4
    # The base is about 1.2 m below the camera: a real offset the comparison had to bridge.
    drop = [f.gt_position[2] - f.camera_position[2] for f in base.evaluation.frames]
    np.testing.assert_allclose(drop, -1.2, atol=0.1)


def test_bag_without_ground_truth_still_reports_trajectory(mcap_bag, localizer, tmp_path):
    bag = copy_bag(mcap_bag, tmp_path / 'images_only',
                   lambda topic, index, raw: raw if topic == IMAGE else None)
    status = main([str(bag), '--weights', str(localizer.bundle.path), '--device', 'cpu',
                   '--out', str(tmp_path / 'report'), '--quiet'])
    assert status == 0
    report = json.loads((tmp_path / 'report' / 'report.json').read_text())
    assert report['ground_truth'] is None and report['metrics'] is None
    assert report['counts']['answered'] == FRAMES and report['counts']['matched'] == 0
    assert report['plots'] == ['trajectory.png', 'latency.png']
    assert (tmp_path / 'report' / 'trajectory.png').stat().st_size > 0
    assert 'none in this bag' in (tmp_path / 'report' / 'report.md').read_text()


def test_corrupt_images_are_counted_and_the_rest_evaluated(mcap_bag, localizer, tmp_path):
    store = typestore()

    def corrupt(topic, index, raw):
        if topic == IMAGE and index == 3:  # an encoding nobody knows
            message = store.deserialize_cdr(raw, 'sensor_msgs/msg/Image')
            message.encoding = 'yuv_bogus'
            return bytes(store.serialize_cdr(message, 'sensor_msgs/msg/Image'))
        if topic == IMAGE and index == 7:  # truncated bytes: not even deserialisable
            return raw[:40]
        if topic == GT and index in (0, 1):  # ground truth starts late: frames 0, 1 unmatched
            return None
        return raw

    bag = copy_bag(mcap_bag, tmp_path / 'corrupt', corrupt)
    report = build_report(evaluate_offline(bag, localizer))
    counts = report.counts
    assert (counts.images, counts.bad_images, counts.answered) == (FRAMES, 2, FRAMES - 2)
    assert (counts.matched, counts.unmatched) == (FRAMES - 4, 2)
    frames = report.evaluation.frames
    assert frames[3].status == FrameStatus.BAD_IMAGE and 'yuv_bogus' in frames[3].error
    assert frames[7].status == FrameStatus.BAD_IMAGE and 'deserialise' in frames[7].error
    assert [f.gt_error for f in frames[:2]] == ['outside the ground-truth time range'] * 2
    files = write_report(report, tmp_path / 'report')
    assert json.loads(files.json.read_text())['counts']['bad_images'] == 2


def test_missing_requested_ground_truth_is_an_error(mcap_bag, localizer, tmp_path, capsys):
    status = main([str(mcap_bag), '--weights', str(localizer.bundle.path), '--device', 'cpu',
                   '--gt-topic', '/no/such/topic', '--out', str(tmp_path / 'r'), '--quiet'])
    assert status == 1
    error = capsys.readouterr().err
    assert str(mcap_bag) in error and '/no/such/topic' in error


def test_node_parameter_file_overrides_a_scene_alignment(mcap_bag, tmp_path):
    params = tmp_path / 'params.yaml'
    params.write_text('/**/mspr_localizer:\n  ros__parameters:\n    global_frame_id: "world"\n'
                      '    scenes:\n      atrium:\n'
                      '        map_from_scene: [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]\n')
    parameters = read_node_parameters(params)
    assert parameters['global_frame_id'] == 'world' and parameters['base_frame_id'] == 'base_link'
    overrides = alignment_overrides(parameters)
    assert list(overrides) == ['atrium']
    # The oracle's poses need its own alignment; the node's parameter replaces it for atrium
    # only, exactly as the node would, so only atrium frames move away from the truth.
    report = build_report(evaluate_offline(mcap_bag, OracleLocalizer(mcap_bag),
                                           alignment_overrides=overrides,
                                           global_frame=parameters['global_frame_id']))
    atrium = np.array([f.scene == 'atrium' for f in report.evaluation.frames])
    assert atrium.sum() == 5 and report.evaluation.global_frame == 'world'
    assert np.all(report.position_errors_m[atrium] > 0.5)
    assert np.all(report.position_errors_m[~atrium] < 1e-6)
