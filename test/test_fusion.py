"""Sliding-window robust fusion of map <- odom samples (mspr_ros.estimation.fusion)."""
from dataclasses import replace
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from scipy.stats import chi2

from mspr_ros.estimation.error_correlation import ErrorCorrelation
from mspr_ros.estimation.fusion import (
    FusionConfig, GATED, MapOdomFusion, REVOTED, SEEDED, STALE)
from mspr_ros.estimation.fusion_robust import pose_residual, robust_mean
from mspr_ros.geometry.covariance import UNESTIMATED_VARIANCE
from mspr_ros.geometry.transforms import Transform

SECOND = 1_000_000_000
# Per-frame covariance: 0.5 m per axis, 0.1 rad per axis, some x-y and y-yaw correlation so
# that an ordering mistake (position vs rotation blocks) shows.
FRAME_COV = np.diag([0.25, 0.25, 0.25, 0.01, 0.01, 0.01])
FRAME_COV[0, 1] = FRAME_COV[1, 0] = 0.1
FRAME_COV[1, 5] = FRAME_COV[5, 1] = 0.02
TRUE_MAP_ODOM = Transform.from_xyz_rpy([3.0, -2.0, 0.5], [0.05, -0.03, 0.8])
# The errors these tests draw are independent from frame to frame: tests of what the covariance
# claims use the model that says so (the default, one frame per window, would be conservative).
INDEPENDENT = FusionConfig(default_correlation=ErrorCorrelation.independent())


def odometry(step: int, metres_per_step: float = 0.2) -> Transform:
    """Odom <- base of a robot driving a circle of radius 5 m."""
    angle = step * metres_per_step / 5.0
    return Transform.from_xyz_rpy([5.0 * math.sin(angle), 5.0 * (1.0 - math.cos(angle)), 0.0],
                                  [0.0, 0.0, angle])


def perturbed(pose: Transform, error: np.ndarray) -> Transform:
    """Apply a ROS-order error (position added, rotation about the parent axes on the left)."""
    return Transform.from_rotation(pose.translation + error[:3],
                                   Rotation.from_rotvec(error[3:]) * pose.rotation_object)


def noisy_sample(rng: np.random.Generator, T_map_odom: Transform, T_odom_base: Transform,
                 cov: np.ndarray = FRAME_COV) -> Transform:
    """One frame's map <- odom: the true base pose with an error drawn from ``cov``."""
    base = perturbed(T_map_odom @ T_odom_base, rng.multivariate_normal(np.zeros(6), cov))
    return base @ T_odom_base.inverse()


def base_error(result, T_map_odom_true: Transform, T_odom_base: Transform) -> np.ndarray:
    """Return the fused base pose's error against the truth, ROS order."""
    return pose_residual(result.T_map_odom @ T_odom_base, T_map_odom_true @ T_odom_base)


def run_constant(seed: int, count: int, config: FusionConfig = INDEPENDENT):
    """Feed ``count`` noisy samples of TRUE_MAP_ODOM at 5 Hz along the circle."""
    rng = np.random.default_rng(seed)
    fusion = MapOdomFusion(config)
    result = None
    for step in range(count):
        T_odom_base = odometry(step)
        result = fusion.add(step * SECOND // 5, noisy_sample(rng, TRUE_MAP_ODOM, T_odom_base),
                            FRAME_COV, T_odom_base)
    return result, odometry(count - 1)


def test_constant_map_odom_converges_within_the_fused_covariance():
    squared = []
    for seed in range(40):
        result, T_odom_base = run_constant(seed, 20)
        error = base_error(result, TRUE_MAP_ODOM, T_odom_base)
        squared.append(float(error @ np.linalg.inv(result.covariance) @ error))
    squared = np.array(squared)
    # Errors inside the claimed covariance: 99 % ellipsoid for (almost) all trials, and the
    # covariance is not wildly conservative either: the median is near the chi-square median.
    assert np.mean(squared <= chi2.ppf(0.99, 6)) >= 0.95
    assert chi2.ppf(0.2, 6) < np.median(squared) < chi2.ppf(0.8, 6)


def test_fused_covariance_shrinks_with_more_samples():
    few, _ = run_constant(0, 3)
    many, _ = run_constant(0, 25)
    assert few.window_size == 3 and many.window_size == 25
    # Roughly 1/N of the per-frame variance (odometry drift and robust weights add a little).
    for axis in range(6):
        assert many.covariance[axis, axis] < few.covariance[axis, axis] / 4.0
        assert many.covariance[axis, axis] < 2.5 * FRAME_COV[axis, axis] / 25


@pytest.mark.parametrize('config', [FusionConfig(),
                                    FusionConfig(robust_loss='huber'),
                                    FusionConfig(gate_mahalanobis=1e6)],
                         ids=['cauchy+gate', 'huber+gate', 'cauchy-loss-only'])
def test_outlier_ten_sigma_away_barely_moves_the_estimate(config):
    rng = np.random.default_rng(7)
    fusion = MapOdomFusion(config)
    for step in range(20):
        fusion.add(step * SECOND // 5, noisy_sample(rng, TRUE_MAP_ODOM, odometry(0)), FRAME_COV,
                   odometry(0))
    before = fusion.estimate().T_map_odom
    offset = np.array([10.0 * math.sqrt(FRAME_COV[0, 0]), 0.0, 0.0])
    outlier = perturbed(TRUE_MAP_ODOM @ odometry(0), np.concatenate([offset, np.zeros(3)]))
    result = fusion.add(20 * SECOND // 5, outlier @ odometry(0).inverse(), FRAME_COV,
                        odometry(0))
    moved = np.linalg.norm(result.T_map_odom.translation - before.translation)
    assert moved < 0.01 * np.linalg.norm(offset)
    assert not result.inlier or config.gate_mahalanobis > 1e3
    if config.gate_mahalanobis < 1e3:
        assert not result.accepted and result.reason == GATED and result.window_size == 20


def test_plain_weighted_mean_would_fail_the_outlier_bound():
    """The bound above is tight enough to catch a non-robust mean (Huber without the gate)."""
    rng = np.random.default_rng(7)
    fusion = MapOdomFusion(FusionConfig(robust_loss='huber', gate_mahalanobis=1e6))
    for step in range(20):
        fusion.add(step, noisy_sample(rng, TRUE_MAP_ODOM, odometry(0)), FRAME_COV, odometry(0))
    before = fusion.estimate().T_map_odom
    outlier = perturbed(TRUE_MAP_ODOM @ odometry(0), np.array([5.0, 0, 0, 0, 0, 0]))
    after = fusion.add(20, outlier @ odometry(0).inverse(), FRAME_COV, odometry(0)).T_map_odom
    assert np.linalg.norm(after.translation - before.translation) > 0.01 * 5.0


def test_window_drops_samples_by_time_distance_and_count():
    sizes = []
    fusion = MapOdomFusion(FusionConfig(window_s=10.0, window_distance_m=1e9, max_samples=1000))
    for second in range(30):   # standing still, one frame a second
        sizes.append(fusion.add(second * SECOND, TRUE_MAP_ODOM, FRAME_COV,
                                odometry(0)).window_size)
    assert sizes[:11] == list(range(1, 12)) and set(sizes[11:]) == {11}

    fusion = MapOdomFusion(FusionConfig(window_s=1e6, window_distance_m=5.0, max_samples=1000,
                                        odometry_drift_per_m=0.0))
    sizes = [fusion.add(step * SECOND, TRUE_MAP_ODOM, FRAME_COV,
                        Transform.from_xyz_rpy([step, 0, 0], [0, 0, 0])).window_size
             for step in range(20)]   # 1 m between frames
    assert sizes[-1] == 6 and max(sizes) == 6

    fusion = MapOdomFusion(FusionConfig(max_samples=4))
    sizes = [fusion.add(step, TRUE_MAP_ODOM, FRAME_COV, odometry(0)).window_size
             for step in range(10)]
    assert sizes == [1, 2, 3, 4, 4, 4, 4, 4, 4, 4]


def drifting_truth(travelled_m: float) -> Transform:
    """Return a map <- odom that odometry drift moves by 5 cm and 0.3 degrees per metre."""
    return Transform.from_xyz_rpy([3.0 + 0.05 * travelled_m, -2.0 + 0.02 * travelled_m, 0.0],
                                  [0.0, 0.0, 0.8 + math.radians(0.3) * travelled_m])


@pytest.mark.parametrize('window_distance_m, bound_m', [(5.0, 0.6), (1e9, None)])
def test_drifting_map_odom_is_tracked_with_bounded_lag(window_distance_m, bound_m):
    rng = np.random.default_rng(3)
    cov = FRAME_COV / 4.0
    fusion = MapOdomFusion(replace(INDEPENDENT, window_s=1e6,
                                   window_distance_m=window_distance_m, max_samples=1000))
    errors = []
    for step in range(500):   # 0.2 m per frame: 100 m, map <- odom moves by 5.4 m
        T_odom_base = odometry(step)
        truth = drifting_truth(0.2 * step)
        result = fusion.add(step, noisy_sample(rng, truth, T_odom_base, cov), cov, T_odom_base)
        errors.append(np.linalg.norm(base_error(result, truth, T_odom_base)[:3]))
    late = np.array(errors[100:])
    if bound_m is not None:
        assert late.max() < bound_m and result.window_size <= 26
    else:   # without the distance bound the window averages a stale map <- odom
        assert late.max() > 2.0


def test_two_d_keeps_z_roll_pitch_zero():
    rng = np.random.default_rng(5)
    fusion = MapOdomFusion(FusionConfig(two_d=True))
    tilted = Transform.from_xyz_rpy([3.0, -2.0, 0.7], [0.2, -0.1, 0.8])
    for step in range(15):
        T_odom_base = Transform.from_xyz_rpy([0.2 * step, 0.0, 0.1], [0.05, 0.02, 0.1 * step])
        result = fusion.add(step, noisy_sample(rng, tilted, T_odom_base), FRAME_COV,
                            T_odom_base)
        roll, pitch, _ = result.T_map_odom.rpy()
        assert result.T_map_odom.translation[2] == 0.0 and abs(roll) < 1e-12 \
            and abs(pitch) < 1e-12
        for axis in (2, 3, 4):
            row = result.covariance[axis].copy()
            assert row[axis] == UNESTIMATED_VARIANCE
            row[axis] = 0.0
            assert not np.any(row)
    # x, y, yaw converge to the planar part of the truth.
    assert np.linalg.norm(result.T_map_odom.translation[:2] - [3.0, -2.0]) < 0.4
    assert abs(result.T_map_odom.yaw() - tilted.yaw()) < 0.1


def test_old_orientation_error_becomes_position_uncertainty_along_the_path():
    """Covariance order check: a yaw variance taken 10 m ago is y variance now (ROS order)."""
    yaw_only = np.diag([1e-6, 1e-6, 1e-6, 1e-6, 1e-6, 0.01])
    fusion = MapOdomFusion(replace(INDEPENDENT, odometry_drift_per_m=0.0,
                                   odometry_rotation_drift_per_m=0.0, window_distance_m=100.0))
    fusion.add(0, Transform.identity(), yaw_only, Transform.identity())
    ahead = Transform.from_xyz_rpy([10.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    result = fusion.add(1, Transform.identity(), np.eye(6) * 1e6, ahead)
    assert result.covariance[1, 1] == pytest.approx(100 * 0.01, rel=1e-3)
    assert result.covariance[0, 0] < 1e-5
    assert result.covariance[5, 5] == pytest.approx(0.01, rel=1e-3)
    assert result.covariance[1, 5] == pytest.approx(10 * 0.01, rel=1e-3)


def test_odometry_drift_grows_position_and_orientation_variances_by_their_own_rates():
    """Metres per metre on the position axes, radians per metre on the angles: not one number.

    One figure for both gave a frame 10 m back 0.2 rad (11 degrees) of heading drift from a
    wheel odometry that drifts 2 % in distance.
    """
    tiny = np.eye(6) * 1e-8
    fusion = MapOdomFusion(replace(INDEPENDENT, odometry_drift_per_m=0.02,
                                   odometry_rotation_drift_per_m=0.003, window_distance_m=100.0))
    fusion.add(0, Transform.identity(), tiny, Transform.identity())
    ahead = Transform.from_xyz_rpy([10.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    result = fusion.add(1, Transform.identity(), np.eye(6) * 1e6, ahead)
    variances = np.diag(result.covariance)
    # The old frame, carried 10 m: (0.02 * 10)^2 m^2 and (0.003 * 10)^2 rad^2 (the drift is
    # added after the lever arm: position drift is the position figure's).
    np.testing.assert_allclose(variances[3:], (0.003 * 10) ** 2, rtol=1e-3)
    assert variances[0] == pytest.approx((0.02 * 10) ** 2, rel=1e-3)
    assert variances[1] == pytest.approx((0.02 * 10) ** 2, rel=1e-3)


@pytest.mark.parametrize('spread_m, accepted', [(1.5, True), (0.0, False)])
def test_the_gate_widens_by_how_much_the_windows_samples_disagree(spread_m, accepted):
    """The estimate's covariance counts, at the gate, its samples' scatter beyond their own.

    On a recording the first frames of a walk erred alike and badly (60-135 degrees of
    heading): fused, they held the estimate on a wrong heading with a covariance blind to how
    much they disagreed, and the gate kept the right frames after them out until these
    outnumbered them, while odometry carried the estimate metres away. A still robot, frames
    that err alike (one frame per window), a new frame 3.55 m off along x: outside the gate of
    a window whose frames agree (4.74 x sqrt(2) x 0.5 m = 3.35 m); inside that of a window whose
    frames scatter 1.5 m about it where they claim 0.5 m (a reduced chi-square of 9 / 6).
    """
    fusion = MapOdomFusion(FusionConfig())
    cov = np.diag([0.25, 0.25, 0.25, 0.01, 0.01, 0.01])
    for step in range(8):
        offset = spread_m * (1.0 if step % 2 else -1.0)
        fusion.add(step * SECOND // 10, Transform.from_xyz_rpy([offset, 0.0, 0.0], [0, 0, 0]),
                   cov, Transform.identity())
    assert fusion.estimate().window_size == 8
    result = fusion.add(8 * SECOND // 10, Transform.from_xyz_rpy([3.55, 0.0, 0.0], [0, 0, 0]),
                        cov, Transform.identity())
    assert result.accepted is accepted, result.detail


def test_outlier_that_seeds_the_window_is_voted_out():
    rng = np.random.default_rng(11)
    fusion = MapOdomFusion(FusionConfig())
    wrong = Transform.from_xyz_rpy([20.0, 5.0, 0.0], [0.0, 0.0, 2.0])
    assert fusion.add(0, wrong, FRAME_COV, odometry(0)).reason == SEEDED
    reasons = [fusion.add(step, noisy_sample(rng, TRUE_MAP_ODOM, odometry(step)), FRAME_COV,
                          odometry(step)) for step in range(1, 8)]
    assert [r.reason for r in reasons[:2]] == [GATED, REVOTED]
    assert reasons[1].accepted and reasons[-1].window_size == 7
    assert np.linalg.norm(base_error(reasons[-1], TRUE_MAP_ODOM, odometry(7))[:3]) < 0.6


def test_stale_stamp_is_ignored_and_reset_empties_the_window():
    fusion = MapOdomFusion(FusionConfig())
    for step in range(5):
        fusion.add(10 + step, TRUE_MAP_ODOM, FRAME_COV, odometry(step))
    stale = fusion.add(3, Transform.identity(), FRAME_COV, odometry(0))
    assert stale.reason == STALE and not stale.accepted and stale.window_size == 5
    assert stale.T_map_odom.almost_equal(TRUE_MAP_ODOM, 1e-9, 1e-9)
    fusion.reset()
    assert fusion.estimate() is None
    seeded = fusion.add(0, Transform.identity(), FRAME_COV, odometry(0))
    assert seeded.reason == SEEDED and seeded.window_size == 1


@pytest.mark.parametrize('field, value', [('robust_loss', 'l2'), ('window_s', 0.0),
                                          ('max_samples', 0), ('gate_mahalanobis', math.nan),
                                          ('odometry_drift_per_m', -1.0),
                                          ('odometry_rotation_drift_per_m', math.inf),
                                          ('error_correlation', {'s': 0.5}),
                                          ('error_correlation', {1: ErrorCorrelation()}),
                                          ('error_correlation', [ErrorCorrelation()]),
                                          ('default_correlation', 2.0)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        FusionConfig(**{field: value})


def test_configs_with_equal_models_are_equal_and_keep_no_reference_to_the_mapping():
    """PoseStream.reconfigure compares configs; a frozen config must not follow the caller."""
    models = {'s': ErrorCorrelation(2.0, 0.5, math.inf, 0.3, 'parameters')}
    config = FusionConfig(error_correlation=models)
    assert config == FusionConfig(error_correlation=dict(models))
    assert config != FusionConfig() and config != replace(
        config, default_correlation=ErrorCorrelation.independent())
    models['t'] = ErrorCorrelation.independent()
    assert set(config.error_correlation) == {'s'}
    assert FusionConfig().default_correlation == ErrorCorrelation.one_frame()


def test_robust_mean_of_consistent_samples_is_the_information_weighted_mean():
    """With both samples well inside the loss scale the mean is the classic weighted mean."""
    tight = np.diag([0.01, 0.04, 0.09, 1e-4, 1e-4, 1e-4])
    loose = 4.0 * tight
    poses = [Transform.from_xyz_rpy([0.1, 0.0, 0.0], [0.0, 0.0, 0.01]),
             Transform.from_xyz_rpy([0.0, 0.2, 0.0], [0.0, 0.0, -0.01])]
    fused = robust_mean(np.stack([p.translation for p in poses]),
                        Rotation.from_quat(np.stack([p.rotation for p in poses])),
                        np.stack([tight, loose]), 'huber', 1e6)
    np.testing.assert_allclose(fused.pose.translation, [0.08, 0.04, 0.0], atol=1e-9)
    assert fused.pose.yaw() == pytest.approx(0.006, abs=1e-6)
    np.testing.assert_allclose(fused.covariance, tight * 0.8, rtol=1e-6)


def test_two_d_flattens_the_base_pose_not_map_odom():
    """Far from the odom origin a tilted frame must not swing x, y (as flat map <- odom would)."""
    rng = np.random.default_rng(9)
    tilt_only = np.diag([1e-6, 1e-6, 1e-6, 0.0076, 0.0076, 1e-6])   # 5 degrees roll, pitch
    fusion = MapOdomFusion(FusionConfig(two_d=True, gate_mahalanobis=1e6))
    planar_truth = Transform.from_xyz_rpy([3.0, -2.0, 0.0], [0.0, 0.0, 0.8])
    for step in range(10):
        far = Transform.from_xyz_rpy([100.0 + 0.1 * step, 50.0, 0.0], [0.0, 0.0, 1.0])
        result = fusion.add(step, noisy_sample(rng, planar_truth, far, tilt_only), tilt_only, far)
    error = base_error(result, planar_truth, far)
    assert np.linalg.norm(error[:3]) < 0.01 and abs(error[5]) < 0.01


@pytest.mark.parametrize('time_s, rho', [(0.0, 0.0), (0.2 / math.log(2.0), 0.5), (1e9, 1.0)])
def test_time_correlated_frames_inflate_the_fused_covariance(time_s, rho):
    """Ten frames at 5 Hz, ``rho = exp(-dt / time_s)`` between every pair (not only neighbours).

    The variance of their mean is ``sum_ij rho^|i-j| / N^2`` of one frame's: 1/10 for
    independent frames, 0.3 for rho 0.5 between neighbours, 1 (one frame) for rho 1.
    """
    fusion = MapOdomFusion(FusionConfig(default_correlation=ErrorCorrelation.from_time(time_s)))
    for step in range(10):
        result = fusion.add(step * SECOND // 5, TRUE_MAP_ODOM, FRAME_COV, odometry(0))
    lags = np.abs(np.subtract.outer(np.arange(10), np.arange(10)))
    expected = np.sum(np.where(lags == 0, 1.0, rho ** lags)) / 100.0
    np.testing.assert_allclose(result.covariance, expected * FRAME_COV, rtol=1e-6, atol=1e-12)
