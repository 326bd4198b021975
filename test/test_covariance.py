"""Unit tests of mspr_ros.geometry.covariance."""
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mspr_ros.geometry.covariance import (confidence_inflation_factor, covariance_at_offset,
                                          flatten_row_major, pose_covariance, two_d_covariance,
                                          UNESTIMATED_VARIANCE, validate_covariance)
from mspr_ros.geometry.transforms import SceneAlignment, Transform

YAW_90 = [0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5)]
ROLL_90 = [math.sqrt(0.5), 0.0, 0.0, math.sqrt(0.5)]
CALIBRATION = np.diag([0.04, 0.09, 0.01, 0.001, 0.002, 0.003])


def test_full_confidence_identity_alignment_returns_the_calibration():
    cov = pose_covariance(CALIBRATION, 1.0, None, inflation=5.0)
    np.testing.assert_allclose(cov, CALIBRATION)
    cov = pose_covariance(CALIBRATION, 1.0, SceneAlignment.identity(), inflation=5.0)
    np.testing.assert_allclose(cov, CALIBRATION, atol=1e-15)


def test_alignment_rotates_and_scales_the_position_block():
    alignment = SceneAlignment([5, 5, 5], YAW_90, 2.0)
    cov = pose_covariance(CALIBRATION, 1.0, alignment, inflation=0.0)
    # a 90 degree yaw swaps the x and y variances; scale 2 multiplies variances by 4
    np.testing.assert_allclose(np.diag(cov)[:3], [4 * 0.09, 4 * 0.04, 4 * 0.01], atol=1e-15)
    # rotation variances about scene x/y become variances about map y/x; scale leaves them
    np.testing.assert_allclose(np.diag(cov)[3:], [0.002, 0.001, 0.003], atol=1e-15)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0.0, atol=1e-15)


def test_alignment_rotates_cross_covariances():
    calibration = np.eye(6) * 0.1
    calibration[0, 3] = calibration[3, 0] = 0.05  # x correlated with rotation about x
    cov = pose_covariance(calibration, 1.0, SceneAlignment([0, 0, 0], ROLL_90, 3.0), 0.0)
    # roll keeps the x axis: the x / rot_x correlation stays, scaled once by s (J = diag(sR, R))
    assert cov[0, 3] == pytest.approx(3.0 * 0.05)
    assert cov[3, 0] == pytest.approx(3.0 * 0.05)
    np.testing.assert_allclose(cov, cov.T)


def test_confidence_inflation_factor():
    assert confidence_inflation_factor(1.0, 3.0) == 1.0
    assert confidence_inflation_factor(0.5, 3.0) == pytest.approx(4.0)
    assert confidence_inflation_factor(0.0, 1.0) == pytest.approx(1001.0)
    assert confidence_inflation_factor(0.2, 0.0) == 1.0
    factors = [confidence_inflation_factor(c, 2.0) for c in np.linspace(0.0, 1.0, 51)]
    assert all(later < earlier for earlier, later in zip(factors, factors[1:]))
    for confidence, inflation in [(-0.1, 1.0), (1.1, 1.0), (math.nan, 1.0), (0.5, -1.0),
                                  (0.5, math.inf)]:
        with pytest.raises(ValueError):
            confidence_inflation_factor(confidence, inflation)


def test_low_confidence_inflates_the_whole_matrix():
    cov = pose_covariance(CALIBRATION, 0.25, None, inflation=1.0)
    np.testing.assert_allclose(cov, 4.0 * CALIBRATION)


def test_fixed_mode_ignores_calibration_and_alignment():
    alignment = SceneAlignment([0, 0, 0], YAW_90, 10.0)
    cov = pose_covariance(None, 0.5, alignment, inflation=1.0, mode='fixed',
                          fixed_position_stddev=0.2, fixed_orientation_stddev=0.05)
    np.testing.assert_allclose(cov, 2.0 * np.diag([0.04] * 3 + [0.0025] * 3))
    with pytest.raises(ValueError, match='fixed_position_stddev'):
        pose_covariance(None, 1.0, None, 0.0, mode='fixed', fixed_position_stddev=0.0)
    with pytest.raises(ValueError, match='fixed_orientation_stddev'):
        pose_covariance(None, 1.0, None, 0.0, mode='fixed', fixed_orientation_stddev=math.nan)


def test_bad_mode_and_missing_calibration():
    with pytest.raises(ValueError, match="mode must be one of"):
        pose_covariance(CALIBRATION, 1.0, None, 0.0, mode='learned')
    with pytest.raises(ValueError, match='needs a calibration'):
        pose_covariance(None, 1.0, None, 0.0)


@pytest.mark.parametrize('matrix, message', [
    (np.eye(5), '6x6'),
    (np.full((6, 6), math.nan), 'finite'),
    (np.triu(np.ones((6, 6))), 'symmetric'),
    (np.diag([1.0, 1.0, 1.0, 1.0, 1.0, -0.5]), 'positive semidefinite'),
    ('not a matrix', '6x6'),
])
def test_invalid_calibration_is_rejected_with_a_clear_message(matrix, message):
    with pytest.raises(ValueError, match=message) as info:
        pose_covariance(matrix, 1.0, None, 0.0)
    assert 'covariance calibration' in str(info.value)


def test_validate_accepts_row_major_and_rounding_asymmetry():
    flat = list(CALIBRATION.reshape(36))
    np.testing.assert_allclose(validate_covariance(flat), CALIBRATION)
    nearly = CALIBRATION.copy()
    nearly[0, 1] = 1e-20
    assert np.array_equal(validate_covariance(nearly), validate_covariance(nearly).T)


def test_two_d_covariance():
    full = np.full((6, 6), 0.01) + np.eye(6) * 0.1
    planar = two_d_covariance(full)
    kept = [0, 1, 5]
    np.testing.assert_allclose(planar[np.ix_(kept, kept)], full[np.ix_(kept, kept)])
    for index in (2, 3, 4):
        assert planar[index, index] == UNESTIMATED_VARIANCE
        assert np.count_nonzero(planar[index]) == 1
        assert np.count_nonzero(planar[:, index]) == 1
    assert two_d_covariance(full, 50.0)[2, 2] == 50.0
    with pytest.raises(ValueError, match='unestimated_variance'):
        two_d_covariance(full, 0.0)


def test_flatten_row_major():
    matrix = np.arange(36.0).reshape(6, 6)
    flat = flatten_row_major(matrix)
    assert flat == [float(value) for value in range(36)]
    assert all(type(value) is float for value in flat)
    assert flat[1] == 1.0 and flat[6] == 6.0  # row-major: row 0 column 1, then row 1 column 0
    with pytest.raises(ValueError, match='6x6'):
        flatten_row_major(np.zeros(36))


def test_covariance_at_offset_known_values():
    yaw_only = np.zeros((6, 6))
    yaw_only[5, 5] = 0.01
    moved = covariance_at_offset(yaw_only, [1.0, 0.0, 0.0])
    # a yaw error d moves a point 1 m ahead sideways by d: y variance and y-yaw correlation
    assert moved[1, 1] == pytest.approx(0.01)
    assert moved[1, 5] == pytest.approx(0.01) and moved[5, 1] == pytest.approx(0.01)
    assert moved[0, 0] == 0.0 and moved[5, 5] == pytest.approx(0.01)
    np.testing.assert_allclose(covariance_at_offset(CALIBRATION, [0, 0, 0]), CALIBRATION)
    with pytest.raises(ValueError, match='offset'):
        covariance_at_offset(CALIBRATION, [0, math.nan, 0])


def test_covariance_at_offset_matches_the_frame_chain():
    """The Jacobian equals finite differences of T_map_base = T_map_cam @ T_cam_base."""
    t_map_cam = Transform.from_xyz_rpy([3, 1, 1.2], [0.2, -0.1, 0.7])
    t_cam_base = Transform.from_xyz_rpy([0.1, 0.9, -0.4], [-1.5, 0.0, -1.4])
    t_map_base = t_map_cam @ t_cam_base
    step = 1e-7
    jacobian = np.zeros((6, 6))
    for index in range(6):
        delta = np.zeros(6)
        delta[index] = step
        # the ROS convention: position shift plus a rotation about the fixed map axes
        perturbed = Transform.from_rotation(
            t_map_cam.translation + delta[:3],
            Rotation.from_rotvec(delta[3:]) * t_map_cam.rotation_object)
        moved = perturbed @ t_cam_base
        jacobian[:3, index] = (moved.translation - t_map_base.translation) / step
        jacobian[3:, index] = (moved.rotation_object * t_map_base.rotation_object.inv()
                               ).as_rotvec() / step
    rng = np.random.default_rng(3)
    factor = rng.normal(size=(6, 6))
    cov = factor @ factor.T * 1e-2
    offset = t_map_base.translation - t_map_cam.translation
    np.testing.assert_allclose(covariance_at_offset(cov, offset), jacobian @ cov @ jacobian.T,
                               atol=1e-6)
