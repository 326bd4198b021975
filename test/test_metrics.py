"""Metrics of mspr_training.metrics against hand-computed values and mspr_ros.geometry."""
import json
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mspr_ros.geometry.transforms import pose_error, Transform
from mspr_training.metrics import (compute_metrics, NaiveBaseline, orientation_errors_deg,
                                   position_errors, recall, TimingStats)

IDENTITY = [0.0, 0.0, 0.0, 1.0]


def _about_z(degrees):
    return Rotation.from_euler('z', degrees, degrees=True).as_quat()


def test_position_errors_are_euclidean_distances():
    est = [[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]]
    gt = [[3.0, 4.0, 0.0], [1.0, 2.0, 2.0]]
    np.testing.assert_allclose(position_errors(est, gt), [5.0, 0.0])


def test_orientation_error_is_zero_not_nan_for_identical_and_sign_flipped_quaternions():
    # A quaternion whose normalised self-dot rounds above 1 would give NaN without the clamp.
    q = np.array([0.1, 0.2, 0.3, 0.9])
    q = q / np.linalg.norm(q)
    errors = orientation_errors_deg([q, -q, 3.0 * q, q], [q, q, q, -q])
    assert not np.isnan(errors).any()
    np.testing.assert_allclose(errors, 0.0, atol=1e-5)


def test_orientation_error_hand_values():
    errors = orientation_errors_deg([_about_z(90), _about_z(30), _about_z(-170)],
                                    [IDENTITY, _about_z(-15), _about_z(170)])
    np.testing.assert_allclose(errors, [90.0, 45.0, 20.0], atol=1e-9)


def test_vectorised_errors_equal_geometry_pose_error():
    rng = np.random.default_rng(3)
    positions_est, positions_gt = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    quats_est = Rotation.random(50, random_state=1).as_quat()
    quats_gt = Rotation.random(50, random_state=2).as_quat()
    expected = np.array([pose_error(Transform(pe, qe), Transform(pg, qg))
                         for pe, qe, pg, qg in zip(positions_est, quats_est,
                                                   positions_gt, quats_gt)])
    np.testing.assert_allclose(position_errors(positions_est, positions_gt), expected[:, 0])
    np.testing.assert_allclose(orientation_errors_deg(quats_est, quats_gt), expected[:, 1],
                               atol=1e-9)


def test_recall_counts_images_within_both_thresholds_inclusive():
    position = np.array([0.25, 0.2, 0.3, 0.5, 4.0, 6.0])
    orientation = np.array([2.0, 2.5, 1.0, 5.0, 9.0, 1.0])
    fractions = recall(position, orientation, [(0.25, 2.0), (0.5, 5.0), (5.0, 10.0)])
    assert fractions == pytest.approx([1 / 6, 4 / 6, 5 / 6])


def _scene_report():
    """Two scenes; scene 'a' has its median position and median rotation on different images."""
    names = ['a', 'b', 'c']
    gt_scene = np.array([0, 0, 0, 1, 1])
    gt_position = np.zeros((5, 3))
    gt_orientation = np.tile(IDENTITY, (5, 1))
    pred_position = np.array([[1, 0, 0], [0, 3, 0], [0, 0, 2], [0.1, 0, 0], [0.3, 0, 0]],
                             dtype=float)
    pred_orientation = np.array([_about_z(10), _about_z(20), _about_z(30), _about_z(1),
                                 _about_z(3)])
    pred_scene = np.array([0, 0, 1, 1, 1])
    baseline = NaiveBaseline.from_training_poses({
        'a': ([[1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]], [IDENTITY, IDENTITY]),
        'b': ([[0.0, 0.0, 4.0]], [_about_z(90)])})
    return compute_metrics(names, gt_scene, gt_position, gt_orientation, pred_scene,
                           pred_position, pred_orientation,
                           thresholds=[(0.25, 2.0), (2.0, 25.0)],
                           times_s=[0.010, 0.020, 0.030, 0.040, 0.100], baseline=baseline)


def test_per_scene_medians_are_independent_and_averaged_over_scenes():
    report = _scene_report()
    assert [s.scene for s in report.scenes] == ['a', 'b']  # 'c' has no test image
    a, b = report.scenes
    # Position errors 1, 3, 2 -> median 2 on image 3; rotation errors 10, 20, 30 -> median 20
    # on image 2. Image 3's own rotation error (30) is not the reported median.
    assert a.median_position_m == pytest.approx(2.0)
    assert a.median_orientation_deg == pytest.approx(20.0)
    assert b.median_position_m == pytest.approx(0.2)  # midpoint of 0.1 and 0.3
    assert b.median_orientation_deg == pytest.approx(2.0)
    assert report.average_median_position_m == pytest.approx(1.1)
    assert report.average_median_orientation_deg == pytest.approx(11.0)
    assert a.scene_accuracy == pytest.approx(2 / 3)
    assert b.scene_accuracy == 1.0
    assert report.scene_accuracy == pytest.approx(4 / 5)
    assert a.recall == pytest.approx({'0.25m/2deg': 0.0, '2m/25deg': 1 / 3})
    assert report.recall == pytest.approx({'0.25m/2deg': 1 / 5, '2m/25deg': 3 / 5})


def test_naive_baseline_and_timing():
    report = _scene_report()
    a, b = report.scenes
    assert a.baseline_median_position_m == pytest.approx(1.0)
    assert a.baseline_median_orientation_deg == pytest.approx(0.0, abs=1e-6)
    assert b.baseline_median_position_m == pytest.approx(4.0)
    assert b.baseline_median_orientation_deg == pytest.approx(90.0)
    assert report.baseline_average_median_position_m == pytest.approx(2.5)
    assert report.timing.median_ms == pytest.approx(30.0)
    assert report.timing.p95_ms == pytest.approx(np.percentile([10, 20, 30, 40, 100], 95))
    assert TimingStats.from_seconds([0.5]).median_ms == pytest.approx(500.0)


def test_mean_orientation_of_the_baseline_is_the_rotation_mean():
    baseline = NaiveBaseline.from_training_poses(
        {'s': (np.zeros((2, 3)), [_about_z(20), _about_z(40)])})
    angle = Rotation.from_quat(baseline.orientations['s']).as_euler('xyz', degrees=True)[2]
    assert angle == pytest.approx(30.0)


def test_report_serialises_and_renders_a_table():
    report = _scene_report()
    data = json.loads(json.dumps(report.to_dict()))
    assert data['scenes'][0]['scene'] == 'a'
    table = report.to_markdown()
    rows = [line for line in table.splitlines() if line.startswith('| ')]
    assert rows[0].startswith('| scene | images | median pos (m)')
    assert rows[2].startswith('| a | 3 | 2.000 | 20.00 | 0.667')
    assert rows[-1].startswith('| **average** | 5 | 1.100 | 11.00 | 0.800')
    assert 'naive pos (m)' in rows[0]
    assert 'p95' in table


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match='N x 3'):
        position_errors([[0.0, 0.0]], [[0.0, 0.0]])
    with pytest.raises(ValueError, match='no images'):
        compute_metrics(['a'], [], np.zeros((0, 3)), np.zeros((0, 4)), [], np.zeros((0, 3)),
                        np.zeros((0, 4)))
    with pytest.raises(ValueError, match='no training poses'):
        NaiveBaseline.from_training_poses({'a': (np.zeros((1, 3)), [IDENTITY])}).predict(
            ['a', 'b'], [1])
    assert math.isnan(recall(np.zeros(0), np.zeros(0), [(1.0, 1.0)])[0])
