"""The vectorised fusion equals the straightforward one it replaced (issue 24), to ~1e-9.

``reference_robust_mean`` and ``ReferenceFusion`` below are the scalar code as it was before
the vectorisation: scipy ``Rotation`` objects, ``Transform`` compositions, one ``pinv`` per use,
one sample at a time. They are kept here, small and slow, as the definition the fast code must
reproduce on random windows and streams (6-DoF and 2-D, Cauchy and Huber, outliers, the gate and
its re-vote, windows by time, distance and count, drift, stale stamps, resets), with frames
independent (issue 24) or correlated (issue 25: the model read pair by pair, scenes changing).
"""
import math
from typing import List, Optional

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mspr_ros.estimation.error_correlation import ErrorCorrelation
from mspr_ros.estimation.fusion import (
    ESTIMATE, FUSED, FusionConfig, FusionResult, GATED, loss_scale, MapOdomFusion, REVOTED,
    SEEDED, STALE)
from mspr_ros.estimation.fusion_robust import (
    informations, medoid_index, robust_cost, robust_mean, robust_weight, solve_means)
from mspr_ros.geometry.covariance import two_d_covariance, validate_covariance
from mspr_ros.geometry.transforms import Transform

TOLERANCE = 1e-9


def pinv(matrix: np.ndarray) -> np.ndarray:
    """Return the pseudo-inverse of symmetric matrices."""
    return np.linalg.pinv(matrix, hermitian=True)


def residuals_of(translations, rotations: Rotation, translation, rotation: Rotation):
    """Return the (N, 6) errors of N samples against one pose."""
    return np.concatenate([translations - translation, (rotations * rotation.inv()).as_rotvec()],
                          axis=1)


def reference_robust_mean(translations, rotations: Rotation, covariances, loss, scale,
                          initial: Optional[Transform] = None, max_iterations=50,
                          tolerance=1e-8):
    """Return the IRLS robust mean as before issue 24: pose, covariance, weights, s2, steps."""
    infos = pinv(covariances)
    if initial is None:
        costs = [np.sum(robust_cost(np.einsum('ni,nij,nj->n', r, infos, r), loss, scale))
                 for r in (residuals_of(translations, rotations, translations[k], rotations[k])
                           for k in range(len(translations)))]
        index = int(np.argmin(costs))
        translation, rotation = translations[index], rotations[index]
    else:
        translation, rotation = np.array(initial.translation), initial.rotation_object
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        residuals = residuals_of(translations, rotations, translation, rotation)
        weights = robust_weight(np.einsum('ni,nij,nj->n', residuals, infos, residuals), loss,
                                scale)
        step = np.linalg.solve(np.einsum('n,nij->ij', weights, infos),
                               np.einsum('n,nij,nj->i', weights, infos, residuals))
        translation = translation + step[:3]
        rotation = Rotation.from_rotvec(step[3:]) * rotation
        if float(np.linalg.norm(step)) < tolerance:
            break
    residuals = residuals_of(translations, rotations, translation, rotation)
    s2 = np.maximum(np.einsum('ni,nij,nj->n', residuals, infos, residuals), 0.0)
    weights = robust_weight(s2, loss, scale)
    covariance = pinv(np.einsum('n,nij->ij', weights, infos))
    return (Transform.from_rotation(translation, rotation), 0.5 * (covariance + covariance.T),
            weights, s2, iterations)


def planar(covariances: np.ndarray) -> np.ndarray:
    """Return ``two_d_covariance`` of each covariance."""
    return np.stack([two_d_covariance(c) for c in covariances])


def skew(v: np.ndarray) -> np.ndarray:
    """Return the cross-product matrix of a 3-vector."""
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


class ReferenceFusion:
    """``MapOdomFusion`` as written before issue 24 (same decisions, same math, scalar)."""

    def __init__(self, config: FusionConfig) -> None:
        self.config, self.scale = config, loss_scale(config.two_d)
        self.samples: List[dict] = []
        self.newest: Optional[dict] = None
        self.state = None            # (T_map_odom, pose, covariance)

    def reset(self) -> None:
        self.samples, self.newest, self.state = [], None, None

    def add(self, stamp, T_map_odom, covariance, T_odom_base, scene='') -> FusionResult:
        cov = validate_covariance(covariance)
        if self.config.two_d:
            flat_odometry = T_odom_base.flatten_2d()
            T_map_odom = (T_map_odom @ T_odom_base).flatten_2d() @ flat_odometry.inverse()
            T_odom_base, cov = flat_odometry, two_d_covariance(cov)
        if self.newest is not None and stamp < self.newest['stamp']:
            return self.result(False, False, STALE)
        travelled = 0.0 if self.newest is None else self.newest['odometry_m'] + float(
            np.linalg.norm(T_odom_base.translation - self.newest['T_odom_base'].translation))
        sample = dict(stamp=stamp, T_map_odom=T_map_odom, cov=cov, T_odom_base=T_odom_base,
                      odometry_m=travelled, accepted=True, scene=scene)
        self.newest = sample
        kept = [s for s in self.samples if stamp - s['stamp'] <= self.config.window_s * 1e9
                and travelled - s['odometry_m'] <= self.config.window_distance_m]
        self.samples = kept[max(0, len(kept) - self.config.max_samples + 1):]
        accepted = [s for s in self.samples if s['accepted']]
        self.samples.append(sample)
        if not accepted:
            self.state = self.fuse([sample])
            return self.result(True, True, SEEDED)
        previous = self.fuse(accepted)
        translations, rotations, covs = self.carry([sample])
        residual = residuals_of(translations, rotations, previous[1].translation,
                                previous[1].rotation_object)[0]
        held = self.distances(*self.carry(accepted), previous[1])
        scatter = max(1.0, float(np.mean(np.square(held))) / (3 if self.config.two_d else 6))
        distance = math.sqrt(max(float(residual @ pinv(self.gated(covs[0] + scatter * previous[2]))
                                       @ residual), 0.0))
        if distance <= self.config.gate_mahalanobis:
            self.state = self.fuse(accepted + [sample])
            return self.result(True, self.inlier(sample), FUSED)
        sample['accepted'], self.state = False, previous
        if sum(not s['accepted'] for s in self.samples) <= len(accepted):
            return self.result(False, False, GATED)
        translations, rotations, covs = self.carry(self.samples)
        pose, covariance, _, _, _ = reference_robust_mean(
            translations, rotations, covs, self.config.robust_loss, self.scale)
        for s, d in zip(self.samples, self.distances(translations, rotations, covs, pose)):
            s['accepted'] = bool(d <= self.config.gate_mahalanobis)
        accepted = [s for s in self.samples if s['accepted']]
        self.state = self.fuse(accepted) if accepted else self.estimate_from(pose, covariance)
        return self.result(sample['accepted'], sample['accepted'] and self.inlier(sample),
                           REVOTED)

    def carry(self, samples):
        newest = self.newest['T_odom_base']
        translations, rotations, covs = [], [], []
        for s in samples:
            predicted = s['T_map_odom'] @ newest
            lever = s['T_map_odom'].rotation_object.apply(
                newest.translation - s['T_odom_base'].translation)
            jacobian = np.eye(6)
            jacobian[:3, 3:] = -skew(lever)
            drift = np.diag((np.repeat([self.config.odometry_drift_per_m,
                                        self.config.odometry_rotation_drift_per_m], 3)
                             * (self.newest['odometry_m'] - s['odometry_m'])) ** 2)
            translations.append(predicted.translation)
            rotations.append(predicted.rotation)
            covs.append(jacobian @ s['cov'] @ jacobian.T + drift)
        covs = np.stack(covs)
        return (np.stack(translations), Rotation.from_quat(np.stack(rotations)),
                planar(covs) if self.config.two_d else covs)

    def fuse(self, samples):
        translations, rotations, covs = self.carry(samples)
        initial = None if self.state is None else self.state[0] @ self.newest['T_odom_base']
        pose, covariance, _, s2, _ = reference_robust_mean(
            translations, rotations, covs, self.config.robust_loss, self.scale, initial)
        inside = s2 <= self.config.gate_mahalanobis ** 2
        if np.any(inside):
            covariance = pinv(np.sum(pinv(covs[inside]), axis=0))
            kept = [s for s, k in zip(samples, inside) if k]
            covariance = covariance * self.design_factor(kept, covs[inside])
            covariance = 0.5 * (covariance + covariance.T)
        return self.estimate_from(pose, covariance)

    def design_factor(self, samples, covs) -> float:
        """Return ``sum_ij sqrt(w_i w_j) rho_ij / sum_i w_i``, pair by pair."""
        axes = np.array([0, 1, 5]) if self.config.two_d else np.arange(6)
        weights = [max(np.linalg.det(pinv(c[np.ix_(axes, axes)])), 0.0) ** (1.0 / len(axes))
                   for c in covs]
        return sum(math.sqrt(a * b) * self.rho(s, t) for a, s in zip(weights, samples)
                   for b, t in zip(weights, samples)) / sum(weights)

    def rho(self, first, second) -> float:
        if first is second or first['scene'] != second['scene']:
            return float(first is second)
        m = self.config.error_correlation.get(first['scene'], self.config.default_correlation)
        a, b = first['T_odom_base'], second['T_odom_base']
        changes = (np.linalg.norm(a.translation - b.translation),
                   (a.rotation_object.inv() * b.rotation_object).magnitude(),
                   abs(first['stamp'] - second['stamp']) / 1e9)
        exponent = sum(0.0 if math.isinf(size) else math.inf if size == 0.0 else change / size
                       for change, size in zip(changes, (m.length_m, m.angle_rad, m.time_s)))
        return m.floor + (1.0 - m.floor) * math.exp(-exponent)

    def estimate_from(self, pose, covariance):
        if self.config.two_d:
            pose, covariance = pose.flatten_2d(), planar(covariance[None])[0]
        T_map_odom = pose @ self.newest['T_odom_base'].inverse()
        return (T_map_odom.flatten_2d() if self.config.two_d else T_map_odom), pose, covariance

    def gated(self, cov):
        if not self.config.two_d:
            return cov
        masked, axes = np.zeros((6, 6)), np.ix_([0, 1, 5], [0, 1, 5])
        masked[axes] = cov[axes]
        return masked

    def distances(self, translations, rotations, covs, pose):
        residuals = residuals_of(translations, rotations, pose.translation, pose.rotation_object)
        return [math.sqrt(max(float(r @ pinv(self.gated(c)) @ r), 0.0))
                for r, c in zip(residuals, covs)]

    def inlier(self, sample) -> bool:
        distance = self.distances(*self.carry([sample]), self.state[1])[0]
        return bool(distance <= self.config.gate_mahalanobis)

    def result(self, accepted, inlier, reason) -> FusionResult:
        size = sum(1 for s in self.samples if s['accepted'])
        return FusionResult(accepted, inlier, self.state[0], self.state[2], size, reason)


def random_covariance(rng: np.random.Generator) -> np.ndarray:
    """Return a calibrated-looking covariance: 0.2-0.6 m, 3-8 degrees, random correlations.

    Condition numbers near 1e3, as calibrated ones: results of any code, this reference's too,
    move with rounding times the condition number, so an ill-conditioned window would measure
    that rather than whether both codes do the same math.
    """
    stddev = np.concatenate([rng.uniform(0.2, 0.6, 3), np.radians(rng.uniform(3.0, 8.0, 3))])
    mixing = 0.4 * rng.normal(size=(6, 6))
    correlation = mixing @ mixing.T + 0.5 * np.eye(6)
    correlation /= np.sqrt(np.outer(np.diag(correlation), np.diag(correlation)))
    return correlation * np.outer(stddev, stddev)


def assert_same(ours: FusionResult, reference: FusionResult) -> None:
    assert (ours.reason, ours.accepted, ours.inlier, ours.window_size) == (
        reference.reason, reference.accepted, reference.inlier, reference.window_size)
    assert ours.T_map_odom.almost_equal(reference.T_map_odom, TOLERANCE, TOLERANCE)
    scale = float(np.max(np.abs(reference.covariance)))
    np.testing.assert_allclose(ours.covariance, reference.covariance, rtol=TOLERANCE,
                               atol=TOLERANCE * scale)


def stream(seed: int, frames: int, tilted: bool):
    """Yield (stamp, map <- odom, covariance, odom <- base, reset, scene), with outliers."""
    rng = np.random.default_rng(seed)
    truth = Transform.from_xyz_rpy(rng.normal(0.0, 3.0, 3), rng.uniform(-math.pi, math.pi, 3))
    x = y = heading = 0.0
    stamp = 0
    for frame in range(frames):
        heading += rng.normal(0.0, 0.15)
        speed = rng.choice([0.0, 0.3, 0.9])   # standing still too: drift 0, zero levers
        x, y = x + speed * math.cos(heading), y + speed * math.sin(heading)
        tilt = rng.normal(0.0, 0.05, 2) if tilted else np.zeros(2)
        odom = Transform.from_xyz_rpy([x, y, 0.1 if tilted else 0.0], [*tilt, heading])
        cov = random_covariance(rng)
        error = rng.multivariate_normal(np.zeros(6), cov)
        if rng.random() < 0.12:   # a wrong place
            error = np.concatenate([rng.normal(0.0, 6.0, 3), rng.normal(0.0, 1.0, 3)])
        base = truth @ odom
        measured = Transform.from_rotation(base.translation + error[:3],
                                           Rotation.from_rotvec(error[3:]) * base.rotation_object)
        stamp += int(rng.choice([100_000_000, 200_000_000, 0]))
        late = rng.random() < 0.03
        scene = 'a' if frame % 40 < 25 else rng.choice(['a', 'b', 'c'])  # runs of one, mixes
        yield (stamp - 50_000_000 if late else stamp, measured @ odom.inverse(), cov, odom,
               rng.random() < 0.01, scene)


INDEPENDENT = ErrorCorrelation.independent()
LEARNED = {'a': ErrorCorrelation(1.5, 0.4, 2.0, 0.2, 'bundle'),   # 'c' gets the default's
           'b': ErrorCorrelation(0.5, math.inf, math.inf, 0.0, 'fitted')}
CONFIGS = {name: FusionConfig(default_correlation=INDEPENDENT, **fields) for name, fields in [
    ('cauchy', {}), ('huber', {'robust_loss': 'huber'}), ('two_d', {'two_d': True}),
    ('small-windows', {'window_s': 1.5, 'window_distance_m': 2.0, 'max_samples': 7}),
    ('tight-gate-no-drift', {'gate_mahalanobis': 2.0, 'odometry_drift_per_m': 0.0,
                             'odometry_rotation_drift_per_m': 0.0}),
    ('rotation-drift', {'odometry_drift_per_m': 0.001, 'odometry_rotation_drift_per_m': 0.05})]}
CONFIGS.update({'one-frame': FusionConfig(), 'two_d-huber-correlated': FusionConfig(
    two_d=True, robust_loss='huber', error_correlation=LEARNED), 'correlated': FusionConfig(
    error_correlation=LEARNED, default_correlation=ErrorCorrelation.from_time(0.3))})


@pytest.mark.parametrize('name', sorted(CONFIGS))
@pytest.mark.parametrize('seed', [0, 1])
def test_fusion_stream_equals_the_reference(name, seed):
    config = CONFIGS[name]
    ours, reference = MapOdomFusion(config), ReferenceFusion(config)
    reasons = set()
    for stamp, T_map_odom, cov, odom, reset, scene in stream(seed, 120, tilted=config.two_d):
        if reset:
            ours.reset()
            reference.reset()
        result = ours.add(stamp, T_map_odom, cov, odom, scene=scene)
        assert_same(result, reference.add(stamp, T_map_odom, cov, odom, scene))
        reasons.add(result.reason)
    assert {SEEDED, FUSED, GATED} <= reasons
    estimate = ours.estimate()
    assert estimate.reason == ESTIMATE and estimate.T_map_odom is result.T_map_odom


@pytest.mark.parametrize('two_d', [False, True])
def test_revote_and_singular_covariances_equal_the_reference(two_d):
    """Outliers that seed the window (re-votes), and zero-variance axes (the pseudo-inverse)."""
    # Independent frames: a singular covariance has no scalar information to weigh pairs by.
    config = FusionConfig(two_d=two_d, max_samples=12, default_correlation=INDEPENDENT)
    ours, reference = MapOdomFusion(config), ReferenceFusion(config)
    rng = np.random.default_rng(4)
    reasons = []
    for step in range(60):
        odom = Transform.from_xyz_rpy([0.1 * step, 0.0, 0.0], [0.0, 0.0, 0.02 * step])
        cov = random_covariance(rng)
        if step % 3 == 1:   # roll known exactly: a singular covariance (never alone in a mean,
            cov[3, :] = cov[:, 3] = 0.0   # whose step would then be rounding noise, in both)
        place = [20.0, 5.0, 0.0] if (step // 15) % 2 else [0.0, 0.0, 0.0]
        T_map_odom = Transform.from_xyz_rpy(np.add(place, rng.normal(0, 0.1, 3)),
                                            [0.0, 0.0, 0.3 + rng.normal(0, 0.02)])
        result = ours.add(step, T_map_odom, cov, odom)
        assert_same(result, reference.add(step, T_map_odom, cov, odom))
        reasons.append(result.reason)
    assert REVOTED in reasons and GATED in reasons


def random_window(rng: np.random.Generator, count: int):
    truth = Transform.from_xyz_rpy(rng.normal(0.0, 5.0, 3), rng.uniform(-math.pi, math.pi, 3))
    covariances = np.stack([random_covariance(rng) * rng.uniform(0.5, 2.0)
                            for _ in range(count)])
    errors = np.stack([rng.multivariate_normal(np.zeros(6), c) for c in covariances])
    outliers = rng.random(count) < 0.2
    errors[outliers] = np.concatenate([rng.normal(0.0, 8.0, (outliers.sum(), 3)),
                                       rng.normal(0.0, 1.5, (outliers.sum(), 3))], axis=1)
    translations = truth.translation + errors[:, :3]
    rotations = Rotation.from_rotvec(errors[:, 3:]) * truth.rotation_object
    return translations, rotations, covariances, truth


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), count=st.integers(1, 30),
       loss=st.sampled_from(['cauchy', 'huber']), from_truth=st.booleans())
def test_robust_mean_equals_the_reference(seed, count, loss, from_truth):
    rng = np.random.default_rng(seed)
    translations, rotations, covariances, truth = random_window(rng, count)
    initial = truth if from_truth else None
    scale = loss_scale(False)
    ours = robust_mean(translations, rotations, covariances, loss, scale, initial)
    pose, covariance, weights, s2, iterations = reference_robust_mean(
        translations, rotations, covariances, loss, scale, initial)
    assert ours.iterations == iterations
    assert ours.pose.almost_equal(pose, TOLERANCE, TOLERANCE)
    np.testing.assert_allclose(ours.covariance, covariance, rtol=TOLERANCE,
                               atol=TOLERANCE * np.max(np.abs(covariance)))
    np.testing.assert_allclose(ours.weights, weights, rtol=TOLERANCE, atol=1e-12)
    np.testing.assert_allclose(ours.squared_distances, s2, rtol=TOLERANCE, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), count=st.integers(2, 30))
def test_means_solved_together_equal_means_solved_alone(seed, count):
    """``solve_means`` on several subsets is each subset's own robust mean, step for step."""
    rng = np.random.default_rng(seed)
    translations, rotations, covariances, truth = random_window(rng, count)
    quats, infos = rotations.as_quat(), informations(covariances)
    masks = rng.random((3, count)) < 0.7
    masks[:, 0] = True
    together = solve_means(translations, quats, infos, masks, 'cauchy', 3.5,
                           truth.translation, truth.rotation)
    for index, mask in enumerate(masks):
        alone = robust_mean(translations[mask], rotations[mask], covariances[mask], 'cauchy',
                            3.5, truth)
        assert together.iterations[index] == alone.iterations
        np.testing.assert_allclose(together.translations[index], alone.pose.translation,
                                   rtol=0.0, atol=1e-11)
        np.testing.assert_allclose(together.squared_distances[index, mask],
                                   alone.squared_distances, rtol=1e-10, atol=1e-12)
    medoid = medoid_index(translations, quats, infos, 'cauchy', 3.5)
    reference_costs = [np.sum(robust_cost(np.einsum(
        'ni,nij,nj->n', r, pinv(covariances), r), 'cauchy', 3.5))
        for r in (residuals_of(translations, rotations, translations[k], rotations[k])
                  for k in range(count))]
    assert medoid == int(np.argmin(reference_costs))


def test_informations_is_the_pseudo_inverse():
    """Well conditioned: the plain inverse; singular or nearly so: the pseudo-inverse."""
    rng = np.random.default_rng(2)
    covariances = np.stack([random_covariance(rng) for _ in range(5)])
    np.testing.assert_allclose(informations(covariances), pinv(covariances), rtol=1e-10)
    singular = covariances.copy()
    singular[1, 2, :] = singular[1, :, 2] = 0.0
    nearly = replace_eigenvalue(covariances[3], 1e-17)
    for batch in (singular, np.stack([covariances[0], nearly])):
        np.testing.assert_allclose(informations(batch), pinv(batch), rtol=1e-10, atol=1e-12)


def replace_eigenvalue(matrix: np.ndarray, value: float) -> np.ndarray:
    """Return ``matrix`` with its smallest eigenvalue set to ``value`` times the largest."""
    values, vectors = np.linalg.eigh(matrix)
    values[0] = value * values[-1]
    return (vectors * values) @ vectors.T


def test_the_reference_reads_every_config_field():
    """A new FusionConfig field needs its reference here (or this module stops proving much)."""
    assert set(FusionConfig.__dataclass_fields__) == {
        'window_s', 'window_distance_m', 'max_samples', 'robust_loss', 'gate_mahalanobis',
        'two_d', 'odometry_drift_per_m', 'odometry_rotation_drift_per_m', 'error_correlation',
        'default_correlation'}
