"""Per-scene pose covariance and error correlation fitted on held-out predictions.

What ``mspr-export`` stores. The predictions come from models that did not train on the images:
by default the out-of-fold predictions of the cross-fitting runs (:mod:`mspr_training.crossfit`:
every training sequence predicted by the fold run that left it out), or the held-out sequences
of the 'calibration' split. Each image is localised with the predicted scene, as deployed.
For the images of the scene that were classified correctly, the error vector is
``[p_gt - p_est, rotvec(R_gt R_est^T)]``: metres, then radians about the scene frame's fixed axes
(x, y, z: the ROS covariance order of ``mspr_ros.geometry.covariance``). The covariance is built
in three steps:

1. The second moment ``mean(e e^T)`` (not centred: a systematic bias is part of the error a
   filter sees).
2. Shrinkage of each 3x3 block (position, rotation) toward its own isotropic average
   ``tr(B)/3 I``. The calibration images are a few held-out sequences: their errors vary along
   the directions those walks excited and almost not at all along the others (a camera always
   carried at one height has a tiny vertical error there). On a day when the camera is carried
   10-20 cm higher, the unshrunk covariance claims centimetres where the error is decimetres
   (measured on the rendered world: 2 sigma position coverage 3 % instead of 73.9 %). The default
   intensity is the Oracle Approximating Shrinkage estimate of scikit-learn
   (:func:`sklearn.covariance.oas`, Chen et al. 2010), which is larger the fewer and the more
   uneven the samples; a number in [0, 1] fixes it (0: no shrinkage). The cross block
   (position x rotation) is scaled so that the result stays positive semi-definite.
3. The scale of each block (``scale``). ``'moment'`` keeps the second moment's. A regressor's
   errors are heavy-tailed (on the rendered worlds the p95 error is 3-4 times the median, where
   a Gaussian's is 1.8 times), so the second moment is set by the few largest errors and the
   2-sigma ellipsoid covers far more than the nominal 73.9 %: 99 % per frame on trained models
   (benchmarks/README.md, issue 25), which tells a filter to trust the camera less than it
   should. ``'conformal'`` (the default) keeps the block's shape and scales it so that the
   2-sigma ellipsoid holds the nominal share of the calibration errors: split conformal
   prediction with the squared Mahalanobis distance as score (Vovk et al. 2005; Angelopoulos &
   Bates 2021), whose finite-sample quantile (the ``ceil((n + 1) p)``-th smallest score of n)
   covers at least the nominal share of a new error drawn like the calibration errors. The
   errors beyond the ellipsoid are the outliers the node's gates and the fusion's robust loss
   are there for. A block with fewer than ``MIN_CONFORMAL_SAMPLES`` calibration errors keeps
   the second moment's scale (recorded).
4. A floor on the diagonal (``position_floor_m^2``, ``orientation_floor_rad^2``) so that a scene
   the network fits perfectly never claims zero uncertainty.

Misclassified images are left out (their pose is in another scene's frame; the node inflates the
covariance by the scene confidence instead) and counted. A scene with fewer than ``min_samples``
usable images gets the pooled covariance of all scenes (also recorded).

The error correlation (:func:`fit_correlations`): how alike the errors of two frames of one
walk are, as a function of the distance, rotation and time between them
(:mod:`mspr_training.correlation_fit`), fitted per scene on the correctly classified frames of
each held-out walk in walk order. A scene the fit cannot serve gets no model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.stats import chi2
from sklearn.covariance import oas, shrunk_covariance

from mspr_ros.geometry.covariance import BLOCK_AXES
from mspr_training.correlation_fit import CorrelationFit, fit_error_correlation, Walk
from mspr_training.engine import Predictions
from mspr_training.metrics import NOMINAL_COVERAGE_3D, pose_error_vectors

LOGGER = logging.getLogger('mspr_training.calibration')
DEFAULT_POSITION_FLOOR_M = 0.01
DEFAULT_ORIENTATION_FLOOR_RAD = math.radians(0.5)
DEFAULT_MIN_SAMPLES = 3
#: Shrinkage intensity chosen from the samples (see the module docstring).
SHRINKAGE_OAS = 'oas'
#: How each block's scale is set (step 3 of the module docstring).
SCALE_CONFORMAL = 'conformal'
SCALE_MOMENT = 'moment'
COVARIANCE_SCALES = (SCALE_CONFORMAL, SCALE_MOMENT)
#: The share of errors the 2-sigma ellipsoid of a 3-D block holds under a Gaussian.
CONFORMAL_LEVEL = NOMINAL_COVERAGE_3D[2]
#: Below this many errors a conformal quantile at the 74 % level is too coarse to set a scale.
MIN_CONFORMAL_SAMPLES = 20


@dataclass
class CovarianceCalibration:
    """Per-scene 6x6 covariances and how they were obtained.

    Attributes:
        covariance: scene -> (6, 6) float64, order x y z rx ry rz (m^2, rad^2).
        samples: scene -> correctly classified images used.
        misclassified: scene -> images left out because their scene was mispredicted.
        pooled: scenes that fell back to the pooled covariance (too few samples).
        shrinkage: scene -> {'position': intensity, 'rotation': intensity} applied.
        scale: scene -> {'position': factor, 'rotation': factor} each block's shrunk second
            moment was multiplied by (1 with ``'moment'`` or too few errors).
        scale_method: ``'conformal'`` or ``'moment'``.
    """

    covariance: dict[str, np.ndarray]
    samples: dict[str, int]
    misclassified: dict[str, int]
    pooled: list[str] = field(default_factory=list)
    shrinkage: dict[str, dict[str, float]] = field(default_factory=dict)
    scale: dict[str, dict[str, float]] = field(default_factory=dict)
    scale_method: str = SCALE_CONFORMAL

    def summary(self) -> dict[str, Any]:
        """Return the JSON-ready description stored in the provenance."""
        return {'samples': self.samples, 'misclassified': self.misclassified,
                'pooled_scenes': self.pooled, 'shrinkage': self.shrinkage,
                'scale_method': self.scale_method, 'scale': self.scale,
                'position_stddev_m': {s: np.sqrt(np.diag(c)[:3]).tolist()
                                      for s, c in self.covariance.items()},
                'orientation_stddev_rad': {s: np.sqrt(np.diag(c)[3:]).tolist()
                                           for s, c in self.covariance.items()}}


def parse_shrinkage(value: str | float) -> str | float:
    """Return ``'oas'`` or a float in [0, 1] from a config or command-line value.

    Raises:
        ValueError: anything else.
    """
    if isinstance(value, str) and value.strip().lower() == SHRINKAGE_OAS:
        return SHRINKAGE_OAS
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"covariance shrinkage must be '{SHRINKAGE_OAS}' or a number in "
                         f'[0, 1], got {value!r}')
    return number


def shrunk_second_moment(errors: np.ndarray,
                         shrinkage: str | float = SHRINKAGE_OAS) -> tuple[np.ndarray,
                                                                          dict[str, float]]:
    """Return the block-shrunk second moment of ``N x 6`` errors and the intensities used."""
    errors = np.asarray(errors, dtype=np.float64)
    moment = errors.T @ errors / errors.shape[0]
    scale = np.ones(6)
    result = np.zeros((6, 6))
    intensities = {}
    for name, block in BLOCK_AXES.items():
        if shrinkage == SHRINKAGE_OAS:
            shrunk, intensity = oas(errors[:, block], assume_centered=True)
        else:
            intensity = float(shrinkage)
            shrunk = shrunk_covariance(moment[block, block], shrinkage=intensity)
        result[block, block] = shrunk
        scale[block] = math.sqrt(1.0 - float(intensity))
        intensities[name] = float(intensity)
    # Cross block: sqrt(1-a_p) sqrt(1-a_r) C_pr. The result is D M D + diag(a_p m_p, a_r m_r)
    # with D = diag(scale): positive semi-definite because M is.
    cross = (BLOCK_AXES['position'], BLOCK_AXES['rotation'])
    result[cross] = np.outer(scale[cross[0]], scale[cross[1]]) * moment[cross]
    result[cross[::-1]] = result[cross].T
    return 0.5 * (result + result.T), intensities


def parse_scale(value: str) -> str:
    """Return ``'conformal'`` or ``'moment'`` from a config or command-line value.

    Raises:
        ValueError: anything else.
    """
    name = str(value).strip().lower()
    if name not in COVARIANCE_SCALES:
        raise ValueError(f'covariance scale must be one of {", ".join(COVARIANCE_SCALES)}, '
                         f'got {value!r}')
    return name


def conformal_scales(errors: np.ndarray, covariance: np.ndarray,
                     level: float = CONFORMAL_LEVEL) -> dict[str, float]:
    """Return each block's factor that makes its 2-sigma ellipsoid hold ``level`` of ``errors``.

    The score of an error is its squared Mahalanobis distance ``e^T B^-1 e`` under the block
    ``B`` of ``covariance``; the factor is the conformal quantile of the scores (the
    ``ceil((n + 1) level)``-th smallest, the largest when that is beyond n) over the
    Gaussian's radius at ``level`` (``chi2.ppf(level, 3)``, 2^2 for the 2-sigma level), so that
    ``factor * B`` puts that quantile on the ellipsoid.
    """
    errors = np.asarray(errors, dtype=np.float64)
    rank = min(len(errors), math.ceil((len(errors) + 1) * level)) - 1
    radius = float(chi2.ppf(level, 3))
    factors = {}
    for name, block in BLOCK_AXES.items():
        rows = errors[:, block]
        scores = np.sum(rows * np.linalg.solve(covariance[block, block], rows.T).T, axis=1)
        factors[name] = float(np.partition(scores, rank)[rank]) / radius
    return factors


def _scaled(moment: np.ndarray, factors: Mapping[str, float]) -> np.ndarray:
    """Return ``D moment D`` with ``D`` the square roots of the blocks' factors (stays PSD)."""
    root = np.concatenate([np.full(3, math.sqrt(factors[name])) for name in BLOCK_AXES])
    return moment * np.outer(root, root)


def calibrate_covariance(scene_names: Sequence[str], predictions: Predictions, *,
                         position_floor_m: float = DEFAULT_POSITION_FLOOR_M,
                         orientation_floor_rad: float = DEFAULT_ORIENTATION_FLOOR_RAD,
                         min_samples: int = DEFAULT_MIN_SAMPLES,
                         shrinkage: str | float = SHRINKAGE_OAS,
                         scale: str = SCALE_CONFORMAL) -> CovarianceCalibration:
    """Calibrate each scene's covariance from held-out predictions (see the module docstring).

    Raises:
        ValueError: no correctly classified image at all, a bad ``shrinkage`` or ``scale``.
    """
    shrinkage = parse_shrinkage(shrinkage)
    scale = parse_scale(scale)
    errors = pose_error_vectors(predictions.gt_position, predictions.gt_orientation,
                                predictions.pred_position, predictions.pred_orientation)
    correct = predictions.pred_scene == predictions.gt_scene
    if not correct.any():
        raise ValueError('no calibration image was assigned its true scene: the covariance '
                         'cannot be calibrated')
    floor = np.diag([position_floor_m ** 2] * 3 + [orientation_floor_rad ** 2] * 3)

    def fitted(rows: np.ndarray) -> tuple[np.ndarray, dict[str, float], dict[str, float]]:
        moment, intensities = shrunk_second_moment(rows, shrinkage)
        factors = {name: 1.0 for name in BLOCK_AXES}
        if scale == SCALE_CONFORMAL and len(rows) >= MIN_CONFORMAL_SAMPLES:
            factors = conformal_scales(rows, moment + floor)
        return _scaled(moment, factors) + floor, intensities, factors

    pooled_moment, pooled_shrinkage, pooled_scale = fitted(errors[correct])
    calibration = CovarianceCalibration({}, {}, {}, scale_method=scale)
    for index, name in enumerate(scene_names):
        mask = predictions.gt_scene == index
        usable = mask & correct
        calibration.samples[name] = int(usable.sum())
        calibration.misclassified[name] = int((mask & ~correct).sum())
        if usable.sum() >= min_samples:
            covariance, intensities, factors = fitted(errors[usable])
        else:
            covariance, intensities, factors = pooled_moment, pooled_shrinkage, pooled_scale
            calibration.pooled.append(name)
            LOGGER.warning('scene %s: %d usable calibration images (< %d); using the pooled '
                           'covariance of all scenes', name, int(usable.sum()), min_samples)
        calibration.covariance[name] = covariance
        calibration.shrinkage[name] = intensities
        calibration.scale[name] = factors
    return calibration


def fit_correlations(scene_names: Sequence[str], predictions: Predictions,
                     walk_of: Sequence[str], covariance: Mapping[str, np.ndarray],
                     stamps_ns: Sequence[int | None] | None = None
                     ) -> dict[str, CorrelationFit | None]:
    """Fit each scene's error correlation on the held-out walks of ``predictions``.

    Args:
        walk_of: the walk of every prediction row (rows of one walk in walk order).
        covariance: scene -> the calibrated 6x6 covariance the errors are whitened with.
        stamps_ns: the capture time of every row (None where unknown: time is left out of
            a walk with any unknown stamp).

    Returns:
        scene -> the fit, or None where the walks hold too few pairs of frames.
    """
    errors = pose_error_vectors(predictions.gt_position, predictions.gt_orientation,
                                predictions.pred_position, predictions.pred_orientation)
    correct = predictions.pred_scene == predictions.gt_scene
    walk_of = np.asarray(walk_of, dtype=object)
    stamps = None if stamps_ns is None else np.asarray(stamps_ns, dtype=object)
    fits: dict[str, CorrelationFit | None] = {}
    for index, name in enumerate(scene_names):
        usable = (predictions.gt_scene == index) & correct
        walks = []
        for walk in dict.fromkeys(walk_of[usable]):  # first-seen order
            rows = np.flatnonzero(usable & (walk_of == walk))
            walk_stamps = None if stamps is None else stamps[rows]
            if walk_stamps is not None and any(stamp is None for stamp in walk_stamps):
                walk_stamps = None
            walks.append(Walk(predictions.gt_position[rows], predictions.gt_orientation[rows],
                              errors[rows], None if walk_stamps is None
                              else walk_stamps.astype(np.int64)))
        fit = fit_error_correlation(walks, covariance[name]) if walks else None
        if fit is None:
            LOGGER.warning('scene %s: too few correctly localised frames along its held-out '
                           'walks to fit the error correlation; the bundle carries none for it',
                           name)
        fits[name] = fit
    return fits
