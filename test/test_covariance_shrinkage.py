"""Covariance shrinkage (mspr_training.calibration): formula, PSD, OAS, the shift it guards."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from sklearn.covariance import oas

from mspr_training.calibration import (calibrate_covariance, parse_shrinkage,
                                       shrunk_second_moment)
from mspr_training.engine import Predictions
from mspr_training.export import parse_args
from mspr_training.metrics import covariance_coverage, pose_error_vectors

IDENTITY = [0.0, 0.0, 0.0, 1.0]


def loop_errors(rng, count, vertical_std=0.02):
    """Errors of one walk at one camera height: large in x/y and yaw, tiny vertically."""
    errors = np.zeros((count, 6))
    errors[:, 0] = rng.normal(0, 1.5, count)
    errors[:, 1] = rng.normal(0, 0.8, count)
    errors[:, 2] = rng.normal(0, vertical_std, count)
    errors[:, 3:5] = rng.normal(0, 0.03, (count, 2))
    errors[:, 5] = rng.normal(0, 0.4, count) + 0.2 * errors[:, 1]
    return errors


def predictions_from(errors):
    """Predictions of one scene whose error vectors are ``errors`` (ground truth at identity)."""
    count = len(errors)
    pred_orientation = Rotation.from_rotvec(errors[:, 3:]).inv().as_quat()
    return Predictions(index=np.arange(count), gt_scene=np.zeros(count, dtype=int),
                       pred_scene=np.zeros(count, dtype=int), gt_position=np.zeros((count, 3)),
                       pred_position=-errors[:, :3], gt_orientation=np.tile(IDENTITY, (count, 1)),
                       pred_orientation=pred_orientation,
                       scene_probabilities=np.ones((count, 1)))


def test_fixed_shrinkage_formula_and_positive_definite():
    rng = np.random.default_rng(0)
    errors = loop_errors(rng, 40)
    moment = errors.T @ errors / len(errors)
    for intensity in (0.0, 0.1, 0.5, 1.0):
        result, used = shrunk_second_moment(errors, intensity)
        assert used == {'position': intensity, 'rotation': intensity}
        for block in (slice(0, 3), slice(3, 6)):
            expected = ((1 - intensity) * moment[block, block]
                        + intensity * np.trace(moment[block, block]) / 3 * np.eye(3))
            np.testing.assert_allclose(result[block, block], expected, atol=1e-12)
        np.testing.assert_allclose(result[:3, 3:], (1 - intensity) * moment[:3, 3:], atol=1e-12)
        np.testing.assert_allclose(result, result.T)
        assert np.linalg.eigvalsh(result).min() >= -1e-12
        # Never less total variance than measured: shrinkage moves it between axes.
        np.testing.assert_allclose(np.trace(result), np.trace(moment), rtol=1e-12)


def test_oas_intensity_is_scikit_learns_per_block():
    rng = np.random.default_rng(1)
    errors = loop_errors(rng, 25)
    result, used = shrunk_second_moment(errors, 'oas')
    for name, block in (('position', slice(0, 3)), ('rotation', slice(3, 6))):
        expected, intensity = oas(errors[:, block], assume_centered=True)
        assert used[name] == pytest.approx(intensity)
        assert 0.0 < intensity < 1.0
        np.testing.assert_allclose(result[block, block], expected, atol=1e-12)
    assert np.linalg.eigvalsh(result).min() > 0


def test_calibration_records_intensity_and_default_is_oas():
    errors = loop_errors(np.random.default_rng(2), 30)
    calibration = calibrate_covariance(['a'], predictions_from(errors))
    assert set(calibration.shrinkage['a']) == {'position', 'rotation'}
    assert calibration.summary()['shrinkage'] == calibration.shrinkage
    recovered = pose_error_vectors(np.zeros((30, 3)), np.tile(IDENTITY, (30, 1)),
                                   -errors[:, :3], Rotation.from_rotvec(errors[:, 3:]).inv()
                                   .as_quat())
    np.testing.assert_allclose(recovered, errors, atol=1e-9)


def test_a_camera_carried_higher_stays_inside_the_shrunk_ellipsoid():
    """A walk 15 cm higher than the calibration walks stays inside 2 sigma.

    The bug guarded: calibrated on walks at one height, the covariance claimed centimetres
    vertically, and such a walk fell outside 2 sigma almost every time.
    """
    rng = np.random.default_rng(3)
    calibration_errors = loop_errors(rng, 50)
    test_errors = loop_errors(rng, 400)
    test_errors[:, 2] += 0.15
    coverage = {}
    for shrinkage in (0.0, 'oas'):
        covariance = calibrate_covariance(['a'], predictions_from(calibration_errors),
                                          shrinkage=shrinkage).covariance['a']
        covariances = np.repeat(covariance[None], len(test_errors), axis=0)
        result = covariance_coverage(test_errors, covariances, np.zeros(len(test_errors)), ['a'])
        coverage[shrinkage] = result.position.inside[2]
    assert coverage[0.0] < 0.2
    assert coverage['oas'] > 0.6


@pytest.mark.parametrize('value, expected', [('oas', 'oas'), ('OAS', 'oas'), ('0.25', 0.25),
                                             (0, 0.0), (1.0, 1.0)])
def test_parse_shrinkage_accepts(value, expected):
    assert parse_shrinkage(value) == expected


@pytest.mark.parametrize('value', ['ledoit', '-0.1', 1.5, None, 'nan'])
def test_parse_shrinkage_refuses(value):
    with pytest.raises(ValueError, match='shrinkage'):
        parse_shrinkage(value)


def test_export_command_line_takes_and_checks_the_shrinkage(capsys):
    assert parse_args(['--run', 'r', '--out', 'o']).covariance_shrinkage == 'oas'
    assert parse_args(['--run', 'r', '--out', 'o', '--covariance-shrinkage', '0'
                       ]).covariance_shrinkage == 0.0
    with pytest.raises(SystemExit):
        parse_args(['--run', 'r', '--out', 'o', '--covariance-shrinkage', '2'])
    assert 'shrinkage' in capsys.readouterr().err
