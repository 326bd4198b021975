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
   ``(odometry_rotation_drift_per_m * s)^2`` to every orientation variance (rad^2);
2. gates the new sample: its Mahalanobis distance to the current estimate, under the sum of both
   covariances, above ``gate_mahalanobis`` rejects it (it is kept aside, see 4); the estimate's
   covariance is inflated there by how much more its samples scatter about it than their
   covariances say (``_scatter``), so that a window seeded by alike wrong frames does not keep
   the right ones out;
3. fuses the window's accepted samples with a robust (Cauchy or Huber) weighted mean on SE(3)
   (``mspr_ros.estimation.fusion_robust``; measured equal to GTSAM's one-variable factor graph
   with robust ``PriorFactorPose3``s, benchmarks/README.md), the loss scale being the 95 %
   chi-square quantile distance of the residual's dimension (a Cauchy weight of 1/2 there, Huber
   weights below 1 only beyond it). The fused covariance is ``(sum C_k^-1)^-1`` over the samples
   within the gate of the result (the robust weights of ordinary inliers are below 1, and
   ``(sum w_k C_k^-1)^-1`` overstated the spread: 2-sigma coverage 88.5 % instead of 73.9 %),
   times the design factor of their correlated errors (below);
4. never locks itself out: when the window holds more rejected than accepted samples, the whole
   window is fused again from its most central sample and the gate re-applied to every sample
   (the majority of the recent frames wins; an outlier that seeded the window is voted out).

Correlated errors (issue 25). ``(sum C_k^-1)^-1`` is the covariance of a mean of independent
errors, but a pose regressor errs alike on alike images (a robot standing still sends one error
over and over): on real recordings only 1-57 % of the fused errors fell inside 2 sigma. So it is
multiplied by ``design_factor(rho, w)`` (``mspr_ros.estimation.error_correlation``): ``w`` the
scalar information of each sample within the gate (of its carried covariance), ``rho`` their
correlation by their scene's ``ErrorCorrelation`` (``FusionConfig.error_correlation``, else
``default_correlation``) from how far the base moved and turned between their images by odometry
(the camera is rigidly mounted: that is the change of view) and the time between them; samples
of two scenes never correlate. A window of one view counts as one frame, a scene-wide bias stays
in the covariance however many frames share it, only new views add information, and the model
``ErrorCorrelation.independent()`` counts frames as before. The estimate does not change. A
per-block model (``ErrorCorrelation.rotation``) gives the position and rotation blocks design
factors of their own, each from its block's correlation and its block's scalar information:
the fused covariance becomes ``D C D``, ``D`` the square roots of each axis's factor.

Samples leave the window when they are more than ``window_s`` older than the newest one, when
odometry travelled more than ``window_distance_m`` since them (the drift bound), or beyond
``max_samples``. With ``two_d`` the samples, odometry and the estimate are flattened to x, y, yaw
(z, roll, pitch exactly 0) and z, roll, pitch get the project's ``UNESTIMATED_VARIANCE`` (1e3) on
the diagonal with no correlations, as the per-frame two_d_mode covariance; the gate and the loss
then count 3 degrees of freedom.

The result's covariance is that of the fused base pose at the newest sample's odometry
(``T_map_odom @ T_odom_base_new``), i.e. what ``~/pose`` publishes for that frame, not that of
``map -> odom`` itself (which grows with the distance of the odom origin). Thread-safe.

Speed (issue 24): this runs on every frame of the node, within its budget. The window is kept as
stacked arrays and carried in one go (``mspr_ros.estimation.fusion_window``); the gate's mean
without the new sample and the mean with it are solved together (``solve_means``); poses are
composed in plain floats, and a ``Transform`` is built only for what is returned. The results are
those of the scalar code this replaced, to rounding (``test/test_fusion_equivalence.py``).
"""
from dataclasses import dataclass
from functools import cached_property
import math
import threading
from typing import List, NamedTuple, Optional

import numpy as np
from scipy.stats import chi2

from mspr_ros.estimation.fusion_config import FusionConfig
from mspr_ros.estimation.fusion_robust import (
    ALL_AXES, informations, irls_covariance, Means, medoid_index, PLANAR_AXES, solve_means,
    squared_mahalanobis)
from mspr_ros.estimation.fusion_window import (
    Carried, carry, compose_poses, flatten_pose, invert_pose, PoseArrays, SampleWindow)
from mspr_ros.estimation.window_correlation import WindowCorrelations
from mspr_ros.geometry.covariance import UNESTIMATED_VARIANCE, validate_covariance
from mspr_ros.geometry.transforms import Transform

# Reasons in FusionResult.reason.
SEEDED = 'seeded'            # first sample of an empty window
FUSED = 'fused'              # passed the gate and joined the window
GATED = 'gated'              # rejected by the Mahalanobis gate (kept aside for a re-vote)
REVOTED = 'revoted'          # the window's majority re-decided which samples are accepted
STALE = 'stale_stamp'        # older than the newest sample: ignored, window unchanged
ESTIMATE = 'estimate'        # returned by estimate(), no sample involved


def _dof(two_d: bool) -> int:
    return 3 if two_d else 6


def loss_scale(two_d: bool) -> float:
    """Return the robust loss scale: the 95 % chi-square quantile distance of the residual."""
    return math.sqrt(float(chi2.ppf(0.95, _dof(two_d))))


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


@dataclass
class _Estimate:
    """A fused base pose at the newest sample's odometry, with its (6, 6) covariance."""

    pose_t: np.ndarray
    pose_q: np.ndarray
    covariance: np.ndarray
    odometry: PoseArrays         # odom <- base of the newest sample
    two_d: bool

    @cached_property
    def T_map_odom(self) -> Transform:
        # Built when asked: the gate's estimate without the new sample is seldom kept.
        map_odom = compose_poses(self.pose_t, self.pose_q, *invert_pose(*self.odometry))
        return Transform(*(flatten_pose(*map_odom) if self.two_d else map_odom))


class _Newest(NamedTuple):
    stamp_ns: int
    odometry: PoseArrays         # odom <- base
    odometry_m: float            # odometry path length travelled up to this sample


class MapOdomFusion:
    """Sliding-window robust fusion of ``map -> odom`` samples (see the module docstring)."""

    def __init__(self, config: FusionConfig) -> None:
        """Create an empty fusion with ``config``."""
        self.config = config
        self._scale = loss_scale(config.two_d)
        self._gate2 = config.gate_mahalanobis ** 2
        # two_d samples err only in x, y, yaw (z, roll, pitch are exactly 0 and unestimated),
        # so the robust mean and the gate work on those three axes.
        self._axes = PLANAR_AXES if config.two_d else ALL_AXES
        # Per axis, ROS order: position drift on x, y, z; rotation drift on the three angles.
        self._drift_per_m = np.repeat([config.odometry_drift_per_m,
                                       config.odometry_rotation_drift_per_m], 3)
        self._correlations = WindowCorrelations(config.error_correlation,
                                                config.default_correlation, self._axes)
        self._lock = threading.Lock()
        self._window = SampleWindow.empty()
        self._newest: Optional[_Newest] = None
        self._state: Optional[_Estimate] = None

    def reset(self) -> None:
        """Empty the window (relocalization, time jump)."""
        with self._lock:
            self._window = SampleWindow.empty()
            self._newest = None
            self._state = None

    def estimate(self) -> Optional[FusionResult]:
        """Return the current fused estimate, or None while no sample is accepted."""
        with self._lock:
            if self._state is None:
                return None
            return self._result(True, True, ESTIMATE, 'current estimate')

    def add(self, stamp_ns: int, T_map_odom: Transform, covariance: np.ndarray,
            T_odom_base: Transform, scene: str = '') -> FusionResult:
        """Add one frame's sample and return the decision with the fused estimate.

        Args:
            stamp_ns: the image stamp in nanoseconds (samples must come in stamp order).
            T_map_odom: the frame's ``map <- odom`` (its base pose times inv(T_odom_base)).
            covariance: (6, 6) ROS order, the frame's base-pose covariance.
            T_odom_base: ``odom <- base`` at the image stamp.
            scene: the scene the frame was localized in: its error correlation model.
        """
        cov = validate_covariance(covariance, 'fusion sample covariance')
        stamp = int(stamp_ns)
        map_odom = T_map_odom.translation, T_map_odom.rotation
        odometry = T_odom_base.translation, T_odom_base.rotation
        if self.config.two_d:
            # Flatten the frame's base pose, not map <- odom: a tilt of map <- odom swings the
            # odom origin, far away, through metres of x, y that flattening would keep.
            base = flatten_pose(*compose_poses(*map_odom, *odometry))
            odometry = flatten_pose(*odometry)
            map_odom = compose_poses(*base, *invert_pose(*odometry))
            cov = _planar(cov[PLANAR_AXES[:, None], PLANAR_AXES])
        with self._lock:
            newest = self._newest
            if newest is not None and stamp < newest.stamp_ns:
                detail = f'stamp {stamp} ns is older than the newest sample ({newest.stamp_ns} ns)'
                return self._result(False, False, STALE, detail)
            travelled = 0.0 if newest is None else newest.odometry_m + float(
                np.linalg.norm(odometry[0] - newest.odometry[0]))
            self._newest = _Newest(stamp, odometry, travelled)
            self._prune()
            return self._admit(SampleWindow.row(stamp, map_odom, cov, odometry, travelled,
                                                str(scene)))

    def _admit(self, row: SampleWindow) -> FusionResult:
        before = self._window.accepted
        self._window = window = self._window.append(row)
        carried = carry(window, self._newest.odometry, self._newest.odometry_m,
                        self._drift_per_m, self._axes)
        new = len(before)
        if not before.any():
            self._state = self._fuse(carried, np.arange(new + 1) == new)
            return self._result(True, True, SEEDED, 'first sample of an empty window')
        # The gate needs the mean of the accepted samples; the mean with the new one is what a
        # passing sample gives: both are solved in the same numpy calls.
        masks = np.stack([window.accepted, window.accepted])
        masks[0, new] = False
        means = self._solve(carried, masks)
        previous, fused = self._estimates(carried, means, masks)
        gate_covariance = carried.covariances[new] + self._scatter(means, masks[0]) * \
            previous.covariance[self._axes[:, None], self._axes]
        distance = math.sqrt(squared_mahalanobis(means.residuals[0, new], gate_covariance))
        if distance <= self.config.gate_mahalanobis:
            self._state = fused
            # The final distances are at the fused pose: the new sample's own one is its test.
            return self._result(True, bool(means.squared_distances[1, new] <= self._gate2),
                                FUSED, f'Mahalanobis {distance:.2f} to the estimate <= gate '
                                f'{self.config.gate_mahalanobis:.2f}')
        window.accepted[new] = False
        self._state = previous
        rejected, accepted = new + 1 - np.count_nonzero(masks[0]), np.count_nonzero(masks[0])
        if rejected <= accepted:
            return self._result(False, False, GATED, f'Mahalanobis {distance:.2f} to the '
                                f'estimate > gate {self.config.gate_mahalanobis:.2f}')
        inlier = self._revote(carried) and window.accepted[new]
        return self._result(bool(window.accepted[new]), bool(inlier), REVOTED,
                            f'{rejected} gated samples outnumbered {accepted} accepted '
                            'ones: the window was fused again from its most central sample')

    def _scatter(self, means: Means, accepted: np.ndarray) -> float:
        """Return how much more the accepted samples scatter about their mean than they claim.

        Their mean squared Mahalanobis distance to it per axis (a reduced chi-square), at least
        1. The gate inflates the estimate's covariance by it: samples that disagree with each
        other beyond their covariances say the estimate is less certain than its covariance
        does. Without it, a run of frames that erred alike and badly (60-135 degrees, the first
        of a walk) seeded the window and kept the right frames after it out until they
        outnumbered it, and the fused pose, carried by odometry on a wrong heading, drifted
        metres away and came back in a 10 m jump (benchmarks/README.md, site calibration). The
        published covariance stays the model's.
        """
        squared = means.squared_distances[0, accepted]
        return max(1.0, float(np.mean(squared)) / len(self._axes)) if squared.size else 1.0

    def _revote(self, carried: Carried) -> bool:
        """Fuse the window from its medoid and gate every sample again.

        Return whether the newest sample is within the gate of the new estimate.
        """
        means = self._solve(carried, np.ones((1, len(carried.quats)), dtype=bool), medoid=True)
        s2 = means.squared_distances[0]
        self._window.accepted[:] = accepted = s2 <= self._gate2
        if accepted.any():
            means = self._solve(carried, accepted[None])
            self._state = self._estimates(carried, means, accepted[None])[0]
        else:
            self._state = self._estimate_from(means.translations[0], means.quats[0],
                                              irls_covariance(carried.infos, s2,
                                                              self.config.robust_loss,
                                                              self._scale))
        # The final distances are at the fused pose: the newest sample's is its inlier test.
        return bool(means.squared_distances[0, -1] <= self._gate2)

    def _prune(self) -> None:
        newest, window = self._newest, self._window
        kept = np.count_nonzero(
            (newest.stamp_ns - window.stamps_ns <= self.config.window_s * 1e9)
            & (newest.odometry_m - window.odometry_m <= self.config.window_distance_m))
        # Stamps and odometry only grow, so the samples that leave are the oldest ones. The new
        # sample is appended after pruning, so leave room for it.
        kept = min(kept, self.config.max_samples - 1)
        self._window = window.from_row(len(window) - kept)

    def _solve(self, carried: Carried, masks: np.ndarray, medoid: bool = False) -> Means:
        if medoid or self._state is None:   # from the most central sample
            rows = np.flatnonzero(masks[0])
            start = rows[medoid_index(carried.translations[rows], carried.quats[rows],
                                      carried.infos[rows], self.config.robust_loss,
                                      self._scale, self._axes)]
            initial = carried.translations[start], carried.quats[start]
        else:   # from the previous estimate moved to the newest odometry
            state = self._state.T_map_odom
            initial = compose_poses(state.translation, state.rotation, *self._newest.odometry)
        return solve_means(carried.translations, carried.quats, carried.infos, masks,
                           self.config.robust_loss, self._scale, *initial, self._axes)

    def _fuse(self, carried: Carried, mask: np.ndarray) -> _Estimate:
        return self._estimates(carried, self._solve(carried, mask[None]), mask[None])[0]

    def _estimates(self, carried: Carried, means: Means, masks: np.ndarray) -> List[_Estimate]:
        """Return each mean with ``(sum of C_k^-1 over its samples within the gate)^-1``.

        Not the IRLS ``(sum w_k C_k^-1)^-1``: the Cauchy weights of ordinary inliers are below
        1 (0.65 on average for a 6-D Gaussian sample), which would overstate the spread of the
        mean of samples that are what their covariance says; times their design factor.
        """
        inside = masks & (means.squared_distances <= self._gate2)
        dimension = len(self._axes)
        sums = inside @ carried.infos.reshape(-1, dimension * dimension)
        covariances = informations(sums.reshape(-1, dimension, dimension))   # all at once
        # Pairs correlate by the odometry at each image (the view), stamps and scenes.
        factors = self._correlations.factors(carried.scenes, carried.odometry_t,
                                             carried.odometry_q, carried.stamps_ns,
                                             carried.infos, inside)
        estimates = []
        for index, (mask, rows) in enumerate(zip(masks, inside)):
            if rows.any():
                covariance = covariances[index] * factors[index]
                covariance = 0.5 * (covariance + covariance.T)
            else:
                covariance = irls_covariance(carried.infos[mask],
                                             means.squared_distances[index, mask],
                                             self.config.robust_loss, self._scale)
            estimates.append(self._estimate_from(means.translations[index], means.quats[index],
                                                 covariance))
        return estimates

    def _estimate_from(self, pose_t: np.ndarray, pose_q: np.ndarray,
                       covariance: np.ndarray) -> _Estimate:
        """Return the estimate of a fused pose, its covariance given on the fusion's axes."""
        if self.config.two_d:
            pose_t, pose_q = flatten_pose(pose_t, pose_q)
            covariance = _planar(covariance)
        return _Estimate(pose_t, pose_q, covariance, self._newest.odometry, self.config.two_d)

    def _result(self, accepted: bool, inlier: bool, reason: str, detail: str) -> FusionResult:
        return FusionResult(accepted, inlier, self._state.T_map_odom, self._state.covariance,
                            np.count_nonzero(self._window.accepted), reason, detail)


def _planar(block: np.ndarray) -> np.ndarray:
    """Return ``two_d_covariance`` given the x, y, yaw block (no second validation)."""
    planar = np.zeros((6, 6))
    planar[PLANAR_AXES[:, None], PLANAR_AXES] = block
    for axis in (2, 3, 4):
        planar[axis, axis] = UNESTIMATED_VARIANCE
    return planar
