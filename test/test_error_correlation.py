"""The error correlation model (mspr_ros.estimation.error_correlation) and the fusion using it.

The fusion tests each fail on the count of independent frames the fusion made before issue 25
(``ErrorCorrelation.independent()``): a window of one view claimed N frames, a shared bias
shrank with N, and frames of two scenes were pooled.
"""
from dataclasses import replace
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from scipy.stats import chi2

from mspr_ros.estimation.error_correlation import (
    design_factor, ErrorCorrelation, resolve_error_correlation, scalar_information,
    scene_correlation)
from mspr_ros.estimation.fusion import FusionConfig, MapOdomFusion
from mspr_ros.estimation.fusion_robust import pose_residual
from mspr_ros.geometry.transforms import Transform

SECOND = 1_000_000_000
# A calibrated-looking frame covariance, not isotropic, with correlations between axes.
FRAME_COV = np.diag([0.25, 0.16, 0.09, 0.01, 0.004, 0.02])
FRAME_COV[0, 1] = FRAME_COV[1, 0] = 0.08
FRAME_COV[1, 5] = FRAME_COV[5, 1] = 0.02
TRUE_MAP_ODOM = Transform.from_xyz_rpy([3.0, -2.0, 0.5], [0.05, -0.03, 0.8])
STANDING = Transform.from_xyz_rpy([1.0, 2.0, 0.0], [0.0, 0.0, 0.7])
INDEPENDENT = ErrorCorrelation.independent()
# A learned-looking model: errors decorrelate over 1 m of travel or 0.3 rad of turn, never with
# time alone, and keep a fifth of their correlation anywhere in the scene.
LEARNED = ErrorCorrelation(1.0, 0.3, math.inf, 0.2, 'fitted')


def random_poses(rng: np.random.Generator, count: int):
    positions = rng.normal(0.0, 1.0, (count, 3))
    quats = Rotation.random(count, random_state=rng).as_quat()
    stamps = np.sort(rng.integers(0, 10 * SECOND, count))
    return positions, quats, stamps


# --- the model --------------------------------------------------------------------------------

def test_matrix_is_symmetric_with_unit_diagonal_and_each_pair_by_the_formula():
    rng = np.random.default_rng(0)
    positions, quats, stamps = random_poses(rng, 12)
    quats[3] = -quats[2]   # one rotation, the other sign: no change of view
    model = ErrorCorrelation(1.5, 0.4, 2.0, 0.25, 'parameters')
    rho = model.matrix(positions, quats, stamps)
    np.testing.assert_array_equal(rho, rho.T)
    np.testing.assert_array_equal(np.diag(rho), 1.0)
    assert np.all((rho >= 0.25) & (rho <= 1.0))
    for i in range(12):
        for j in range(12):
            if i != j:
                angle = (Rotation.from_quat(quats[i]).inv() * Rotation.from_quat(quats[j])
                         ).magnitude()
                exponent = (np.linalg.norm(positions[i] - positions[j]) / 1.5 + angle / 0.4
                            + abs(int(stamps[i]) - int(stamps[j])) / 1e9 / 2.0)
                assert rho[i, j] == pytest.approx(0.25 + 0.75 * math.exp(-exponent), rel=1e-12)
    assert model.matrix(positions[[2, 3]], quats[[2, 3]])[0, 1] == pytest.approx(
        0.25 + 0.75 * math.exp(-np.linalg.norm(positions[2] - positions[3]) / 1.5), rel=1e-12)


def test_one_view_correlates_exactly_one_and_far_views_fall_to_the_floor():
    """The angle of one rotation to itself is exactly 0 (``2 arccos`` gives ~1e-8 rad)."""
    quats = np.tile(Rotation.from_euler('xyz', [0.3, -0.2, 1.1]).as_quat(), (5, 1))
    positions = np.tile([4.0, -3.0, 0.2], (5, 1))
    assert np.all(LEARNED.matrix(positions, quats, np.arange(5) * SECOND) == 1.0)
    far = positions + np.arange(5)[:, None] * [1e3, 0.0, 0.0]
    rho = LEARNED.matrix(far, quats)
    np.testing.assert_allclose(rho[~np.eye(5, dtype=bool)], 0.2, rtol=1e-12, atol=1e-15)


def test_infinite_lengths_never_and_zero_lengths_always_decorrelate():
    rng = np.random.default_rng(1)
    positions, quats, stamps = random_poses(rng, 6)
    np.testing.assert_array_equal(ErrorCorrelation.one_frame().matrix(positions, quats, stamps),
                                  1.0)
    same = np.zeros((6, 3)), np.tile([0.0, 0.0, 0.0, 1.0], (6, 1))
    for zero in ({'length_m': 0.0}, {'angle_rad': 0.0}, {'time_s': 0.0}):
        model = ErrorCorrelation(**{'length_m': 5.0, 'angle_rad': 5.0, 'time_s': 5.0,
                                    'floor': 0.3, 'source': 'parameters', **zero})
        rho = model.matrix(*same, np.zeros(6) if 'time_s' in zero else None)
        np.testing.assert_array_equal(rho, np.where(np.eye(6, dtype=bool), 1.0, 0.3))
    np.testing.assert_array_equal(INDEPENDENT.matrix(*same, np.zeros(6)), np.eye(6))
    assert INDEPENDENT.is_independent and not LEARNED.is_independent
    assert ErrorCorrelation.from_time(0.0) == INDEPENDENT
    timed = ErrorCorrelation.from_time(2.0).matrix(*same, np.arange(6) * SECOND)
    assert timed[0, 3] == pytest.approx(math.exp(-1.5), rel=1e-12)


def test_dict_round_trip_writes_infinite_lengths_as_null():
    for model in (LEARNED, INDEPENDENT, ErrorCorrelation.one_frame(),
                  ErrorCorrelation.from_time(0.7)):
        assert ErrorCorrelation.from_dict(model.to_dict()) == model
    assert LEARNED.to_dict() == {'length_m': 1.0, 'angle_rad': 0.3, 'time_s': None,
                                 'floor': 0.2, 'source': 'fitted'}
    assert ErrorCorrelation.from_dict({'floor': 0.5}) == ErrorCorrelation(
        math.inf, math.inf, math.inf, 0.5, 'bundle')
    assert ErrorCorrelation.from_dict(LEARNED.to_dict(), source='bundle').source == 'bundle'


@pytest.mark.parametrize('value, message', [
    ([0.5], 'mapping'), ({'floor': 0.5, 'length': 1.0}, 'unknown fields'),
    ({'length_m': 1.0}, 'no floor'), ({'floor': 1.5}, 'floor'), ({'floor': -0.1}, 'floor'),
    ({'floor': 0.5, 'length_m': -1.0}, 'length_m'), ({'floor': 0.5, 'angle_rad': 'x'}, 'angle'),
    ({'floor': 0.5, 'time_s': math.nan}, 'time_s'), ({'floor': 0.5, 'source': 'guess'}, 'source'),
])
def test_bad_models_are_rejected_naming_the_field(value, message):
    with pytest.raises(ValueError, match=message):
        ErrorCorrelation.from_dict(value)


def test_scalar_information_and_design_factor():
    informations = np.stack([np.diag([4.0, 1.0, 2.0]), 8.0 * np.eye(3), np.diag([1.0, 0.0, 1.0])])
    np.testing.assert_allclose(scalar_information(informations), [2.0, 8.0, 0.0])
    weights = np.array([1.0, 4.0, 2.0])
    assert design_factor(np.eye(3), weights) == 1.0   # exactly
    assert design_factor(np.ones((3, 3)), np.ones(3)) == pytest.approx(3.0)
    assert design_factor(np.ones((3, 3)), weights) == pytest.approx(
        np.sum(np.sqrt(np.outer(weights, weights))) / 7.0)
    assert design_factor(np.ones((1, 1)), [5.0]) == 1.0


def test_scenes_correlate_by_their_own_model_and_never_with_each_other():
    rng = np.random.default_rng(2)
    positions, quats, stamps = random_poses(rng, 7)
    scenes = ['a', 'b', 'a', 'c', 'b', 'a', '']
    models = {'a': ErrorCorrelation.one_frame(), 'b': LEARNED}
    rho = scene_correlation(scenes, models, INDEPENDENT, positions, quats, stamps)
    np.testing.assert_array_equal(rho, rho.T)
    np.testing.assert_array_equal(np.diag(rho), 1.0)
    for i in range(7):
        for j in range(7):
            if i != j and scenes[i] != scenes[j]:
                assert rho[i, j] == 0.0
    np.testing.assert_array_equal(rho[np.ix_([0, 2, 5], [0, 2, 5])], 1.0)
    assert rho[1, 4] == LEARNED.matrix(positions[[1, 4]], quats[[1, 4]], stamps[[1, 4]])[0, 1]
    one_scene = scene_correlation(['b'] * 7, models, INDEPENDENT, positions, quats, stamps)
    np.testing.assert_array_equal(one_scene, LEARNED.matrix(positions, quats, stamps))


def test_resolve_error_correlation_modes():
    learned = {'atrium': LEARNED}
    models, missing = resolve_error_correlation('bundle', 0.0, learned, ['atrium', 'lab'])
    assert models == {'atrium': LEARNED, 'lab': ErrorCorrelation.one_frame()}
    assert missing == ['lab']
    models, missing = resolve_error_correlation('time', 0.5, learned, ['atrium', 'lab'])
    assert models == {'atrium': ErrorCorrelation.from_time(0.5),
                      'lab': ErrorCorrelation.from_time(0.5)} and missing == []
    models, _ = resolve_error_correlation('independent', 0.0, learned, ['atrium'])
    assert models == {'atrium': INDEPENDENT}
    for mode, time_s in (('time', 0.0), ('time', math.inf), ('learned', 1.0)):
        with pytest.raises(ValueError, match='error.correlation'):
            resolve_error_correlation(mode, time_s, learned, ['atrium'])


# --- the fusion -------------------------------------------------------------------------------

def perturbed(pose: Transform, error: np.ndarray) -> Transform:
    """Apply a ROS-order error (position added, rotation about the parent axes on the left)."""
    return Transform.from_rotation(pose.translation + error[:3],
                                   Rotation.from_rotvec(error[3:]) * pose.rotation_object)


def fuse(config: FusionConfig, errors: np.ndarray, odometry, scenes=None, cov=FRAME_COV,
         spacing_ns: int = SECOND // 5):
    """Fuse frames of base-pose ``errors`` at the given odom <- base poses; return the result."""
    fusion = MapOdomFusion(config)
    for k, (error, odom) in enumerate(zip(errors, odometry)):
        base = perturbed(TRUE_MAP_ODOM @ odom, error)
        result = fusion.add(k * spacing_ns, base @ odom.inverse(), cov, odom,
                            scene='' if scenes is None else scenes[k])
    return result


@pytest.mark.parametrize('model', [ErrorCorrelation.one_frame(), LEARNED],
                         ids=['one_frame', 'learned'])
@pytest.mark.parametrize('spacing_ns', [SECOND // 30, 2 * SECOND])
def test_a_standing_robot_window_is_worth_exactly_one_frame(model, spacing_ns):
    rng = np.random.default_rng(3)
    errors = rng.multivariate_normal(np.zeros(6), FRAME_COV, 20)
    result = fuse(FusionConfig(window_s=60.0, default_correlation=model), errors,
                  [STANDING] * 20, spacing_ns=spacing_ns)
    assert result.window_size == 20
    np.testing.assert_allclose(result.covariance, FRAME_COV, rtol=1e-12, atol=1e-15)
    independent = fuse(FusionConfig(window_s=60.0, default_correlation=INDEPENDENT), errors,
                       [STANDING] * 20, spacing_ns=spacing_ns)
    np.testing.assert_allclose(independent.covariance, FRAME_COV / 20, rtol=1e-12, atol=1e-15)


def test_the_model_changes_the_covariance_never_the_estimate():
    rng = np.random.default_rng(4)
    odometry = [Transform.from_xyz_rpy([0.3 * k, 0.0, 0.0], [0.0, 0.0, 0.05 * k])
                for k in range(15)]
    errors = rng.multivariate_normal(np.zeros(6), FRAME_COV, 15)
    errors[6] = [5.0, 0.0, 0.0, 0.0, 0.0, 1.0]   # an outlier the robust loss must weigh down
    results = [fuse(FusionConfig(gate_mahalanobis=1e6, default_correlation=model), errors,
                    odometry) for model in (INDEPENDENT, LEARNED, ErrorCorrelation.one_frame())]
    for other in results[1:]:
        assert other.T_map_odom.almost_equal(results[0].T_map_odom, 1e-12, 1e-12)
    traces = [np.trace(result.covariance) for result in results]
    assert traces[0] < traces[1] < traces[2]


def shared_bias_trials(model: ErrorCorrelation, trials: int, frames: int, bias: float):
    """Return the fused covariances and position errors of frames erring by ``b + n_k``.

    ``b ~ N(0, bias S)`` is shared by the frames of a trial, ``n_k ~ N(0, (1 - bias) S)`` is
    each frame's own, ``S = FRAME_COV``: each frame's error is ``N(0, S)``, as it claims.
    """
    rng = np.random.default_rng(5)
    config = FusionConfig(default_correlation=model)
    covariances, errors = [], []
    for _ in range(trials):
        shared = rng.multivariate_normal(np.zeros(6), bias * FRAME_COV)
        own = rng.multivariate_normal(np.zeros(6), (1.0 - bias) * FRAME_COV, frames)
        result = fuse(config, shared + own, [STANDING] * frames)
        covariances.append(result.covariance)
        errors.append(pose_residual(result.T_map_odom @ STANDING, TRUE_MAP_ODOM @ STANDING))
    return np.array(covariances), np.array(errors)


def coverage_2sigma_position(covariances: np.ndarray, errors: np.ndarray) -> float:
    """Return the share of position errors within their 2-sigma ellipsoid (3 dof)."""
    position = errors[:, :3]
    squared = np.einsum('ni,nij,nj->n', position, np.linalg.inv(covariances[:, :3, :3]),
                        position)
    return float(np.mean(squared <= 4.0))


def test_a_shared_bias_stays_in_the_fused_covariance():
    """``e_k = b + n_k``: the mean of N frames keeps ``b``; its covariance is ``B + Nn / N``.

    With ``floor = B / (B + Nn)`` (and every other change decorrelating at once) the fusion
    claims exactly that, and its errors fall inside 2 sigma as often as a frame's do (73.9 %);
    counting the frames as independent claims ``(B + Nn) / N`` and the coverage collapses.
    """
    bias, frames = 0.4, 12
    model = ErrorCorrelation(0.0, 0.0, 0.0, bias, 'parameters')
    covariances, errors = shared_bias_trials(model, 150, frames, bias)
    expected = bias * FRAME_COV + (1.0 - bias) * FRAME_COV / frames
    np.testing.assert_allclose(covariances, np.broadcast_to(expected, covariances.shape),
                               rtol=1e-9, atol=1e-15)
    nominal = chi2.cdf(4.0, 3)
    assert abs(coverage_2sigma_position(covariances, errors) - nominal) < 0.08
    independent = shared_bias_trials(INDEPENDENT, 150, frames, bias)
    np.testing.assert_allclose(independent[0][-1], FRAME_COV / frames, rtol=1e-9, atol=1e-15)
    assert coverage_2sigma_position(*independent) < nominal - 0.4


@pytest.mark.parametrize('motion', ['driving', 'turning'])
def test_new_views_shrink_the_covariance(motion):
    """Frames taken further apart err more independently: more spacing, a smaller covariance.

    Driving, the orientation variances are small: an old frame's orientation error grows into
    position along the lever arm of the path since, which would blur the comparison.
    """
    cov = FRAME_COV.copy()
    if motion == 'driving':
        cov[3:, :] = cov[:, 3:] = 0.0
        cov[3:, 3:] = np.diag([1e-6, 1e-6, 1e-6])
    rng = np.random.default_rng(6)
    errors = rng.multivariate_normal(np.zeros(6), cov / 100, 10)
    model = ErrorCorrelation(0.5, 0.02, math.inf, 0.0, 'parameters')
    config = FusionConfig(window_distance_m=1e3, odometry_drift_per_m=0.0,
                          odometry_rotation_drift_per_m=0.0, default_correlation=model)
    # Metres or radians between frames; turning, 0.5 rad keeps every pair over 0.5 rad apart.
    spacings = (0.0, 0.05, 0.2, 1.0, 5.0) if motion == 'driving' else (0.0, 0.005, 0.02, 0.5)
    traces = []
    for spacing in spacings:
        odometry = [Transform.from_xyz_rpy([spacing * k, 0.0, 0.0], [0.0, 0.0, 0.0])
                    if motion == 'driving' else
                    Transform.from_xyz_rpy([0.0, 0.0, 0.0], [0.0, 0.0, spacing * k])
                    for k in range(10)]
        result = fuse(config, errors, odometry, cov=cov)
        traces.append(np.trace(result.covariance))
        if spacing == 0.0:
            np.testing.assert_allclose(result.covariance, cov, rtol=1e-12, atol=1e-15)
    assert all(np.diff(traces) < 0.0), traces
    independent = fuse(replace(config, default_correlation=INDEPENDENT), errors, odometry,
                       cov=cov)
    assert traces[-1] == pytest.approx(np.trace(independent.covariance), rel=1e-3)
    if motion == 'turning':   # no lever arm: the carried covariances are the frame's own
        assert traces[-1] == pytest.approx(np.trace(cov) / 10, rel=1e-3)


def test_frames_of_two_scenes_never_correlate():
    """Two scenes of one view each: two frames' worth, whatever the models and the counts."""
    rng = np.random.default_rng(7)
    errors = rng.multivariate_normal(np.zeros(6), FRAME_COV / 100, 12)
    config = FusionConfig(error_correlation={'a': ErrorCorrelation.one_frame(), 'b': LEARNED})
    scenes = ['a', 'b'] * 6
    result = fuse(config, errors, [STANDING] * 12, scenes)
    np.testing.assert_allclose(result.covariance, FRAME_COV / 2, rtol=1e-12, atol=1e-15)
    # 11 frames of one view and 1 of another: the fused pose is their equal-weight mean, whose
    # variance is (11^2 + 1) / 12^2 of a frame's (an optimal weighting would reach 1/2).
    uneven = fuse(config, errors, [STANDING] * 12, ['a'] * 11 + ['b'])
    np.testing.assert_allclose(uneven.covariance, FRAME_COV * 122 / 144, rtol=1e-12, atol=1e-15)
    # A scene without a model of its own (and scene '') takes the default.
    default = replace(config, default_correlation=INDEPENDENT)
    np.testing.assert_allclose(fuse(default, errors, [STANDING] * 12, ['c'] * 12).covariance,
                               FRAME_COV / 12, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(fuse(default, errors, [STANDING] * 12, ['a'] * 12).covariance,
                               FRAME_COV, rtol=1e-12, atol=1e-15)


# --- a model per block ------------------------------------------------------------------------

# Position errors alike over the whole window (a view's position error), rotation errors new on
# every frame: what the blocks of the rendered worlds' errors look like at their extremes.
PER_BLOCK = ErrorCorrelation(math.inf, math.inf, math.inf, 1.0, 'fitted',
                             rotation=ErrorCorrelation(0.0, 0.0, 0.0, 0.0, 'fitted'))


def test_a_per_block_model_round_trips_and_names_each_block():
    assert PER_BLOCK.per_block and not LEARNED.per_block
    assert PER_BLOCK.block('rotation') == ErrorCorrelation(0.0, 0.0, 0.0, 0.0, 'fitted')
    assert PER_BLOCK.block('position') == replace(PER_BLOCK, rotation=None)
    assert LEARNED.block('rotation') is LEARNED and LEARNED.block('position') is LEARNED
    assert ErrorCorrelation.from_dict(PER_BLOCK.to_dict()) == PER_BLOCK
    assert PER_BLOCK.to_dict()['rotation']['floor'] == 0.0
    assert 'rotation' not in LEARNED.to_dict()
    assert not PER_BLOCK.is_independent
    assert replace(INDEPENDENT, rotation=INDEPENDENT).is_independent
    with pytest.raises(ValueError, match='block'):
        PER_BLOCK.block('scale')
    with pytest.raises(ValueError, match='rotation'):
        ErrorCorrelation.from_dict({'floor': 0.5, 'rotation': {'floor': 0.1, 'rotation': {
            'floor': 0.0}}})
    with pytest.raises(ValueError, match='rotation'):
        ErrorCorrelation(1.0, 1.0, 1.0, 0.5, 'fitted', rotation={'floor': 0.1})
    positions, quats, stamps = random_poses(np.random.default_rng(8), 5)
    rho = scene_correlation(['a'] * 5, {'a': PER_BLOCK}, INDEPENDENT, positions, quats, stamps,
                            'rotation')
    np.testing.assert_array_equal(rho, np.eye(5))
    np.testing.assert_array_equal(scene_correlation(
        ['a'] * 5, {'a': PER_BLOCK}, INDEPENDENT, positions, quats, stamps), np.ones((5, 5)))


@pytest.mark.parametrize('two_d', [False, True])
def test_each_block_gets_its_own_design_factor_frame_after_frame(two_d):
    """A standing window: position stays one frame's, rotation shrinks as 1/N, on every frame.

    The cross terms are scaled by the geometric mean of the two factors (``D C D``), which
    keeps the covariance positive definite.
    """
    rng = np.random.default_rng(9)
    errors = rng.multivariate_normal(np.zeros(6), FRAME_COV, 12)
    if two_d:
        errors[:, [2, 3, 4]] = 0.0
    fusion = MapOdomFusion(FusionConfig(window_s=60.0, two_d=two_d,
                                        default_correlation=PER_BLOCK))
    axes = [0, 1, 5] if two_d else list(range(6))
    cov = FRAME_COV.copy()
    if two_d:
        cov[2, :] = cov[:, 2] = cov[3, :] = cov[:, 3] = cov[4, :] = cov[:, 4] = 0.0
        for axis in (2, 3, 4):
            cov[axis, axis] = 1e3
    block = cov[np.ix_(axes, axes)]
    for count, error in enumerate(errors, start=1):
        base = perturbed(TRUE_MAP_ODOM @ STANDING, error)
        result = fusion.add(count * SECOND // 5, base @ STANDING.inverse(), cov, STANDING)
        position = np.array([axis < 3 for axis in axes])
        roots = np.where(position, 1.0, 1.0 / math.sqrt(count))
        expected = block * np.outer(roots, roots)
        got = result.covariance[np.ix_(axes, axes)]
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-15)
        assert np.all(np.linalg.eigvalsh(result.covariance) > 0.0)
