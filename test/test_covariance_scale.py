"""Conformal scale of the calibrated covariance (mspr_training.calibration, issue 25).

The bug guarded: the second moment of heavy-tailed regression errors is set by the few largest
errors, so the 2-sigma ellipsoid held 99 % of new errors where it claims 73.9 % (trained models,
benchmarks/README.md): a filter was told to trust the camera less than it should.
"""
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from scipy.stats import chi2

from mspr_training.calibration import (calibrate_covariance, CONFORMAL_LEVEL, conformal_scales,
                                       DEFAULT_ORIENTATION_FLOOR_RAD, DEFAULT_POSITION_FLOOR_M,
                                       MIN_CONFORMAL_SAMPLES, parse_scale)
from mspr_training.engine import Predictions
from mspr_training.export import parse_args
from mspr_training.metrics import covariance_coverage, NOMINAL_COVERAGE_3D

IDENTITY = [0.0, 0.0, 0.0, 1.0]
NOMINAL = NOMINAL_COVERAGE_3D[2]


def heavy_tailed_errors(rng, count):
    """Errors like a regressor's: a Gaussian core, and one in ten frames eight times as far."""
    scale = np.where(rng.random(count) < 0.1, 8.0, 1.0)[:, None]
    errors = np.empty((count, 6))
    errors[:, :3] = rng.normal(0, [1.0, 0.6, 0.2], (count, 3)) * scale
    errors[:, 3:] = rng.normal(0, [0.02, 0.02, 0.15], (count, 3)) * scale
    return errors


def predictions_from(errors):
    """Predictions of one scene whose error vectors are ``errors`` (ground truth at identity)."""
    count = len(errors)
    return Predictions(index=np.arange(count), gt_scene=np.zeros(count, dtype=int),
                       pred_scene=np.zeros(count, dtype=int), gt_position=np.zeros((count, 3)),
                       pred_position=-errors[:, :3], gt_orientation=np.tile(IDENTITY, (count, 1)),
                       pred_orientation=Rotation.from_rotvec(errors[:, 3:]).inv().as_quat(),
                       scene_probabilities=np.ones((count, 1)))


def coverage(covariance, errors):
    """Return the 2-sigma coverage of ``errors`` (position, rotation) under one covariance."""
    result = covariance_coverage(errors, np.repeat(covariance[None], len(errors), axis=0),
                                 np.zeros(len(errors)), ['a'])
    return result.position.inside[2], result.rotation.inside[2]


def test_conformal_scale_brings_heavy_tailed_coverage_to_nominal_where_the_moment_over_covers():
    rng = np.random.default_rng(0)
    calibration_errors = heavy_tailed_errors(rng, 300)
    new_errors = heavy_tailed_errors(rng, 5000)
    moment = calibrate_covariance(['a'], predictions_from(calibration_errors),
                                  scale='moment').covariance['a']
    conformal = calibrate_covariance(['a'],
                                     predictions_from(calibration_errors)).covariance['a']
    for inside in coverage(moment, new_errors):
        assert inside > NOMINAL + 0.14       # the bug: far more inside than claimed
    for inside in coverage(conformal, new_errors):
        assert abs(inside - NOMINAL) < 0.06
    # The shape is kept: only each block's size changes (the floor on the diagonal stays).
    floor = np.diag([DEFAULT_POSITION_FLOOR_M ** 2] * 3 + [DEFAULT_ORIENTATION_FLOOR_RAD ** 2] * 3)
    for block in (slice(0, 3), slice(3, 6)):
        ratio = (conformal - floor)[block, block] / (moment - floor)[block, block]
        assert np.allclose(ratio, ratio[0, 0], rtol=0.05)
        assert ratio[0, 0] < 0.7


def test_gaussian_errors_keep_about_their_second_moment():
    rng = np.random.default_rng(1)
    errors = rng.normal(0, [1.0, 0.5, 0.3, 0.05, 0.05, 0.2], (400, 6))
    factors = conformal_scales(errors, errors.T @ errors / len(errors))
    for factor in factors.values():
        assert 0.8 < factor < 1.25


def test_the_conformal_quantile_lands_on_the_ellipsoid():
    rng = np.random.default_rng(2)
    errors = heavy_tailed_errors(rng, 57)
    covariance = np.diag([1.0, 1.0, 1.0, 0.01, 0.01, 0.01])
    factors = conformal_scales(errors, covariance)
    rank = math.ceil((len(errors) + 1) * CONFORMAL_LEVEL)
    for name, block, variance in (('position', slice(0, 3), 1.0),
                                  ('rotation', slice(3, 6), 0.01)):
        scores = np.sort(np.sum(errors[:, block] ** 2, axis=1) / (variance * factors[name]))
        assert scores[rank - 1] == pytest.approx(chi2.ppf(CONFORMAL_LEVEL, 3))
        assert np.mean(scores <= 4.0 + 1e-9) >= NOMINAL


def test_few_errors_keep_the_moment_scale_and_the_calibration_says_so():
    rng = np.random.default_rng(3)
    few = heavy_tailed_errors(rng, MIN_CONFORMAL_SAMPLES - 1)
    calibration = calibrate_covariance(['a'], predictions_from(few))
    moment = calibrate_covariance(['a'], predictions_from(few), scale='moment')
    np.testing.assert_allclose(calibration.covariance['a'], moment.covariance['a'])
    assert calibration.scale['a'] == {'position': 1.0, 'rotation': 1.0}
    many = calibrate_covariance(['a'], predictions_from(heavy_tailed_errors(rng, 100)))
    summary = many.summary()
    assert summary['scale_method'] == 'conformal'
    assert summary['scale']['a']['position'] < 1.0
    assert moment.summary()['scale_method'] == 'moment'


def test_parse_scale_and_command_line(capsys):
    assert parse_scale('Conformal') == 'conformal'
    assert parse_scale('moment') == 'moment'
    with pytest.raises(ValueError, match='covariance scale'):
        parse_scale('robust')
    assert parse_args(['--run', 'r', '--out', 'o']).covariance_scale == 'conformal'
    assert parse_args(['--run', 'r', '--out', 'o', '--covariance-scale', 'moment'
                       ]).covariance_scale == 'moment'
    with pytest.raises(SystemExit):
        parse_args(['--run', 'r', '--out', 'o', '--covariance-scale', 'huge'])
    assert '--covariance-scale' in capsys.readouterr().err
