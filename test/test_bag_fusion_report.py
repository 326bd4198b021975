"""mspr-bag-eval offline: per-frame vs fused (the node's map -> odom fusion replayed on a bag)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from test_bag_eval_offline import copy_bag, OracleLocalizer

from mspr_ros.estimation.fusion import FusionConfig
from mspr_ros.localizer import Localizer
from mspr_training.bags.cli import main
from mspr_training.bags.fusion_replay import fusion_config, jitter_rms, position_coverage_2sigma
from mspr_training.bags.offline import evaluate_offline, GroundTruthSpec
from mspr_training.bags.report import build_report
from mspr_training.synth import build_world, Intrinsics, plan_sequences, write_rosbag

BASE_TRUTH = GroundTruthSpec(frames=('map', 'base_link'))
FRAMES = 15


@pytest.fixture(scope='module')
def drifting_bag(tmp_path_factory) -> Path:
    """15 frames at 5 Hz over three scenes; /tf odom -> base_link drifts (the default model)."""
    world = build_world(seed=0, num_scenes=3)
    plans = plan_sequences(world, train_frames=1, test_frames=5, train_sequences=1,
                           test_sequences=1)
    path = tmp_path_factory.mktemp('drift') / 'bag'
    metadata = write_rosbag(world, path, rate_hz=5.0, plans=plans,
                            intrinsics=Intrinsics.from_fov(160, 120))
    assert metadata['T_map_odom_changes']  # the odometry really drifts
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
    estimate = np.array([[1.0, 0, 0], [0, 1.9, 0], [0, 0, 2.1], [3.0, 0, 0]])
    covariances = np.tile(np.eye(6), (4, 1, 1))
    assert position_coverage_2sigma(estimate, truth, covariances) == pytest.approx(0.5)
    # Only the 3x3 position block counts; a wider x variance takes the 3 m error in (9/4 <= 4).
    covariances[3, 0, 0] = 4.0
    covariances[:, 3:, 3:] = 1e-9 * np.eye(3)
    assert position_coverage_2sigma(estimate, truth, covariances) == pytest.approx(0.75)


def test_fusion_settings_follow_the_node_parameters():
    assert fusion_config({}) == FusionConfig()
    assert fusion_config({'fusion': 'none', 'fusion.window_s': 3.0}) is None
    config = fusion_config({'fusion': 'window', 'fusion.window_s': 3.0, 'two_d_mode': True,
                            'fusion.error_correlation_s': 0.5})
    assert config == FusionConfig(window_s=3.0, two_d=True, error_correlation_s=0.5)
    with pytest.raises(ValueError, match='fusion'):
        fusion_config({'fusion': 'kalman'})


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
                  *row['jitter'].values(), row['coverage_2sigma_position']]
        assert all(v is not None and math.isfinite(v) for v in values)
        assert row['coverage_minus_nominal_points'] == pytest.approx(
            100 * (row['coverage_2sigma_position'] - 0.7385))
    # The per-frame row is the report's own base-pose accuracy (same frames, same errors).
    assert per_frame['position_m']['median'] == pytest.approx(document['ape']['position_m'][
        'median'])
    ratios = block['ratios_fused_over_per_frame']
    assert ratios['p95_position'] == pytest.approx(fused['position_m']['p95']
                                                   / per_frame['position_m']['p95'])
    assert ratios['jitter_position_m'] == pytest.approx(fused['jitter']['position_m']
                                                        / per_frame['jitter']['position_m'])
    assert block['config'] == {**vars(FusionConfig())}  # the shipped parameter file's values
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
