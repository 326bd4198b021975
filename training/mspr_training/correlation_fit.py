"""Fit how alike the regression errors of two frames are, from held-out walks (issue 25).

The model is :class:`mspr_ros.estimation.error_correlation.ErrorCorrelation`: the correlation of
two frames' errors decays with the distance ``d`` between their camera positions and the angle
``a`` between their orientations, down to a ``floor`` that a whole scene shares. This module
learns its ``floor``, ``length_m`` and ``angle_rad`` for one scene from the errors of the scene's
held-out walks (frames in walk order, with their ground-truth poses), next to the covariance
``mspr_training.calibration`` fits on the same errors.

How:

1. Whitening. Each 6-vector error ``e`` (``pose_error_vectors``: metres, then radians) becomes
   ``z = L^-1 e`` with ``L`` the Cholesky factor of the scene's covariance. If the errors of
   frames ``i`` and ``j`` are ``E[e_i e_j^T] = rho_ij C`` (what the fusion assumes), then
   ``E[z_i . z_j] / 6 = rho_ij``: one number per pair that estimates the correlation, whatever
   the covariance's shape. The errors are not centred: the covariance is a second moment and a
   bias the frames share is correlation too (it is the floor).
2. Scale. The calibrated covariance is shrunk and floored, so ``mean |z|^2 / 6`` is not exactly
   1; the pair products are divided by it (it is reported: far from 1 means the covariance does
   not describe these walks). A frame whose whitened error is beyond the 99.9 % chi-square radius
   is pulled back to that radius first, so that one wrong-place frame cannot make hundreds of
   pair products huge.
3. Pairs. Only frames of one walk are paired: a walk is one recording (one day, one light), as
   the frames of one fusion window are; what two recordings share is not what a window sees.
   With more pairs than ``max_pairs`` a seeded subsample is drawn: half of it uniformly from
   all pairs (most are far apart: they tell the floor), half at a lag in walk order drawn
   log-uniformly (every scale of the decay gets pairs, down to neighbours; uniform draws alone
   leave the first metres with a few dozen pairs on a long walk). The selection depends on the
   frame indices only, never on the errors, so the regression stays unbiased.
4. Fit. ``floor + (1 - floor) exp(-(d / length_m + a / angle_rad))`` is fitted to the pair
   products by least squares (``scipy.optimize.least_squares``), with the floor in [0, 0.999]
   and the lengths on a log scale, from a few starts; the lowest cost wins. The loss is plain
   squares: the clipping of step 2 already bounds every product, and a robust loss biases the
   fit, because the product of two strongly correlated errors is skewed to the right (a soft-L1
   loss shortened the length by ~20 % on simulated walks).
   A walk set whose frames never turn (or never move) leaves the angle (or the length) out of
   the fit, as infinite.

Per block: the position errors alone and the rotation errors alone (each 3x3 block whitened by
its own Cholesky factor, clipped at the 3-D radius) give pair products of their own on the same
pairs, and the same least squares fits a model to each (``block_models``; ``per_block_model``
joins them: position's fields, rotation's model in ``rotation``). The summary holds each block's
empirical and model correlation per distance and per angle bin (``block_bins``). On the
rendered worlds the two blocks decay differently (``benchmarks/correlation_blocks.py``):
``mspr-export --error-correlation-blocks`` chooses which the bundle carries.

Time is never fitted (``time_s`` is infinite): a still robot's errors do not decorrelate with
time, and the poses are known here. Fewer than ``min_pairs`` pairs give no model (``None``,
logged); the caller keeps the honest ``ErrorCorrelation.one_frame()``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
import logging
import math
from typing import Any, Optional, Sequence

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation
from scipy.stats import chi2

from mspr_ros.estimation.error_correlation import ErrorCorrelation
from mspr_ros.geometry.covariance import BLOCK_AXES

LOGGER = logging.getLogger('mspr_training.correlation_fit')
#: Whitened errors beyond this radius (99.9 % of a 6-D Gaussian) are pulled back to it.
CLIP_RADIUS = math.sqrt(float(chi2.ppf(0.999, 6)))
#: The clip radius of each 3x3 block's whitened errors (99.9 % of a 3-D Gaussian).
BLOCK_CLIP_RADIUS = math.sqrt(float(chi2.ppf(0.999, 3)))
FLOOR_MAX = 0.999
LENGTH_BOUNDS_M = (1e-3, 1e4)
ANGLE_BOUNDS_RAD = (1e-3, 1e3)
#: What a bundle carries of each fit (``mspr-export --error-correlation-blocks``): one model
#: fitted to the joint 6-D errors, or a model per block (``CorrelationFit.per_block_model``).
JOINT, PER_BLOCK = 'joint', 'per_block'
BLOCK_CHOICES = (JOINT, PER_BLOCK)
#: A walk set whose largest change is below this never moved (or never turned).
NO_CHANGE = 1e-6
#: Bins of the summary's empirical-vs-model table.
DISTANCE_BINS_M = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, math.inf)
ANGLE_BINS_DEG = (0.0, 5.0, 10.0, 20.0, 45.0, 90.0, 180.0)
METHOD = ('errors whitened by the Cholesky factor of the scene covariance, the pair products '
          'z_i.z_j/6 divided by mean|z|^2/6 (whitened radius clipped at the 99.9 % chi-square '
          'quantile), pairs within one walk (when subsampled: half uniform, half at log-uniform '
          'lags in walk order), floor + (1-floor) exp(-(d/length + a/angle)) fitted by least '
          'squares; time not fitted')


@dataclass
class Walk:
    """One held-out walk of one scene, frames in walk order.

    Attributes:
        positions: (N, 3) ground-truth camera positions in the scene frame (metres).
        quats: (N, 4) ground-truth orientations, xyzw.
        errors: (N, 6) ``[p_gt - p_est, rotvec(R_gt R_est^T)]``
            (``mspr_training.metrics.pose_error_vectors``).
        stamps_ns: (N,) image stamps, or None (not used by the fit: time is never fitted).
    """

    positions: np.ndarray
    quats: np.ndarray
    errors: np.ndarray
    stamps_ns: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        """Validate the shapes; raise ValueError naming the bad field."""
        self.positions = np.asarray(self.positions, dtype=np.float64)
        self.quats = np.asarray(self.quats, dtype=np.float64)
        self.errors = np.asarray(self.errors, dtype=np.float64)
        count = len(self.positions)
        for name, width in (('positions', 3), ('quats', 4), ('errors', 6)):
            value = getattr(self, name)
            if value.shape != (count, width):
                raise ValueError(f'walk {name} must have shape ({count}, {width}), '
                                 f'got {value.shape}')
            if not np.isfinite(value).all():
                raise ValueError(f'walk {name} holds non-finite values')
        if self.stamps_ns is not None and np.shape(self.stamps_ns) != (count,):
            raise ValueError(f'walk stamps_ns must have shape ({count},), '
                             f'got {np.shape(self.stamps_ns)}')


@dataclass
class CorrelationFit:
    """A fitted model and what it was fitted on.

    Attributes:
        model: the fitted model (``source='fitted'``, ``time_s`` infinite).
        pairs: pairs of frames the fit used.
        walks: walks with at least one pair.
        frames: frames of those walks.
        whitened_second_moment: ``mean |z|^2 / 6`` of the whitened errors (1 when the
            covariance is the errors' second moment).
        clipped: frames whose whitened error was pulled back to ``CLIP_RADIUS``.
        bins: empirical vs model correlation per distance and per angle bin.
        block_bins: 'position' and 'rotation' -> the empirical correlation of that block's
            errors alone and its block model's, per distance and per angle bin.
        block_models: 'position' and 'rotation' -> the model fitted to that block alone.
    """

    model: ErrorCorrelation
    pairs: int
    walks: int
    frames: int
    whitened_second_moment: float
    clipped: int
    bins: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    block_bins: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    block_models: dict[str, ErrorCorrelation] = field(default_factory=dict)

    def model_for(self, blocks: str) -> ErrorCorrelation:
        """Return the model a bundle carries for ``blocks`` (``BLOCK_CHOICES``)."""
        if blocks not in BLOCK_CHOICES:
            raise ValueError(f'error correlation blocks must be one of {BLOCK_CHOICES}, '
                             f'got {blocks!r}')
        return self.per_block_model if blocks == PER_BLOCK else self.model

    @property
    def per_block_model(self) -> ErrorCorrelation:
        """Return the block models as one: position's fields, rotation's in ``rotation``."""
        return replace(self.block_models['position'], rotation=self.block_models['rotation'])

    def summary(self) -> dict[str, Any]:
        """Return the JSON-ready description (stored with the bundle's provenance)."""
        return {'model': self.model.to_dict(), 'pairs': self.pairs, 'walks': self.walks,
                'frames': self.frames,
                'whitened_second_moment': self.whitened_second_moment,
                'clipped_frames': self.clipped, 'bins': self.bins,
                'block_bins': self.block_bins,
                'block_models': {name: model.to_dict()
                                 for name, model in self.block_models.items()},
                'method': METHOD}


def fit_error_correlation(walks: Sequence[Walk], covariance: np.ndarray, *,
                          max_pairs: int = 20000, seed: int = 0,
                          min_pairs: int = 50) -> Optional[CorrelationFit]:
    """Fit one scene's error correlation from its walks (see the module docstring).

    Args:
        walks: the scene's held-out walks.
        covariance: (6, 6) the scene's calibrated covariance, ROS order (m^2, rad^2).
        max_pairs: at most this many pairs are used (a seeded subsample beyond).
        seed: seed of the subsample.
        min_pairs: fewer pairs than this give None.

    Raises:
        ValueError: a covariance that is not a 6x6 positive-definite matrix.
    """
    if int(max_pairs) < 1:
        raise ValueError(f'max_pairs must be >= 1, got {max_pairs!r}')
    lower = _cholesky(covariance)
    used = [walk for walk in walks if len(walk.errors) >= 2]
    total = sum(len(walk.errors) * (len(walk.errors) - 1) // 2 for walk in used)
    if total < min_pairs:
        LOGGER.warning('error correlation not fitted: %d pairs of frames in %d walks (< %d); '
                       'the scene keeps the one-frame model', total, len(used), min_pairs)
        return None
    whitened, clipped, moment = _whitened([walk.errors for walk in used], lower, CLIP_RADIUS)
    pairs = _select_pairs(used, int(max_pairs), np.random.default_rng(seed))
    distance = np.concatenate([
        np.linalg.norm(walk.positions[first] - walk.positions[second], axis=1)
        for walk, (first, second) in zip(used, pairs)])
    angle = np.concatenate([(Rotation.from_quat(walk.quats[first]).inv()
                             * Rotation.from_quat(walk.quats[second])).magnitude()
                            for walk, (first, second) in zip(used, pairs)])
    product = _pair_products(whitened, moment, pairs)
    model = _fit(product, distance, angle)
    block_bins, block_models = {}, {}
    for name, block in BLOCK_AXES.items():
        own, _, own_moment = _whitened([walk.errors[:, block] for walk in used],
                                       _cholesky(covariance, block), BLOCK_CLIP_RADIUS)
        own_product = _pair_products(own, own_moment, pairs)
        block_models[name] = _fit(own_product, distance, angle)
        block_bins[name] = _bins(block_models[name], own_product, distance, angle)
    return CorrelationFit(model, len(product), len(used),
                          sum(len(walk.errors) for walk in used), moment, clipped,
                          _bins(model, product, distance, angle), block_bins, block_models)


def _whitened(errors: Sequence[np.ndarray], lower: np.ndarray, clip_radius: float
              ) -> tuple[list[np.ndarray], int, float]:
    """Return each walk's whitened errors (clipped), how many were clipped, ``mean |z|^2 / d``."""
    whitened = [np.linalg.solve(lower, walk_errors.T).T for walk_errors in errors]
    radius = [np.linalg.norm(z, axis=1) for z in whitened]
    clipped = sum(int(np.count_nonzero(r > clip_radius)) for r in radius)
    whitened = [z * np.minimum(1.0, clip_radius / np.maximum(r, 1e-300))[:, None]
                for z, r in zip(whitened, radius)]
    dimension = lower.shape[0]
    moment = float(np.mean(np.concatenate([np.sum(z * z, axis=1) for z in whitened])))
    return whitened, clipped, moment / dimension


def _pair_products(whitened: Sequence[np.ndarray], moment: float,
                   pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Return ``z_i . z_j / (d * moment)`` of every selected pair, walk after walk."""
    dimension = whitened[0].shape[1]
    return np.concatenate([np.sum(z[first] * z[second], axis=1) / (dimension * moment)
                           for z, (first, second) in zip(whitened, pairs)])


def _cholesky(covariance: np.ndarray, block: slice = slice(0, 6)) -> np.ndarray:
    """Return the lower Cholesky factor of a 6x6 covariance (or of its block) or raise."""
    covariance = np.asarray(covariance, dtype=np.float64)
    if covariance.shape != (6, 6) or not np.isfinite(covariance).all():
        raise ValueError(f'covariance must be a finite 6x6 matrix, got shape {covariance.shape}')
    covariance = covariance[block, block]
    try:
        return np.linalg.cholesky(0.5 * (covariance + covariance.T))
    except np.linalg.LinAlgError:
        raise ValueError('covariance must be positive definite') from None


def _select_pairs(walks: Sequence[Walk], max_pairs: int,
                  rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return each walk's pairs ``(i, j)``, ``i < j``: all, or a subsample of ``max_pairs``.

    The subsample: half the draws uniform over all pairs (most of them far apart: the floor),
    half at a lag in walk order drawn log-uniformly from 1 to N - 1 (every scale of the decay
    gets pairs, the short ones too), without repeats.
    """
    sizes = np.array([len(walk.errors) for walk in walks])
    counts = sizes * (sizes - 1) // 2
    if int(counts.sum()) <= max_pairs:
        return [np.triu_indices(size, 1) for size in sizes]
    uniform = rng.multinomial(max_pairs // 2, counts / counts.sum())
    lagged = rng.multinomial(max_pairs - max_pairs // 2, sizes / sizes.sum())
    selected = []
    for size, first_draws, lag_draws in zip(sizes, uniform, lagged):
        first, second = rng.integers(0, size, (2, first_draws))
        lag = np.floor(np.exp(rng.uniform(0.0, math.log(size), lag_draws))).astype(int)
        lag = np.clip(lag, 1, size - 1)
        start = rng.integers(0, size - lag)
        low = np.concatenate([np.minimum(first, second), start])
        high = np.concatenate([np.maximum(first, second), start + lag])
        keys = np.unique((low * size + high)[low < high])   # without repeats, in a fixed order
        selected.append((keys // size, keys % size))
    return selected


def _fit(product: np.ndarray, distance: np.ndarray, angle: np.ndarray) -> ErrorCorrelation:
    """Return the least-squares model of the pair products (module docstring, step 4)."""
    use_distance = float(distance.max()) > NO_CHANGE
    use_angle = float(angle.max()) > NO_CHANGE
    scaled_distance = distance if use_distance else np.zeros_like(distance)
    scaled_angle = angle if use_angle else np.zeros_like(angle)

    def unpack(parameters: np.ndarray) -> tuple[float, float, float]:
        floor, log_length, log_angle = parameters
        return (float(floor), math.exp(log_length) if use_distance else math.inf,
                math.exp(log_angle) if use_angle else math.inf)

    def residuals(parameters: np.ndarray) -> np.ndarray:
        floor, length, turn = unpack(parameters)
        exponent = scaled_distance / length + scaled_angle / turn
        return floor + (1.0 - floor) * np.exp(-exponent) - product

    far = product[distance >= np.quantile(distance, 0.75)]
    floor_start = float(np.clip(np.mean(far), 0.0, 0.9))
    lengths = [max(float(np.quantile(distance, q)), 2 * LENGTH_BOUNDS_M[0]) for q in (0.05, 0.5)]
    turns = [max(float(np.quantile(angle, q)), 2 * ANGLE_BOUNDS_RAD[0]) for q in (0.05, 0.5)]
    bounds = ([0.0, math.log(LENGTH_BOUNDS_M[0]), math.log(ANGLE_BOUNDS_RAD[0])],
              [FLOOR_MAX, math.log(LENGTH_BOUNDS_M[1]), math.log(ANGLE_BOUNDS_RAD[1])])
    best = None
    for length in lengths:
        for turn in turns:
            start = np.array([floor_start, math.log(min(length, LENGTH_BOUNDS_M[1] / 2)),
                              math.log(min(turn, ANGLE_BOUNDS_RAD[1] / 2))])
            solution = least_squares(residuals, start, bounds=bounds)
            if best is None or solution.cost < best.cost:
                best = solution
    floor, length, turn = unpack(best.x)
    return ErrorCorrelation(length, turn, math.inf, min(max(floor, 0.0), FLOOR_MAX), 'fitted')


def _bins(model: ErrorCorrelation, product: np.ndarray, distance: np.ndarray,
          angle: np.ndarray) -> dict[str, list[dict[str, Any]]]:
    """Return, per distance bin and per angle bin, the pairs' mean product and model value."""
    predicted = model.correlation(distance, angle)
    table = {}
    for name, values, edges in (('distance_m', distance, DISTANCE_BINS_M),
                                ('angle_deg', np.degrees(angle), ANGLE_BINS_DEG)):
        rows = []
        for low, high in zip(edges[:-1], edges[1:]):
            inside = (values >= low) & (values < high)
            if high == edges[-1]:
                inside |= values == high
            if not inside.any():
                continue
            rows.append({'from': low, 'to': None if math.isinf(high) else high,
                         'pairs': int(np.count_nonzero(inside)),
                         'empirical': float(np.mean(product[inside])),
                         'model': float(np.mean(predicted[inside]))})
        table[name] = rows
    return table
