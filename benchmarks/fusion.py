"""Odometry-aided fusion vs per-frame poses on a simulated robot (offline, no model, no ROS).

A seeded planar robot drives at 0.4-1.0 m/s with smoothly varying turn rate; frames come at
5 Hz (the demo's rate). What the node would get:

- odometry ``odom <- base`` integrated from the true motion with drift: a scale error on
  distance, a heading drift per metre and random-walk noise on both (``OdometryModel``);
- per frame, a regressed ``map <- base``: the true pose with a heavy-tailed error (Student-t,
  4 dof, scaled to the stated standard deviations per axis, AR(1)-correlated from frame to frame
  with ``--error-correlation``), and a fraction of gross outliers (a wrong place 3-15 m away, a
  rotation up to 60 degrees). The per-frame covariance is the calibrated one: the diagonal of
  the stated standard deviations (the error's true covariance, outliers aside).

Per frame, ``mspr_ros.estimation.fusion.MapOdomFusion`` gets the sample ``map <- odom`` and
returns the fused one; the fused base pose is ``T_map_odom @ T_odom_base`` at that frame.
Reported for per-frame and fused: median and p95 position and orientation error; jitter (RMS of
the frame-to-frame change of the estimated pose minus the true change, position and angle); and
2-sigma coverage (fraction of position errors inside the covariance's 2-sigma ellipsoid,
nominal 73.9 % in 3-D, and the same for orientation). Goals (issue 16): fused p95 position
error <= 1/2 of per-frame, jitter <= 1/5, coverage within 10 points of nominal. The node runs
``add()`` on every frame: its wall time per call is reported per seed and over all runs
(``results.add_ms``, median and p95; goal of issue 24: a median under 1 ms).

``--compare-gtsam`` (needs ``gtsam``) fuses random windows with GTSAM (one Pose3, a robust
``PriorFactorPose3`` per sample, marginal covariance) and reports the largest difference from
our closed-form IRLS mean.

Usage: ``python benchmarks/fusion.py [--quick | --smoke] [--seed N] [--compare-gtsam]``
"""
import argparse
from dataclasses import asdict, dataclass
import math
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.spatial.transform import Rotation
from scipy.stats import chi2

from common.cli import add_common_arguments, begin
from common.results import save_results
from mspr_ros.estimation.fusion import FusionConfig, MapOdomFusion
from mspr_ros.estimation.fusion_robust import robust_mean
from mspr_ros.geometry.transforms import Transform

NAME = 'fusion'
FRAME_RATE_HZ = 5.0
DURATION_S = {'full': 600.0, 'quick': 200.0, 'smoke': 20.0}
SIGMA = 2.0
ADD_MS_GOAL = 1.0    # median per-frame add() time, issue 24


@dataclass(frozen=True)
class OdometryModel:
    """Wheel odometry's errors (documented in benchmarks/README.md, Fusion).

    Attributes:
        scale_error: relative error of travelled distance (0.02: 2 cm too far per metre).
        heading_drift_deg_per_m: systematic heading error per metre (a wheel-radius mismatch).
        distance_noise: random walk of the distance, metres per sqrt(metre).
        heading_noise_deg: random walk of the heading, degrees per sqrt(metre).
    """

    scale_error: float = 0.02
    heading_drift_deg_per_m: float = 0.2
    distance_noise: float = 0.01
    heading_noise_deg: float = 0.3


@dataclass(frozen=True)
class RegressionModel:
    """Per-frame regression errors (the demo's: ~0.6 m median position, ~7 degrees orientation).

    Attributes:
        position_stddev: metres per axis (x, y, z).
        orientation_stddev_deg: degrees per axis (rotation vector).
        outlier_fraction: frames whose pose is a wrong place altogether.
        correlation: AR(1) coefficient of the error from one frame to the next.
        dof: Student-t degrees of freedom of the error (heavy tails).
    """

    position_stddev: float = 0.4
    orientation_stddev_deg: float = 5.0
    outlier_fraction: float = 0.05
    correlation: float = 0.0
    dof: float = 4.0

    def covariance(self) -> np.ndarray:
        """Return the calibrated per-frame covariance, ROS order."""
        return np.diag([self.position_stddev ** 2] * 3
                       + [math.radians(self.orientation_stddev_deg) ** 2] * 3)


@dataclass
class Trajectory:
    """Per frame: true base pose in the map, odometry's base pose in odom, the stamps."""

    stamps_ns: List[int]
    true_map_base: List[Transform]
    odom_base: List[Transform]


def simulate_path(rng: np.random.Generator, frames: int, odometry: OdometryModel) -> Trajectory:
    """Drive a planar robot and integrate drifting odometry alongside."""
    dt = 1.0 / FRAME_RATE_HZ
    x = y = heading = 0.0
    ox = oy = oheading = 0.0
    turn_rate = 0.0
    start = Transform.from_xyz_rpy([2.0, -1.0, 0.0], [0.0, 0.0, 0.3])   # map <- odom at t=0
    stamps, truth, odom = [], [], []
    for frame in range(frames):
        speed = 0.7 + 0.3 * math.sin(frame * dt / 15.0)
        turn_rate = 0.95 * turn_rate + 0.05 * rng.normal(0.0, 0.6)
        distance, turn = speed * dt, turn_rate * dt
        x += distance * math.cos(heading + turn / 2)
        y += distance * math.sin(heading + turn / 2)
        heading += turn
        odom_distance = distance * (1.0 + odometry.scale_error) + rng.normal(
            0.0, odometry.distance_noise * math.sqrt(distance))
        odom_turn = turn + math.radians(odometry.heading_drift_deg_per_m * distance + rng.normal(
            0.0, odometry.heading_noise_deg * math.sqrt(distance)))
        ox += odom_distance * math.cos(oheading + odom_turn / 2)
        oy += odom_distance * math.sin(oheading + odom_turn / 2)
        oheading += odom_turn
        stamps.append(int(round(frame * dt * 1e9)))
        truth.append(start @ Transform.from_xyz_rpy([x, y, 0.0], [0.0, 0.0, heading]))
        odom.append(Transform.from_xyz_rpy([ox, oy, 0.0], [0.0, 0.0, oheading]))
    return Trajectory(stamps, truth, odom)


def regressions(rng: np.random.Generator, truth: Sequence[Transform],
                model: RegressionModel) -> List[Transform]:
    """Return one regressed base pose per frame (see the module docstring)."""
    stddev = np.sqrt(np.diag(model.covariance()))
    # Student-t scaled to unit variance, then to the stated standard deviations.
    unit = math.sqrt((model.dof - 2.0) / model.dof)
    innovation_scale = math.sqrt(1.0 - model.correlation ** 2)
    error = np.zeros(6)
    poses = []
    for pose in truth:
        draw = rng.standard_t(model.dof, 6) * unit * stddev
        error = model.correlation * error + innovation_scale * draw
        current = error
        if rng.random() < model.outlier_fraction:
            direction = rng.normal(size=3)
            direction[2] *= 0.1
            offset = direction / np.linalg.norm(direction) * rng.uniform(3.0, 15.0)
            axis = rng.normal(size=3)
            angle = math.radians(rng.uniform(0.0, 60.0))
            current = np.concatenate([offset, axis / np.linalg.norm(axis) * angle])
        poses.append(Transform.from_rotation(pose.translation + current[:3],
                                             Rotation.from_rotvec(current[3:])
                                             * pose.rotation_object))
    return poses


def errors(estimates: Sequence[Transform], truth: Sequence[Transform]) -> np.ndarray:
    """(N, 6) ROS-order errors: position difference, rotation vector about the map axes."""
    return np.stack([np.concatenate([est.translation - true.translation,
                                     (est.rotation_object * true.rotation_object.inv())
                                     .as_rotvec()])
                     for est, true in zip(estimates, truth)])


def jitter(estimates: Sequence[Transform], truth: Sequence[Transform]) -> Dict[str, float]:
    """RMS of (estimated change - true change) between consecutive frames."""
    position, angle = [], []
    for k in range(1, len(truth)):
        position.append(np.linalg.norm((estimates[k].translation - estimates[k - 1].translation)
                                       - (truth[k].translation - truth[k - 1].translation)))
        estimated_turn = estimates[k - 1].rotation_object.inv() * estimates[k].rotation_object
        true_turn = truth[k - 1].rotation_object.inv() * truth[k].rotation_object
        angle.append((estimated_turn * true_turn.inv()).magnitude())
    return {'position_m': float(np.sqrt(np.mean(np.square(position)))),
            'orientation_deg': math.degrees(float(np.sqrt(np.mean(np.square(angle)))))}


def coverage(error: np.ndarray, covariances: Sequence[np.ndarray], axes: Sequence[int]) -> float:
    """Fraction of errors inside the 2-sigma ellipsoid of their covariance on ``axes``."""
    inside = [float(e[axes] @ np.linalg.inv(c[np.ix_(axes, axes)]) @ e[axes]) <= SIGMA ** 2
              for e, c in zip(error, covariances)]
    return float(np.mean(inside))


def summary(estimates: Sequence[Transform], covariances: Sequence[np.ndarray],
            truth: Sequence[Transform], two_d: bool) -> Dict[str, Any]:
    """Return the issue's figures for one estimate stream."""
    error = errors(estimates, truth)
    position = np.linalg.norm(error[:, :2] if two_d else error[:, :3], axis=1)
    orientation = np.degrees(np.abs(error[:, 5]) if two_d
                             else np.linalg.norm(error[:, 3:], axis=1))
    position_axes, orientation_axes = ([0, 1], [5]) if two_d else ([0, 1, 2], [3, 4, 5])
    return {
        'position_m': {'median': float(np.median(position)),
                       'p95': float(np.percentile(position, 95))},
        'orientation_deg': {'median': float(np.median(orientation)),
                            'p95': float(np.percentile(orientation, 95))},
        'jitter': jitter(estimates, truth),
        'coverage_2sigma': {
            'position': coverage(error, covariances, position_axes),
            'orientation': coverage(error, covariances, orientation_axes),
            'nominal_position': float(chi2.cdf(SIGMA ** 2, len(position_axes))),
            'nominal_orientation': float(chi2.cdf(SIGMA ** 2, len(orientation_axes)))},
    }


def run_seed(seed: int, frames: int, config: FusionConfig, odometry: OdometryModel,
             model: RegressionModel) -> Tuple[Dict[str, Any], List[float]]:
    """Simulate one seeded run; return per-frame and fused figures, and each add()'s ms."""
    rng = np.random.default_rng(seed)
    path = simulate_path(rng, frames, odometry)
    measured = regressions(rng, path.true_map_base, model)
    frame_cov = model.covariance()
    fusion = MapOdomFusion(config)
    fused, fused_cov, reasons, add_ms = [], [], {}, []
    for stamp, pose, odom in zip(path.stamps_ns, measured, path.odom_base):
        started = time.perf_counter()
        result = fusion.add(stamp, pose @ odom.inverse(), frame_cov, odom)
        add_ms.append((time.perf_counter() - started) * 1e3)
        reasons[result.reason] = reasons.get(result.reason, 0) + 1
        fused.append(result.T_map_odom @ odom)
        fused_cov.append(result.covariance)
    truth = path.true_map_base
    if config.two_d:
        measured = [pose.flatten_2d() for pose in measured]
    travelled = sum(np.linalg.norm(b.translation - a.translation)
                    for a, b in zip(truth, truth[1:]))
    odom_end = path.odom_base[-1] @ path.odom_base[0].inverse()
    true_end = (truth[0].inverse() @ truth[-1])
    return {
        'seed': seed, 'frames': frames, 'travelled_m': float(travelled),
        'odometry_end_error_m': float(np.linalg.norm(odom_end.translation
                                                     - true_end.translation)),
        'per_frame': summary(measured, [frame_cov] * frames, truth, config.two_d),
        'fused': summary(fused, fused_cov, truth, config.two_d),
        'reasons': reasons,
        'add_ms': timing(add_ms),
    }, add_ms


def timing(add_ms: Sequence[float]) -> Dict[str, Any]:
    """Return the median and p95 of add() times (ms), their count, and the issue-24 goal."""
    median, p95 = (float(value) for value in np.percentile(add_ms, [50, 95]))
    return {'median': median, 'p95': p95, 'frames': len(add_ms), 'goal_median_ms': ADD_MS_GOAL,
            'goal_met': median <= ADD_MS_GOAL}


def goals(result: Dict[str, Any]) -> Dict[str, Any]:
    """Return the issue's three goals, as ratios and pass/fail."""
    frame, fused = result['per_frame'], result['fused']
    p95_ratio = fused['position_m']['p95'] / frame['position_m']['p95']
    jitter_ratio = fused['jitter']['position_m'] / frame['jitter']['position_m']
    coverage_gap = 100.0 * (fused['coverage_2sigma']['position']
                            - fused['coverage_2sigma']['nominal_position'])
    return {'p95_position_ratio': p95_ratio, 'p95_met': p95_ratio <= 0.5,
            'jitter_ratio': jitter_ratio, 'jitter_met': jitter_ratio <= 0.2,
            'coverage_gap_points': coverage_gap, 'coverage_met': abs(coverage_gap) <= 10.0}


def compare_gtsam(rng: np.random.Generator, windows: int, loss: str,
                  scale: float) -> Dict[str, float]:
    """Largest difference between our IRLS mean and GTSAM's on random windows with outliers."""
    import gtsam  # only for this check; the node does not need it

    model = RegressionModel()
    worst = {'position_m': 0.0, 'orientation_rad': 0.0, 'covariance_rel': 0.0}
    for _ in range(windows):
        truth = Transform.from_xyz_rpy(rng.normal(0, 5, 3), rng.uniform(-math.pi, math.pi, 3))
        poses = regressions(rng, [truth] * int(rng.integers(3, 31)), model)
        covs = []
        for _pose in poses:
            a = rng.normal(size=(6, 6)) * 0.3
            covs.append(model.covariance() @ (np.eye(6) + a @ a.T / 6) * rng.uniform(0.5, 2))
        covs = [0.5 * (c + c.T) for c in covs]
        covs = [c + np.eye(6) * 1e-9 for c in covs]
        ours = robust_mean(np.stack([p.translation for p in poses]),
                           Rotation.from_quat(np.stack([p.rotation for p in poses])),
                           np.stack(covs), loss, scale)
        graph = gtsam.NonlinearFactorGraph()
        for pose, cov in zip(poses, covs):
            estimator = (gtsam.noiseModel.mEstimator.Cauchy.Create(scale) if loss == 'cauchy'
                         else gtsam.noiseModel.mEstimator.Huber.Create(scale))
            noise = gtsam.noiseModel.Robust.Create(
                estimator, gtsam.noiseModel.Gaussian.Covariance(ros_to_gtsam(cov, pose)))
            graph.add(gtsam.PriorFactorPose3(0, gtsam.Pose3(pose.as_matrix()), noise))
        initial = gtsam.Values()
        initial.insert(0, gtsam.Pose3(ours.pose.as_matrix()))
        params = gtsam.LevenbergMarquardtParams()
        params.setRelativeErrorTol(1e-14)
        params.setAbsoluteErrorTol(1e-14)
        solved = gtsam.LevenbergMarquardtOptimizer(graph, initial, params).optimize()
        theirs = Transform.from_matrix(solved.atPose3(0).matrix())
        marginal = gtsam.Marginals(graph, solved).marginalCovariance(0)
        their_cov = gtsam_to_ros(marginal, theirs)
        worst['position_m'] = max(worst['position_m'], float(
            np.linalg.norm(theirs.translation - ours.pose.translation)))
        worst['orientation_rad'] = max(worst['orientation_rad'],
                                       theirs.rotation_angle_to(ours.pose))
        worst['covariance_rel'] = max(worst['covariance_rel'], float(
            np.linalg.norm(their_cov - ours.covariance) / np.linalg.norm(ours.covariance)))
    return worst


def _ros_to_gtsam_jacobian(pose: Transform) -> np.ndarray:
    """d(GTSAM tangent: body rotation, body translation) / d(ROS error: map t, map rotation)."""
    rotation_t = pose.rotation_object.as_matrix().T
    jacobian = np.zeros((6, 6))
    jacobian[:3, 3:] = rotation_t      # body rotation = R^T (rotation about map axes)
    jacobian[3:, :3] = rotation_t      # body translation = R^T (map translation), first order
    return jacobian


def ros_to_gtsam(cov: np.ndarray, pose: Transform) -> np.ndarray:
    """Covariance in ROS order (x y z, rot about map axes) -> GTSAM Pose3 tangent order."""
    jacobian = _ros_to_gtsam_jacobian(pose)
    return jacobian @ cov @ jacobian.T


def gtsam_to_ros(cov: np.ndarray, pose: Transform) -> np.ndarray:
    """Inverse of ``ros_to_gtsam``."""
    inverse = np.linalg.inv(_ros_to_gtsam_jacobian(pose))
    return inverse @ cov @ inverse.T


def print_table(result: Dict[str, Any]) -> None:
    """Print one seed's per-frame vs fused figures."""
    print(f"seed {result['seed']}: {result['frames']} frames, {result['travelled_m']:.0f} m, "
          f"odometry end error {result['odometry_end_error_m']:.2f} m")
    print('             position med / p95   orientation med / p95   jitter pos / rot'
          '     2-sigma coverage pos / rot')
    for name in ('per_frame', 'fused'):
        r = result[name]
        cover = r['coverage_2sigma']
        print(f"  {name:9s}  {r['position_m']['median']:6.3f} / {r['position_m']['p95']:6.3f} m"
              f"   {r['orientation_deg']['median']:6.2f} / {r['orientation_deg']['p95']:6.2f} deg"
              f"   {r['jitter']['position_m']:6.3f} m / {r['jitter']['orientation_deg']:5.2f} deg"
              f"   {100 * cover['position']:5.1f} % / {100 * cover['orientation']:5.1f} %"
              f" (nominal {100 * cover['nominal_position']:.1f} %)")
    g = result['goals']
    print(f"  goals: p95 ratio {g['p95_position_ratio']:.3f} (<= 0.5: {g['p95_met']}), jitter "
          f"ratio {g['jitter_ratio']:.3f} (<= 0.2: {g['jitter_met']}), coverage "
          f"{g['coverage_gap_points']:+.1f} points (within 10: {g['coverage_met']}); "
          f"add() median {result['add_ms']['median']:.2f} ms; {result['reasons']}")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_common_arguments(parser)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1],
                        help='simulation seeds (default 0 1; seed 1 was never used to tune)')
    parser.add_argument('--two-d', action='store_true', help='fuse in SE(2)')
    parser.add_argument('--robust-loss', choices=('cauchy', 'huber'), default='cauchy')
    parser.add_argument('--error-correlation', type=float, default=0.0,
                        help='AR(1) coefficient of the regression error between frames')
    parser.add_argument('--model-correlation', action='store_true',
                        help="tell the fusion the simulated correlation (error_correlation_s)")
    parser.add_argument('--compare-gtsam', type=int, default=0, metavar='WINDOWS',
                        help='also compare our robust mean with GTSAM on this many windows')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    mode, machine, notes = begin(args)
    correlation_s = 0.0
    if args.model_correlation and args.error_correlation > 0.0:
        # AR(1) coefficient rho per frame <=> exp(-dt / tau).
        correlation_s = -1.0 / FRAME_RATE_HZ / math.log(args.error_correlation)
    config = FusionConfig(two_d=args.two_d, robust_loss=args.robust_loss,
                          error_correlation_s=correlation_s)
    odometry = OdometryModel()
    model = RegressionModel(correlation=args.error_correlation)
    frames = int(DURATION_S[mode] * FRAME_RATE_HZ)
    results: Dict[str, Any] = {'seeds': []}
    runs = [run_seed(seed, frames, config, odometry, model) for seed in args.seeds]
    for result, _ in runs:
        result['goals'] = goals(result)
        print_table(result)
        results['seeds'].append(result)
    results['add_ms'] = timed = timing([ms for _, add_ms in runs for ms in add_ms])
    print(f"add() over all {timed['frames']} frames: median {timed['median']:.3f} ms, p95 "
          f"{timed['p95']:.3f} ms (goal: median <= {ADD_MS_GOAL} ms, met: {timed['goal_met']})")
    if args.compare_gtsam:
        results['gtsam_difference'] = compare_gtsam(
            np.random.default_rng(123), args.compare_gtsam, config.robust_loss,
            math.sqrt(float(chi2.ppf(0.95, 6))))
        print(f"GTSAM vs ours, worst over {args.compare_gtsam} windows: "
              f"{results['gtsam_difference']}")
    settings = {'threads': args.threads, 'fusion': asdict(config), 'odometry': asdict(odometry),
                'regression': asdict(model), 'frame_rate_hz': FRAME_RATE_HZ,
                'duration_s': DURATION_S[mode]}
    return save_results(args.out, NAME, mode, machine, settings, results, notes)


if __name__ == '__main__':
    sys.exit(main())
