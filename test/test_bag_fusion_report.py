"""mspr-bag-eval offline: per-frame vs fused (the node's map -> odom fusion replayed on a bag)."""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from test_bag_eval_offline import copy_bag, OracleLocalizer

from mspr_ros.camera.model import CameraModel
from mspr_ros.estimation.error_correlation import ErrorCorrelation
from mspr_ros.estimation.fusion import FusionConfig
from mspr_ros.localizer import Localizer
from mspr_training.bags.cli import main
from mspr_training.bags.fusion_compare import (config_dict, coverage_2sigma, describe_model,
                                               jitter_rms)
from mspr_training.bags.fusion_replay import fusion_config, replay_fusion
from mspr_training.bags.offline import (default_params_file, evaluate_offline, GroundTruthSpec,
                                        load_ground_truth, localize_images, match_ground_truth,
                                        NODE_DEFAULTS, read_bag_transforms, read_node_parameters,
                                        scene_alignments)
from mspr_training.bags.report import build_report
from mspr_training.data.rosbag import iter_bag_images
from mspr_training.synth import build_world, plan_sequences, write_rosbag
from mspr_training.synth.odometry_drift import OdometryDrift
from mspr_training.synth.rosbag_writer import RosbagWriter
from mspr_training.synth.writers import write_frames

BASE_TRUTH = GroundTruthSpec(frames=('map', 'base_link'))
FRAMES = 15
NOMINAL = 0.7385


@pytest.fixture(scope='module')
def drifting_bag(tmp_path_factory) -> Path:
    """15 frames at 5 Hz over three scenes; /tf odom -> base_link drifts (the default model)."""
    world = build_world(seed=0, num_scenes=3)
    plans = plan_sequences(world, train_frames=1, test_frames=5, train_sequences=1,
                           test_sequences=1)
    path = tmp_path_factory.mktemp('drift') / 'bag'
    metadata = write_rosbag(world, path, rate_hz=5.0, plans=plans,
                            camera=CameraModel.from_fov(160, 120))
    assert metadata['T_map_odom_changes']  # the odometry really drifts
    return path


@pytest.fixture(scope='module')
def exact_odometry_bag(tmp_path_factory) -> Path:
    """Render the same 15 frames with perfect odometry: fused errors are the frames' own."""
    world = build_world(seed=0, num_scenes=3)
    plans = plan_sequences(world, train_frames=1, test_frames=5, train_sequences=1,
                           test_sequences=1)
    camera = CameraModel.from_fov(160, 120)
    path = tmp_path_factory.mktemp('exact') / 'bag'
    writer = RosbagWriter(path, camera, rate_hz=5.0, seed=world.seed,
                          odometry_drift=OdometryDrift.none())
    write_frames(world, plans, camera, [(writer, ('test',))])
    writer.close()
    return path


@pytest.fixture(scope='module')
def localizer(tiny_bundle_path) -> Localizer:
    """Return the tiny random-weights model on the CPU."""
    return Localizer.from_file(tiny_bundle_path, device='cpu')


def test_jitter_is_the_rms_of_the_change_of_the_error():
    truth = np.array([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0], [0.9, 1.2, 0.0]])
    estimate = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    identity = np.tile([0.0, 0.0, 0.0, 1.0], (3, 1))
    # Changes differ by (0.1, 0, 0) then (0, -0.2, 0): RMS sqrt((0.01 + 0.04) / 2).
    position, rotation = jitter_rms(estimate, identity, truth, identity)
    assert position == pytest.approx(math.sqrt(0.025)) and rotation == pytest.approx(0.0)
    # A constant offset (position and orientation) is no jitter, whatever the true motion.
    turning = Rotation.from_euler('zx', [[0, 0], [30, 5], [75, -10]], degrees=True)
    offset = Rotation.from_euler('y', 4, degrees=True)
    assert jitter_rms(truth + [0.3, -0.2, 0.1], (offset * turning).as_quat(), truth,
                      turning.as_quat()) == pytest.approx((0.0, 0.0), abs=1e-9)
    # Yaw errors 0, 3, 7 degrees: changes of 3 and 4 degrees, RMS sqrt((9 + 16) / 2).
    yawed = Rotation.from_euler('z', [[0], [3], [7]], degrees=True) * turning
    assert jitter_rms(truth, yawed.as_quat(), truth, turning.as_quat())[1] == pytest.approx(
        math.sqrt(12.5))
    assert all(math.isnan(v) for v in jitter_rms(truth[:1], identity[:1], truth[:1],
                                                 identity[:1]))


def test_coverage_counts_errors_inside_the_two_sigma_ellipsoid():
    truth = np.zeros((4, 3))
    identity = np.tile([0.0, 0.0, 0.0, 1.0], (4, 1))
    estimate = np.array([[1.0, 0, 0], [0, 1.9, 0], [0, 0, 2.1], [3.0, 0, 0]])
    covariances = np.tile(np.eye(6), (4, 1, 1))
    assert coverage_2sigma(estimate, identity, truth, identity, covariances) == pytest.approx(
        {'position': 0.5, 'rotation': 1.0})
    # Only the 3x3 position block counts; a wider x variance takes the 3 m error in (9/4 <= 4).
    covariances[3, 0, 0] = 4.0
    covariances[:, 3:, 3:] = 1e-9 * np.eye(3)
    assert coverage_2sigma(estimate, identity, truth, identity,
                           covariances)['position'] == pytest.approx(0.75)


def test_rotation_coverage_uses_the_rotation_block_and_the_map_axes():
    truth = np.tile([0.0, 0.0, 0.0, 1.0], (4, 1))
    # Errors of 0.1, 0.19, 0.21 and 0.3 rad, about z, x, y and z.
    estimate = Rotation.from_rotvec([[0, 0, 0.1], [0.19, 0, 0], [0, 0.21, 0],
                                     [0, 0, 0.3]]).as_quat()
    covariances = np.tile(np.diag([1e-9] * 3 + [0.01] * 3), (4, 1, 1))  # 0.1 rad per axis
    positions = np.zeros((4, 3))
    assert coverage_2sigma(positions, estimate, positions, truth, covariances) == pytest.approx(
        {'position': 1.0, 'rotation': 0.5})
    # A wider yaw variance takes the 0.3 rad yaw error in; roll and pitch stay as they were.
    covariances[:, 5, 5] = 0.04
    assert coverage_2sigma(positions, estimate, positions, truth,
                           covariances)['rotation'] == pytest.approx(0.75)
    # The error is about the map's axes (the covariance's): with the truth turned 90 degrees
    # about z, an error about the map's x is judged by the x variance, not the body's.
    turned = Rotation.from_euler('z', np.full((4, 1), 90.0), degrees=True)
    estimate = (Rotation.from_rotvec([0.19, 0.0, 0.0]).inv() * turned).as_quat()
    for tight, inside in ((3, 0.0), (4, 1.0)):
        variances = np.ones(6)
        variances[tight] = 1e-3
        covariances = np.tile(np.diag(variances), (4, 1, 1))
        assert coverage_2sigma(positions, estimate, positions, turned.as_quat(),
                               covariances)['rotation'] == inside


def test_fusion_settings_follow_the_node_parameters():
    assert fusion_config({}) == FusionConfig()
    assert fusion_config({'fusion': 'none', 'fusion.window_s': 3.0}) is None
    config = fusion_config({'fusion': 'window', 'fusion.window_s': 3.0, 'two_d_mode': True})
    assert config == FusionConfig(window_s=3.0, two_d=True)
    with pytest.raises(ValueError, match='fusion'):
        fusion_config({'fusion': 'kalman'})


def test_error_correlation_follows_the_node_parameters_and_the_bundle():
    learned = ErrorCorrelation(2.0, 0.5, None, 0.2, 'fitted')
    bundle = SimpleNamespace(scene_names=['atrium', 'lab'], error_correlation={'atrium': learned})
    # 'bundle' (the default): the learned model, one frame's worth where none was learned.
    config = fusion_config({}, bundle)
    assert config.error_correlation == {'atrium': learned, 'lab': ErrorCorrelation.one_frame()}
    assert config.default_correlation == ErrorCorrelation.one_frame()
    timed = fusion_config({'fusion.error_correlation': 'time', 'fusion.error_correlation_s': 0.5},
                          bundle)
    assert timed.error_correlation == dict.fromkeys(['atrium', 'lab'],
                                                    ErrorCorrelation.from_time(0.5))
    assert timed.default_correlation == ErrorCorrelation.from_time(0.5)
    independent = fusion_config({'fusion.error_correlation': 'independent'}, bundle)
    assert set(independent.error_correlation.values()) == {ErrorCorrelation.independent()}
    assert independent.default_correlation == ErrorCorrelation.independent()
    # An older bundle (no learned model) or none at all: nothing claims more than one frame.
    assert fusion_config({}, SimpleNamespace(scene_names=['lab'])).error_correlation == {
        'lab': ErrorCorrelation.one_frame()}
    with pytest.raises(ValueError, match='error_correlation_s'):
        fusion_config({'fusion.error_correlation': 'time'}, bundle)
    with pytest.raises(ValueError, match='error correlation mode'):
        fusion_config({'fusion.error_correlation': 'learned'}, bundle)
    # A bundle with a model per block: the fusion gets it whole; the report names both blocks.
    blocks = ErrorCorrelation(2.0, 0.5, None, 0.2, 'fitted',
                              rotation=ErrorCorrelation(0.5, 0.1, None, 0.0, 'fitted'))
    per_block = fusion_config({}, SimpleNamespace(scene_names=['atrium'],
                                                  error_correlation={'atrium': blocks}))
    assert per_block.error_correlation == {'atrium': blocks}
    assert describe_model(blocks.to_dict()) == (
        'position fitted: length 2 m, angle 28.6 deg, time ∞, floor 0.2; rotation fitted: '
        'length 0.5 m, angle 5.73 deg, time ∞, floor 0')


def test_report_compares_per_frame_and_fused_on_the_same_frames(
        drifting_bag, localizer, tmp_path, capsys):
    # The random tiny model is never confident: let every frame through the scene gate.
    status = main([str(drifting_bag), '--weights', str(localizer.bundle.path), '--device', 'cpu',
                   '--gt-frames', 'map', 'base_link', '--out', str(tmp_path / 'r'), '--quiet',
                   '--param', 'min_scene_confidence:=0.0'])
    assert status == 0 and 'fused' in capsys.readouterr().out
    document = json.loads((tmp_path / 'r' / 'report.json').read_text())
    block = document['per_frame_vs_fused']
    assert block['compared_frame'] == 'base_link'
    assert block['rejected_by_node'] == {}
    per_frame, fused = block['per_frame'], block['fused']
    assert per_frame['frames'] == fused['frames'] == document['counts']['matched'] == FRAMES
    for row in (per_frame, fused):
        values = [*row['position_m'].values(), *row['orientation_deg'].values(),
                  *row['jitter'].values(), *row['coverage_2sigma'].values()]
        assert all(v is not None and math.isfinite(v) for v in values)
        assert set(row['coverage_2sigma']) == {'position', 'rotation'}
        for key, inside in row['coverage_2sigma'].items():
            assert row['coverage_minus_nominal_points'][key] == pytest.approx(
                100 * (inside - NOMINAL))
    # The per-frame row is the report's own base-pose accuracy (same frames, same errors).
    assert per_frame['position_m']['median'] == pytest.approx(document['ape']['position_m'][
        'median'])
    ratios = block['ratios_fused_over_per_frame']
    assert ratios['p95_position'] == pytest.approx(fused['position_m']['p95']
                                                   / per_frame['position_m']['p95'])
    assert ratios['p95_orientation'] == pytest.approx(fused['orientation_deg']['p95']
                                                      / per_frame['orientation_deg']['p95'])
    assert ratios['jitter_position_m'] == pytest.approx(fused['jitter']['position_m']
                                                        / per_frame['jitter']['position_m'])
    # The shipped parameter file's values; the tiny bundle learned no correlation, so every
    # scene falls back to one frame's worth, and the report says so.
    assert block['source'] == 'replay'
    assert block['config'] == json.loads(json.dumps(config_dict(fusion_config(
        read_node_parameters(default_params_file()), localizer.bundle))))
    correlation = block['error_correlation']
    assert correlation['mode'] == 'bundle'
    assert correlation['fallback_scenes'] == ['atrium', 'corridor', 'lab']
    assert all(model['source'] == 'one_frame' and model['fallback']
               for model in correlation['scenes'].values())
    markdown = (tmp_path / 'r' / 'report.md').read_text()
    assert 'inside 2σ rotation' in markdown
    assert '- lab: no learned model in the bundle, fallback' in markdown
    assert '## Per-frame vs fused' in (tmp_path / 'r' / 'report.md').read_text()
    # fusion: none, as the node would run: no fused block, and a note saying so.
    assert main([str(drifting_bag), '--weights', str(localizer.bundle.path), '--device', 'cpu',
                 '--gt-frames', 'map', 'base_link', '--out', str(tmp_path / 'none'), '--quiet',
                 '--param', 'fusion:=none', '--param', 'min_scene_confidence:=0.0']) == 0
    document = json.loads((tmp_path / 'none' / 'report.json').read_text())
    assert document['per_frame_vs_fused'] is None
    assert any('fusion: none' in note for note in document['notes'])
    assert 'Per-frame vs fused' not in (tmp_path / 'none' / 'report.md').read_text()


def test_perfect_frames_stay_close_through_drifting_odometry(drifting_bag):
    oracle = OracleLocalizer(drifting_bag)
    # The oracle's bundle has no covariance calibration: the node could not publish, so no block.
    plain = evaluate_offline(drifting_bag, oracle, ground_truth=BASE_TRUTH)
    assert plain.fusion is None and any('calibration' in note for note in plain.notes)
    evaluation = evaluate_offline(drifting_bag, oracle, ground_truth=BASE_TRUTH,
                                  parameters={'covariance.mode': 'fixed'})
    block = evaluation.fusion
    assert block['per_frame']['position_m']['p95'] < 1e-6
    # Samples carried through the drifting odometry: centimetres, not the odom frame's metres.
    assert 0.0 < block['fused']['position_m']['p95'] < 0.1
    assert block['fused']['orientation_deg']['p95'] < 2.0


def test_bag_without_odometry_gives_no_fused_block_and_says_why(drifting_bag, localizer,
                                                                tmp_path):
    bag = copy_bag(drifting_bag, tmp_path / 'no_odom', lambda topic, index, raw:
                   None if topic == '/tf' else raw)
    report = build_report(evaluate_offline(bag, localizer))  # camera-pose ground truth topic
    assert report.counts.matched == FRAMES
    assert report.evaluation.fusion is None
    assert report.to_dict()['per_frame_vs_fused'] is None
    notes = report.evaluation.notes
    assert len(notes) == 1 and 'odom' in notes[0] and 'base_link' in notes[0]
    assert 'absent' in report.to_markdown()


class OutlierOracle(OracleLocalizer):
    """The oracle, except that one frame is regressed 6 m away along x."""

    def __init__(self, bag, outlier: int):
        super().__init__(bag)
        self.calls, self.outlier = 0, outlier

    def localize(self, rgb):
        result = super().localize(rgb)
        if self.calls == self.outlier:
            result.position = np.asarray(result.position) + [6.0, 0.0, 0.0]
        self.calls += 1
        return result


def test_replay_runs_the_node_gates_before_the_fusion(drifting_bag):
    fixed = {'covariance.mode': 'fixed'}
    ungated = evaluate_offline(drifting_bag, OutlierOracle(drifting_bag, outlier=7),
                               ground_truth=BASE_TRUTH, parameters=fixed).fusion
    assert ungated['rejected_by_node'] == {}
    assert ungated['per_frame']['frames'] == FRAMES
    assert ungated['per_frame']['position_m']['p95'] > 1.0  # the outlier is published
    gated = evaluate_offline(drifting_bag, OutlierOracle(drifting_bag, outlier=7),
                             ground_truth=BASE_TRUTH,
                             parameters={**fixed, 'max_jump_translation': 1.0}).fusion
    # As the node: the jump gate keeps the outlier out of both streams, and says so.
    assert gated['rejected_by_node'] == {'jump_translation': 1}
    assert gated['per_frame']['frames'] == gated['fused']['frames'] == FRAMES - 1
    assert gated['per_frame']['position_m']['p95'] < 1e-6
    assert gated['fused']['position_m']['p95'] < 0.1
    # The scene gate too: a confidence of 1 passes 0.99; allowing one scene drops the others.
    only_lab = evaluate_offline(drifting_bag, OracleLocalizer(drifting_bag),
                                ground_truth=BASE_TRUTH,
                                parameters={**fixed, 'allowed_scenes': ['lab']}).fusion
    assert only_lab['rejected_by_node'] == {'scene_not_allowed': 2 * FRAMES // 3}


class BiasedOracle(OracleLocalizer):
    """The oracle with a bias every frame shares: 1 sigma along x and 1 sigma of yaw.

    A regressor's error is a function of the view, and a scene-wide bias is its part that no
    number of frames averages out: frames with such errors are not independent measurements.
    """

    POSITION_STDDEV, ORIENTATION_STDDEV = 0.2, 0.01

    def __init__(self, bag, learned):
        super().__init__(bag)
        self.bundle.error_correlation = learned

    def localize(self, rgb):
        result = super().localize(rgb)
        result.position = np.asarray(result.position) + [self.POSITION_STDDEV, 0.0, 0.0]
        result.orientation = (Rotation.from_rotvec([0.0, 0.0, self.ORIENTATION_STDDEV])
                              * Rotation.from_quat(result.orientation)).as_quat()
        return result


def _biased_parameters(mode: str) -> dict:
    """Return the node's parameters for the biased oracle, with the correlation ``mode``."""
    # The rendered test sequences jump metres between frames: a window that keeps them all,
    # and no odometry drift to add (the bag's odometry is exact).
    return {'covariance.mode': 'fixed',
            'covariance.position_stddev': BiasedOracle.POSITION_STDDEV,
            'covariance.orientation_stddev': BiasedOracle.ORIENTATION_STDDEV,
            'fusion.window_distance_m': 100.0, 'fusion.odometry_drift_per_m': 0.0,
            'fusion.odometry_rotation_drift_per_m': 0.0, 'fusion.error_correlation': mode}


def test_learned_correlation_keeps_the_fused_coverage_that_independence_loses(
        exact_odometry_bag, tmp_path):
    # What mspr-export would learn of such a regressor: errors that stay alike over the whole
    # scene (floor 0.9). The lab learned nothing (an older export): one frame's worth.
    shared = ErrorCorrelation(100.0, 10.0, None, 0.9, 'fitted')
    learned = {'atrium': shared, 'corridor': shared}
    blocks = {mode: evaluate_offline(exact_odometry_bag,
                                     BiasedOracle(exact_odometry_bag, learned),
                                     ground_truth=BASE_TRUTH,
                                     parameters=_biased_parameters(mode)).fusion
              for mode in ('bundle', 'independent')}
    for block in blocks.values():
        # Each frame's own error is its 1-sigma bias: inside 2 sigma, position and rotation.
        assert block['per_frame']['coverage_2sigma'] == {'position': 1.0, 'rotation': 1.0}
    # Counting the frames as independent shrinks the covariance about the window's size while
    # the bias stays: most fused frames fall outside 2 sigma. The learned model counts the
    # window of one scene as about one frame (scenes are independent of each other, and the
    # window spans up to three): every fused frame stays inside.
    assert blocks['bundle']['fused']['coverage_2sigma'] == {'position': 1.0, 'rotation': 1.0}
    for key in ('position', 'rotation'):
        assert blocks['independent']['fused']['coverage_2sigma'][key] < 0.5
        assert blocks['independent']['fused']['coverage_minus_nominal_points'][key] < -20.0
    # The estimates are the same; only what the covariance claims differs.
    assert blocks['bundle']['fused']['position_m'] == pytest.approx(
        blocks['independent']['fused']['position_m'], abs=0.02)
    # The report states each scene's model.
    statement = blocks['bundle']['error_correlation']
    assert statement['fallback_scenes'] == ['lab']
    assert statement['scenes']['atrium'] == {**shared.to_dict(), 'fallback': False}
    assert statement['scenes']['lab']['source'] == 'one_frame'
    assert {model['source'] for model in
            blocks['independent']['error_correlation']['scenes'].values()} == {'independent'}
    evaluation = evaluate_offline(exact_odometry_bag, BiasedOracle(exact_odometry_bag, learned),
                                  ground_truth=BASE_TRUTH, parameters=_biased_parameters('bundle'))
    markdown = build_report(evaluation).to_markdown()
    assert '`fusion.error_correlation: bundle`' in markdown
    assert ('- atrium: learned (fitted: length 100 m, angle 573 deg, time ∞, floor 0.9)'
            in markdown)
    assert ("- lab: no learned model in the bundle, fallback: a window worth one frame's"
            in markdown)


def test_replay_tells_the_fusion_each_frame_scene(exact_odometry_bag):
    # The atrium learned independent errors, the corridor errors that never decorrelate: in one
    # replay, the atrium's window shrinks the covariance as 'independent' does, the corridor's
    # does not (its frames add nothing to each other, only to the atrium's).
    learned = {'atrium': ErrorCorrelation(0.0, 0.0, 0.0, 0.0, 'fitted'),
               'corridor': ErrorCorrelation(None, None, None, 1.0, 'fitted')}
    oracle = BiasedOracle(exact_odometry_bag, learned)
    transforms = read_bag_transforms(exact_odometry_bag)
    alignments = scene_alignments(oracle)
    records = localize_images(iter_bag_images(exact_odometry_bag, '/camera/image_raw'), oracle,
                              alignments)
    records = match_ground_truth(records, load_ground_truth(exact_odometry_bag, BASE_TRUTH),
                                 transforms)

    def shrink(mode):
        """Return scene -> fused / per-frame position variance of each published frame."""
        parameters = {**NODE_DEFAULTS, **_biased_parameters(mode)}
        replay = replay_fusion(records, transforms, oracle, alignments, parameters,
                               fusion_config(parameters, oracle.bundle))
        ratios = {}
        for index, fused, own in zip(replay.frames, replay.fused.covariances,
                                     replay.per_frame.covariances):
            ratios.setdefault(records[index].scene, []).append(
                np.trace(fused[:3, :3]) / np.trace(own[:3, :3]))
        return ratios

    bundle, independent = shrink('bundle'), shrink('independent')
    np.testing.assert_allclose(bundle['atrium'], independent['atrium'], rtol=1e-6)
    assert bundle['atrium'][-1] < 0.3
    # The corridor's frames count as one however many there are: from its second frame on, the
    # window claims less than with independent frames, and the gap grows with every frame.
    np.testing.assert_allclose(bundle['corridor'][0], independent['corridor'][0], rtol=1e-6)
    gaps = np.array(bundle['corridor'][1:]) / np.array(independent['corridor'][1:])
    assert np.all(gaps > 1.2) and np.all(np.diff(gaps) > 0) and gaps[-1] > 2.5
