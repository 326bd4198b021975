"""Odometry-aided fusion of per-frame ``map -> odom`` samples over a sliding window (ROS-free).

Each accepted frame gives a sample ``T_map_odom = T_map_base · inv(T_odom_base(t_image))`` with
the frame's calibrated covariance (6x6, ROS order x, y, z, rot x, rot y, rot z, of that frame's
base pose ``T_map_odom @ T_odom_base``). ``map -> odom`` changes only as odometry drifts, so the
samples of a recent window are measurements of one pose. The fusion:

1. moves every sample to the newest odometry pose: ``P_k = T_map_odom_k @ T_odom_base_new`` is
   the base pose now as sample ``k`` predicts it. Its covariance is the frame's, carried along:
   an orientation error ``d`` of the old frame moves the predicted base by ``d x (p_new - p_k)``
   (the lever arm of the travelled path), and odometry's own drift over the ``s`` metres
   travelled since adds ``(odometry_drift_per_m * s)^2`` to every position variance (m^2) and
   every orientation variance (rad^2);
2. gates the new sample: its Mahalanobis distance to the current estimate, under the sum of both
   covariances, above ``gate_mahalanobis`` rejects it (it is kept aside, see 4);
3. fuses the window's accepted samples with a robust (Cauchy or Huber) weighted mean on SE(3)
   (``mspr_ros.estimation.fusion_robust``; measured equal to GTSAM's one-variable factor graph
   with robust ``PriorFactorPose3``s, benchmarks/README.md), the loss scale being the 95 %
   chi-square quantile distance of the residual's dimension (a Cauchy weight of 1/2 there, Huber
   weights below 1 only beyond it). The fused covariance is ``(sum C_k^-1)^-1`` over the samples
   within the gate of the result: the robust weights of ordinary inliers are below 1, and
   ``(sum w_k C_k^-1)^-1`` overstated the spread (2-sigma coverage 88.5 % instead of 73.9 %);
4. never locks itself out: when the window holds more rejected than accepted samples, the whole
   window is fused again from its most central sample and the gate re-applied to every sample
   (the majority of the recent frames wins; an outlier that seeded the window is voted out).

Samples leave the window when they are more than ``window_s`` older than the newest one, when
odometry travelled more than ``window_distance_m`` since them (the drift bound), or beyond
``max_samples``. With ``two_d`` the samples, odometry and the estimate are flattened to x, y, yaw
(z, roll, pitch exactly 0) and z, roll, pitch get the project's ``UNESTIMATED_VARIANCE`` (1e3) on
the diagonal with no correlations, as the per-frame two_d_mode covariance; the gate and the loss
then count 3 degrees of freedom.

The result's covariance is that of the fused base pose at the newest sample's odometry
(``T_map_odom @ T_odom_base_new``), i.e. what ``~/pose`` publishes for that frame, not that of
``map -> odom`` itself (which grows with the distance of the odom origin). Thread-safe.
"""
from collections import deque
from dataclasses import dataclass
import math
import threading
from typing import Deque, List, Optional

import numpy as np
from scipy.spatial.transform import Rotation
from scipy.stats import chi2

from mspr_ros.estimation.fusion_robust import (
    LOSSES, robust_mean, RobustMean, squared_mahalanobis, stacked_residuals)
from mspr_ros.geometry.covariance import (
    two_d_covariance, UNESTIMATED_VARIANCE, validate_covariance)
from mspr_ros.geometry.transforms import Transform

# Reasons in FusionResult.reason.
SEEDED = 'seeded'            # first sample of an empty window
FUSED = 'fused'              # passed the gate and joined the window
GATED = 'gated'              # rejected by the Mahalanobis gate (kept aside for a re-vote)
REVOTED = 'revoted'          # the window's majority re-decided which samples are accepted
STALE = 'stale_stamp'        # older than the newest sample: ignored, window unchanged
ESTIMATE = 'estimate'        # returned by estimate(), no sample involved

_PLANAR_AXES = np.array([0, 1, 5])


def _dof(two_d: bool) -> int:
    return 3 if two_d else 6


def loss_scale(two_d: bool) -> float:
    """Return the robust loss scale: the 95 % chi-square quantile distance of the residual."""
    return math.sqrt(float(chi2.ppf(0.95, _dof(two_d))))


@dataclass(frozen=True)
class FusionConfig:
    """Fusion parameters (see the module docstring for what each trades).

    Attributes:
        window_s: seconds; samples older than this, relative to the newest, leave the window.
        window_distance_m: metres of odometry travelled since a sample after which it leaves.
        max_samples: at most this many samples (accepted and rejected) are kept.
        robust_loss: ``cauchy`` or ``huber``.
        gate_mahalanobis: Mahalanobis distance (not squared) of a new sample to the current
            estimate above which it is rejected. Default: the 99.9 % quantile of chi-square
            with 6 dof (4.74); with ``two_d`` the same distance is a 99.99 % gate for 3 dof.
        two_d: SE(2): z, roll, pitch of samples and estimate are 0.
        odometry_drift_per_m: odometry's relative drift: a sample taken ``s`` metres of travel
            ago gets ``(odometry_drift_per_m * s)^2`` added to each position variance (m^2)
            and each orientation variance (rad^2); 0.02 = 2 cm and 0.02 rad (1.1 degrees) of
            1-sigma drift per metre, a wheel odometry on indoor floors.
        error_correlation_s: correlation time (seconds) of the per-frame regression errors:
            consecutive frames see almost the same image and err alike, so N frames are worth
            fewer independent ones. With ``rho = exp(-dt / error_correlation_s)`` for the
            window's mean frame spacing ``dt`` (an AR(1) error), the fused covariance is
            multiplied by ``(1 + rho) / (1 - rho)``, at most by the number of samples (the
            window is then worth one frame). 0 (default) treats frames as independent; the
            estimate itself does not change. Added to the API of issue 16 (keyword, default 0).
    """

    window_s: float = 10.0
    window_distance_m: float = 5.0
    max_samples: int = 30
    robust_loss: str = 'cauchy'
    gate_mahalanobis: float = math.sqrt(float(chi2.ppf(0.999, 6)))
    two_d: bool = False
    odometry_drift_per_m: float = 0.02
    error_correlation_s: float = 0.0

    def __post_init__(self) -> None:
        """Validate; raise ValueError naming the bad field."""
        for name in ('window_s', 'window_distance_m', 'gate_mahalanobis'):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f'{name} must be finite and > 0, got {getattr(self, name)!r}')
        correlation = float(self.error_correlation_s)
        if not (math.isfinite(correlation) and correlation >= 0.0):
            raise ValueError('error_correlation_s must be finite and >= 0, got '
                             f'{self.error_correlation_s!r}')
        drift = float(self.odometry_drift_per_m)
        if not (math.isfinite(drift) and drift >= 0.0):
            raise ValueError('odometry_drift_per_m must be finite and >= 0, got '
                             f'{self.odometry_drift_per_m!r}')
        if isinstance(self.max_samples, bool) or int(self.max_samples) != self.max_samples \
                or self.max_samples < 1:
            raise ValueError(f'max_samples must be an integer >= 1, got {self.max_samples!r}')
        if self.robust_loss not in LOSSES:
            raise ValueError(f'robust_loss must be one of {LOSSES}, got {self.robust_loss!r}')


@dataclass(frozen=True)
class FusionResult:
    """The outcome of ``MapOdomFusion.add`` (or the current state, from ``estimate``).

    Attributes:
        accepted: the sample passed the gate and is fused (for ``estimate``: True).
        inlier: the sample is within ``gate_mahalanobis`` of the fused estimate, under its own
            covariance (False for a rejected sample).
        T_map_odom: the fused ``map -> odom`` (the previous estimate when nothing changed).
        covariance: (6, 6) ROS order, of the fused base pose at the newest sample's odometry.
        window_size: accepted samples in the window.
        reason: one of SEEDED, FUSED, GATED, REVOTED, STALE, ESTIMATE.
        detail: a human-readable explanation with the numbers, for logs and diagnostics.
    """

    accepted: bool
    inlier: bool
    T_map_odom: Transform
    covariance: np.ndarray
    window_size: int
    reason: str
    detail: str = ''


@dataclass(frozen=True)
class _Estimate:
    T_map_odom: Transform
    pose: Transform              # base pose at the odometry of the newest sample when fused
    covariance: np.ndarray       # of ``pose``


@dataclass
class _Sample:
    stamp_ns: int
    T_map_odom: Transform
    covariance: np.ndarray       # of the frame's base pose
    T_odom_base: Transform
    odometry_m: float            # odometry path length travelled up to this sample
    accepted: bool


@dataclass(frozen=True)
class _Carried:
    """Samples moved to the newest odometry: predicted base poses and their covariances."""

    translations: np.ndarray     # (N, 3)
    rotations: Rotation          # N
    covariances: np.ndarray      # (N, 6, 6)
    stamps_ns: np.ndarray        # (N,)


class MapOdomFusion:
    """Sliding-window robust fusion of ``map -> odom`` samples (see the module docstring)."""

    def __init__(self, config: FusionConfig) -> None:
        """Create an empty fusion with ``config``."""
        self.config = config
        self._scale = loss_scale(config.two_d)
        self._lock = threading.Lock()
        self._samples: Deque[_Sample] = deque()
        self._newest: Optional[_Sample] = None
        self._state: Optional[_Estimate] = None

    def reset(self) -> None:
        """Empty the window (relocalization, time jump)."""
        with self._lock:
            self._samples.clear()
            self._newest = None
            self._state = None

    def estimate(self) -> Optional[FusionResult]:
        """Return the current fused estimate, or None while no sample is accepted."""
        with self._lock:
            if self._state is None:
                return None
            return self._result(True, True, ESTIMATE, 'current estimate')

    def add(self, stamp_ns: int, T_map_odom: Transform, covariance: np.ndarray,
            T_odom_base: Transform) -> FusionResult:
        """Add one frame's sample and return the decision with the fused estimate.

        Args:
            stamp_ns: the image stamp in nanoseconds (samples must come in stamp order).
            T_map_odom: the frame's ``map <- odom`` (its base pose times inv(T_odom_base)).
            covariance: (6, 6) ROS order, the frame's base-pose covariance.
            T_odom_base: ``odom <- base`` at the image stamp.
        """
        cov = validate_covariance(covariance, 'fusion sample covariance')
        stamp = int(stamp_ns)
        if self.config.two_d:
            # Flatten the frame's base pose, not map <- odom: a tilt of map <- odom swings the
            # odom origin, far away, through metres of x, y that flattening would keep.
            planar_odometry = T_odom_base.flatten_2d()
            T_map_odom = (T_map_odom @ T_odom_base).flatten_2d() @ planar_odometry.inverse()
            T_odom_base = planar_odometry
            cov = two_d_covariance(cov)
        with self._lock:
            if self._newest is not None and stamp < self._newest.stamp_ns:
                detail = (f'stamp {stamp} ns is older than the newest sample '
                          f'({self._newest.stamp_ns} ns)')
                return self._result(False, False, STALE, detail)
            travelled = 0.0 if self._newest is None else self._newest.odometry_m + float(
                np.linalg.norm(T_odom_base.translation - self._newest.T_odom_base.translation))
            sample = _Sample(stamp, T_map_odom, cov, T_odom_base, travelled, True)
            self._newest = sample
            self._prune()
            return self._admit(sample)

    def _admit(self, sample: _Sample) -> FusionResult:
        accepted = [kept for kept in self._samples if kept.accepted]
        if not accepted:
            self._samples.append(sample)
            self._state = self._fuse([sample])
            return self._result(True, True, SEEDED, 'first sample of an empty window')
        previous = self._fuse(accepted)
        new = self._carry([sample])
        residual = stacked_residuals(new.translations, new.rotations,
                                     previous.pose.translation, previous.pose.rotation_object)[0]
        distance = math.sqrt(squared_mahalanobis(
            residual, self._gated(new.covariances[0] + previous.covariance)))
        if distance <= self.config.gate_mahalanobis:
            self._samples.append(sample)
            self._state = self._fuse(accepted + [sample])
            return self._result(True, self._inlier(sample), FUSED,
                                f'Mahalanobis {distance:.2f} to the estimate <= gate '
                                f'{self.config.gate_mahalanobis:.2f}')
        sample.accepted = False
        self._samples.append(sample)
        self._state = previous
        rejected = sum(1 for kept in self._samples if not kept.accepted)
        if rejected <= len(accepted):
            return self._result(False, False, GATED, f'Mahalanobis {distance:.2f} to the '
                                f'estimate > gate {self.config.gate_mahalanobis:.2f}')
        self._revote()
        return self._result(sample.accepted, sample.accepted and self._inlier(sample), REVOTED,
                            f'{rejected} gated samples outnumbered {len(accepted)} accepted '
                            'ones: the window was fused again from its most central sample')

    def _revote(self) -> None:
        samples = list(self._samples)
        carried = self._carry(samples)
        fused = robust_mean(carried.translations, carried.rotations, carried.covariances,
                            self.config.robust_loss, self._scale)
        distances = self._distances(carried, fused.pose)
        for sample, distance in zip(samples, distances):
            sample.accepted = bool(distance <= self.config.gate_mahalanobis)
        accepted = [sample for sample in samples if sample.accepted]
        self._state = (self._fuse(accepted) if accepted
                       else self._estimate_from(fused.pose, fused.covariance))

    def _prune(self) -> None:
        newest = self._newest
        window_ns = self.config.window_s * 1e9
        kept = [sample for sample in self._samples
                if newest.stamp_ns - sample.stamp_ns <= window_ns
                and newest.odometry_m - sample.odometry_m <= self.config.window_distance_m]
        # The new sample is appended after pruning, so leave room for it.
        self._samples = deque(kept[len(kept) - self.config.max_samples + 1:]
                              if len(kept) >= self.config.max_samples else kept)

    def _carry(self, samples: List[_Sample]) -> _Carried:
        """Return the base poses now as ``samples`` predict them, with their covariances."""
        newest = self._newest.T_odom_base
        map_odom_t = np.stack([sample.T_map_odom.translation for sample in samples])
        map_odom_r = Rotation.from_quat(np.stack([sample.T_map_odom.rotation
                                                  for sample in samples]))
        odom_base_t = np.stack([sample.T_odom_base.translation for sample in samples])
        translations = map_odom_t + map_odom_r.apply(np.array(newest.translation))
        rotations = map_odom_r * newest.rotation_object
        # Lever arm: the base's travel since each frame, in the map frame; an orientation error
        # d of that frame moves the predicted base by d x lever (covariance_at_offset).
        lever = map_odom_r.apply(newest.translation - odom_base_t)
        jacobians = np.tile(np.eye(6), (len(samples), 1, 1))
        jacobians[:, :3, 3:] = -_skew(lever)
        covariances = jacobians @ np.stack([sample.covariance for sample in samples]) \
            @ np.transpose(jacobians, (0, 2, 1))
        travelled = self._newest.odometry_m - np.array([sample.odometry_m for sample in samples])
        drift = (self.config.odometry_drift_per_m * travelled) ** 2
        covariances = covariances + drift[:, None, None] * np.eye(6)
        if self.config.two_d:
            covariances = _planar(covariances)
        stamps = np.array([sample.stamp_ns for sample in samples], dtype=np.int64)
        return _Carried(translations, rotations, covariances, stamps)

    def _fuse(self, samples: List[_Sample]) -> _Estimate:
        carried = self._carry(samples)
        # Start from the previous estimate moved to the newest odometry (no medoid search).
        initial = None if self._state is None else (
            self._state.T_map_odom @ self._newest.T_odom_base)
        fused = robust_mean(carried.translations, carried.rotations, carried.covariances,
                            self.config.robust_loss, self._scale, initial=initial)
        return self._estimate_from(fused.pose, self._inlier_covariance(carried, fused))

    def _inlier_covariance(self, carried: _Carried, fused: RobustMean) -> np.ndarray:
        """Return ``(sum of C_k^-1 over the samples within the gate)^-1``.

        Not the IRLS ``(sum w_k C_k^-1)^-1``: the Cauchy weights of ordinary inliers are below
        1 (0.65 on average for a 6-D Gaussian sample), which would overstate the spread of the
        mean of samples that are what their covariance says.
        """
        inside = fused.squared_distances <= self.config.gate_mahalanobis ** 2
        if not np.any(inside):
            return fused.covariance
        infos = np.linalg.pinv(carried.covariances[inside], hermitian=True)
        covariance = np.linalg.pinv(np.sum(infos, axis=0), hermitian=True)
        covariance = covariance * self._correlation_factor(carried.stamps_ns[inside])
        return 0.5 * (covariance + covariance.T)

    def _correlation_factor(self, stamps_ns: np.ndarray) -> float:
        """Return ``(1 + rho) / (1 - rho)`` for AR(1)-correlated frames, capped at N."""
        count = len(stamps_ns)
        if self.config.error_correlation_s == 0.0 or count < 2:
            return 1.0
        spacing_s = float(np.max(stamps_ns) - np.min(stamps_ns)) / 1e9 / (count - 1)
        rho = math.exp(-spacing_s / self.config.error_correlation_s)
        if rho >= 1.0:
            return float(count)
        return min((1.0 + rho) / (1.0 - rho), float(count))

    def _estimate_from(self, pose: Transform, covariance: np.ndarray) -> _Estimate:
        if self.config.two_d:
            pose, covariance = pose.flatten_2d(), _planar(covariance[None])[0]
        T_map_odom = pose @ self._newest.T_odom_base.inverse()
        if self.config.two_d:
            T_map_odom = T_map_odom.flatten_2d()
        return _Estimate(T_map_odom, pose, covariance)

    def _gated(self, cov: np.ndarray) -> np.ndarray:
        """Return ``cov`` with only the axes the gate counts (x, y, yaw in two_d) informative."""
        if not self.config.two_d:
            return cov
        masked = np.zeros((6, 6))
        masked[np.ix_(_PLANAR_AXES, _PLANAR_AXES)] = cov[np.ix_(_PLANAR_AXES, _PLANAR_AXES)]
        return masked

    def _distances(self, carried: _Carried, pose: Transform) -> np.ndarray:
        """Mahalanobis distance of each carried sample to ``pose`` under its own covariance."""
        residuals = stacked_residuals(carried.translations, carried.rotations,
                                      pose.translation, pose.rotation_object)
        return np.array([math.sqrt(squared_mahalanobis(residual, self._gated(cov)))
                         for residual, cov in zip(residuals, carried.covariances)])

    def _inlier(self, sample: _Sample) -> bool:
        distance = self._distances(self._carry([sample]), self._state.pose)[0]
        return bool(distance <= self.config.gate_mahalanobis)

    def _result(self, accepted: bool, inlier: bool, reason: str, detail: str) -> FusionResult:
        size = sum(1 for sample in self._samples if sample.accepted)
        return FusionResult(accepted, inlier, self._state.T_map_odom, self._state.covariance,
                            size, reason, detail)


def _skew(vectors: np.ndarray) -> np.ndarray:
    """Return the (N, 3, 3) cross-product matrices of (N, 3) vectors."""
    x, y, z = vectors[:, 0], vectors[:, 1], vectors[:, 2]
    zero = np.zeros_like(x)
    return np.stack([np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1),
                     np.stack([-y, x, zero], -1)], -2)


def _planar(covariances: np.ndarray) -> np.ndarray:
    """Vectorised ``two_d_covariance``: keep x, y, yaw; z, roll, pitch unestimated."""
    planar = np.zeros_like(covariances)
    planar[:, _PLANAR_AXES[:, None], _PLANAR_AXES] = \
        covariances[:, _PLANAR_AXES[:, None], _PLANAR_AXES]
    for axis in (2, 3, 4):
        planar[:, axis, axis] = UNESTIMATED_VARIANCE
    return planar
