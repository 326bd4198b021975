"""Robust weighted mean of pose samples on SE(3): iteratively reweighted least squares (ROS-free).

Each sample is a pose with a 6x6 covariance in ROS order (x, y, z, rot x, rot y, rot z): the
position error is additive in the parent frame and the orientation error a small rotation about
the parent's fixed axes, ``R_true = exp(delta) R_est`` (as ``mspr_ros.geometry.covariance``).
The mean minimises ``sum_k rho(r_k^T C_k^-1 r_k)`` with ``r_k`` the error of sample ``k`` against
the estimate and ``rho`` a Cauchy or Huber loss: each Gauss-Newton step is a weighted mean of the
errors with weights ``w_k = rho'(s_k^2)`` (IRLS). This is what a factor graph with one pose
variable and one robust prior factor per sample solves; the fused covariance
``(sum_k w_k C_k^-1)^-1`` is what its linearised marginal gives.

Speed (issue 24): the node runs two solves per frame on a window of ~30 samples, ~9 steps each,
so no scipy ``Rotation`` (10-30 us a call) is made per sample or step: orientations are stacked
xyzw quaternions, composed by one matrix product, with scipy's log map written out for a whole
stack; the information matrices are inverted once per solve (``informations``); ``solve_means``
runs several means over subsets of one stack in the same numpy calls, and moves each pose in
plain floats. The start, the steps and the stopping rule are the scalar loop's it replaced, so
results agree to rounding (``test/test_fusion_equivalence.py`` keeps that loop as reference).
"""
from dataclasses import dataclass
import math
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from scipy.linalg import get_lapack_funcs
from scipy.spatial.transform import Rotation

from mspr_ros.geometry.transforms import Transform

LOSSES = ('cauchy', 'huber')
ALL_AXES = np.arange(6)
PLANAR_AXES = np.array([0, 1, 5])      # x, y, yaw: what two_d estimates
# Condition number (its Frobenius bound) up to which ``informations`` takes the plain inverse:
# pinv drops no eigenvalue of such a matrix (only those under 1e-15 of the largest), and both
# agree to rounding times the condition number, 1e-8 relative at worst (calibrated covariances
# are near 1e3). Worse conditioned or singular matrices keep the pseudo-inverse.
_PLAIN_INVERSE_CONDITION = 1e8
# p (x) q == p @ right_matrix(q) for xyzw row vectors: entry [i, j] is q[_INDEX] * _SIGN.
_RIGHT_INDEX = np.array([[3, 2, 1, 0], [2, 3, 0, 1], [1, 0, 3, 2], [0, 1, 2, 3]])
_RIGHT_SIGN = np.array([[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0],
                        [-1.0, 1.0, 1.0, -1.0], [1.0, 1.0, 1.0, 1.0]])
_CONJUGATE = np.array([-1.0, -1.0, -1.0, 1.0])
_POSV = get_lapack_funcs('posv', dtype=np.float64)


def right_matrix(quats: np.ndarray) -> np.ndarray:
    """Return (..., 4, 4) matrices ``M(q)`` with ``p (x) q == p @ M(q)`` (xyzw, Hamilton).

    ``p (x) q`` is scipy's ``Rotation(p) * Rotation(q)``: ``q`` applied first.
    """
    return quats[..., _RIGHT_INDEX] * _RIGHT_SIGN


def conjugate(quats: np.ndarray) -> np.ndarray:
    """Return the inverse rotations of unit xyzw quaternions."""
    return quats * _CONJUGATE


def rotation_vectors(quats: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Return the (..., 3) rotation vectors (log map) of unit xyzw quaternions (scipy's as_rotvec).

    ``angle = 2 atan2(|v|, |w|)`` is at most pi (``q`` and ``-q`` are one rotation, the sign of
    ``w`` picks which), and ``rotvec = v angle / sin(angle / 2) = v angle / |v|``. Where
    ``|v| = 0`` the vector is 0, whatever finite scale multiplies it.
    """
    vector, w = quats[..., :3], quats[..., 3]
    norm = np.sqrt((vector * vector).sum(axis=-1))
    scale = np.copysign(2.0 * np.arctan2(norm, np.abs(w)) / np.maximum(norm, 1e-300), w)
    return np.multiply(vector, scale[..., None], out=out)


def quat_product(p: Sequence[float], q: Sequence[float]) -> Tuple[float, float, float, float]:
    """Return ``p (x) q`` of two xyzw quaternions given as floats (scipy's composition)."""
    px, py, pz, pw = p
    qx, qy, qz, qw = q
    return (pw * qx + px * qw + py * qz - pz * qy, pw * qy + py * qw + pz * qx - px * qz,
            pw * qz + pz * qw + px * qy - py * qx, pw * qw - px * qx - py * qy - pz * qz)


def pose_residual(sample: Transform, estimate: Transform) -> np.ndarray:
    """Return the 6-D error ``sample - estimate``: position difference, rotation vector.

    The rotation part is ``log(R_sample R_estimate^T)``, a rotation about the parent's axes.
    """
    rotation = sample.rotation_object * estimate.rotation_object.inv()
    return np.concatenate([sample.translation - estimate.translation, rotation.as_rotvec()])


def informations(covariances: np.ndarray) -> np.ndarray:
    """Return the information matrices (pseudo-inverses) of (..., d, d) covariances.

    The pseudo-inverse tolerates a zero-variance axis; where every matrix is well conditioned
    it is the plain inverse, which costs a sixth of ``pinv``'s eigendecomposition.
    """
    try:
        inverses = np.linalg.inv(covariances)
    except np.linalg.LinAlgError:       # exactly singular: pinv drops the null space
        return np.linalg.pinv(covariances, hermitian=True)
    # Product of the Frobenius norms, squared: at least the condition number, squared.
    condition2 = ((covariances * covariances).sum(axis=(-2, -1))
                  * (inverses * inverses).sum(axis=(-2, -1)))
    if (condition2 < _PLAIN_INVERSE_CONDITION ** 2).all():
        return inverses
    return np.linalg.pinv(covariances, hermitian=True)


def squared_mahalanobis(residual: np.ndarray, covariance: np.ndarray) -> float:
    """Return ``r^T C^+ r`` (never negative)."""
    return max(float(residual @ informations(covariance) @ residual), 0.0)


def robust_weight(squared_distance: np.ndarray, loss: str, scale: float) -> np.ndarray:
    """Return the IRLS weights ``rho'(s^2)`` for squared Mahalanobis distances ``s^2``.

    Cauchy: ``1 / (1 + s^2 / c^2)`` (never zero, decays as ``1/s^2``); Huber: 1 up to ``s = c``,
    then ``c / s``. ``scale`` is ``c`` in units of Mahalanobis distance.
    """
    s2 = np.maximum(np.asarray(squared_distance, dtype=np.float64), 0.0)
    if loss == 'cauchy':
        return 1.0 / (1.0 + s2 / scale ** 2)
    if loss == 'huber':
        distance = np.sqrt(s2)
        return np.where(distance <= scale, 1.0, scale / np.maximum(distance, 1e-300))
    raise ValueError(f'robust loss must be one of {LOSSES}, got {loss!r}')


def robust_cost(squared_distance: np.ndarray, loss: str, scale: float) -> np.ndarray:
    """Return ``rho(s^2)`` (Cauchy ``c^2 log(1 + s^2/c^2)``, Huber quadratic then linear)."""
    s2 = np.maximum(np.asarray(squared_distance, dtype=np.float64), 0.0)
    if loss == 'cauchy':
        return scale ** 2 * np.log1p(s2 / scale ** 2)
    if loss == 'huber':
        distance = np.sqrt(s2)
        return np.where(distance <= scale, s2, 2.0 * scale * distance - scale ** 2)
    raise ValueError(f'robust loss must be one of {LOSSES}, got {loss!r}')


def stacked_residuals(translations: np.ndarray, quats: np.ndarray, translation: np.ndarray,
                      quat: np.ndarray, axes: np.ndarray = ALL_AXES) -> np.ndarray:
    """Return the (P, N, d) ``pose_residual`` of N samples against each of P poses.

    ``translation`` (P, 3) and ``quat`` (P, 4) are the poses; ``axes`` the residual's
    components kept (x, y, yaw for SE(2): the fusion's planar samples err on no other).
    """
    return _residuals(translations, quats, translation, right_matrix(conjugate(quat)), axes)


def _residuals(translations: np.ndarray, quats: np.ndarray, translation: np.ndarray,
               inverse_right: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """``stacked_residuals`` given ``right_matrix(conjugate(quat))``: ``q_k (x) q^-1``."""
    residuals = np.empty((len(translation), len(translations), 6))
    np.subtract(translations, translation[:, None], out=residuals[..., :3])
    rotation_vectors(quats @ inverse_right, out=residuals[..., 3:])
    return residuals if len(axes) == 6 else residuals[..., axes]


def _inverse_right(quat: Sequence[float]) -> List[float]:
    """Return ``right_matrix(conjugate(quat))`` of one float quaternion, its 16 entries in rows."""
    x, y, z, w = quat
    return [w, z, -y, x, -z, w, x, y, y, -x, w, z, -x, -y, -z, w]


def _residual_function(translations: np.ndarray, quats: np.ndarray,
                       axes: np.ndarray) -> Callable[[list], np.ndarray]:
    """Return ``residuals(poses)``: the (P, N, d) errors of the samples against P float poses.

    On the planar axes (x, y, yaw) samples and poses turn about z only (the fusion's two_d), so
    the rotation error, the log map of ``q_k q^-1``, is the difference of their yaw angles,
    wrapped to [-pi, pi): computed so, in a third of the numpy calls.
    """
    if axes.tolist() != PLANAR_AXES.tolist():
        def spatial(poses: list) -> np.ndarray:
            # Each pose as one (5, 4) block: right_matrix(conjugate(q)) over (x, y, z, 0), from
            # one flat list (numpy reads a flat list twice as fast as a nested one).
            blocks = np.array([value for t, q in poses for value in _inverse_right(q) + t + [0.0]])
            blocks = blocks.reshape(len(poses), 5, 4)
            return _residuals(translations, quats, blocks[:, 4, :3], blocks[:, :4], axes)
        return spatial
    planar = np.stack([translations[:, 0], translations[:, 1],
                       2.0 * np.arctan2(quats[:, 2], quats[:, 3])], axis=-1)

    def planar_residuals(poses: list) -> np.ndarray:
        own = np.array([value for t, q in poses
                        for value in (t[0], t[1], 2.0 * math.atan2(q[2], q[3]))])
        residuals = planar - own.reshape(len(poses), 1, 3)
        residuals[..., 2] = np.remainder(residuals[..., 2] + math.pi, 2.0 * math.pi) - math.pi
        return residuals
    return planar_residuals


def medoid_index(translations: np.ndarray, quats: np.ndarray, infos: np.ndarray, loss: str,
                 scale: float, axes: np.ndarray = ALL_AXES) -> int:
    """Return the index of the sample with the least robust cost to all samples.

    A starting point that a minority of outliers cannot drag away (the weighted mean of all
    samples can be: one sample 100 sigma away moves it by 100/N sigma).
    """
    residuals = stacked_residuals(translations, quats, translations, quats, axes)
    s2 = np.einsum('pni,nij,pnj->pn', residuals, infos, residuals)
    return int(np.argmin(np.sum(robust_cost(s2, loss, scale), axis=1)))


@dataclass(frozen=True)
class Means:
    """The result of ``solve_means``: P robust means over subsets of one stack of N samples.

    Attributes:
        translations: (P, 3) and quats (P, 4): the fused poses (quaternions to rounding unit).
        residuals: (P, N, d) each sample's error against each pose.
        squared_distances: (P, N) each sample's ``r^T C_k^-1 r`` against each pose.
        iterations: (P,) Gauss-Newton steps taken.
    """

    translations: np.ndarray
    quats: np.ndarray
    residuals: np.ndarray
    squared_distances: np.ndarray
    iterations: np.ndarray


def solve_means(translations: np.ndarray, quats: np.ndarray, infos: np.ndarray,
                masks: np.ndarray, loss: str, scale: float, initial_translation: np.ndarray,
                initial_quat: np.ndarray, axes: np.ndarray = ALL_AXES,
                max_iterations: int = 50, tolerance: float = 1e-8) -> Means:
    """Return the robust means of the samples ``masks[p]`` selects, for each of P masks.

    Every mean starts from the initial pose and runs the IRLS steps of ``robust_mean``; a mean
    whose step is below ``tolerance`` stops there while the others go on. ``infos`` are the
    (N, d, d) information matrices on ``axes`` (d = len(axes)); a step moves only those axes.
    With ``PLANAR_AXES`` the samples and the initial pose must be planar (z, roll, pitch 0).
    """
    count, dimension, axis_list = len(masks), len(axes), axes.tolist()
    residuals_of = _residual_function(translations, quats, axes)
    flat_infos = infos.reshape(len(infos), dimension * dimension)
    subsets = masks.astype(np.float64)
    # The P poses as plain floats, translation and quaternion: their update is a few dozen
    # flops, cheaper in Python than numpy calls on arrays of 7 numbers.
    poses = [(initial_translation.tolist(), initial_quat.tolist()) for _ in range(count)]
    active = list(range(count))
    iterations = np.zeros(count, dtype=np.int64)
    for iteration in range(1, max_iterations + 1):
        residuals = residuals_of(poses)
        weighted = (infos @ residuals[..., None])[..., 0]        # C_k^-1 r_k, (P, N, d)
        s2 = (residuals * weighted).sum(axis=-1)
        if loss == 'cauchy':    # robust_weight's 1 / (1 + s^2 / c^2), the subsets folded in
            weights = subsets / (1.0 + s2 / scale ** 2)
        else:
            weights = robust_weight(s2, loss, scale) * subsets
        hessian = (weights @ flat_infos).reshape(count, dimension, dimension)
        gradient = (weights[:, None] @ weighted)[:, 0]
        for index in tuple(active):      # a converged mean keeps its pose, the others go on
            step = _solve_symmetric(hessian[index], gradient[index])
            if dimension < 6:
                step, planar = [0.0] * 6, step
                for axis, value in zip(axis_list, planar):
                    step[axis] = value
            poses[index] = _step_pose(*poses[index], step)
            iterations[index] = iteration
            if math.hypot(*step) < tolerance:
                active.remove(index)
        if not active:
            break
    residuals = residuals_of(poses)
    s2 = np.maximum((residuals * (infos @ residuals[..., None])[..., 0]).sum(axis=-1), 0.0)
    return Means(np.array([t for t, _ in poses]), np.array([q for _, q in poses]), residuals,
                 s2, iterations)


def _solve_symmetric(matrix: np.ndarray, vector: np.ndarray) -> list:
    """Return ``matrix^-1 vector`` for a symmetric positive definite matrix, as floats.

    LAPACK's Cholesky solve, called directly (a third of ``np.linalg.solve``'s cost on 6x6);
    a matrix that is not positive definite goes to ``np.linalg.solve`` (which raises if singular).
    """
    _, solution, info = _POSV(matrix, vector)
    if info != 0:
        solution = np.linalg.solve(matrix, vector)
    return solution.tolist()


def _step_pose(translation: List[float], quat: List[float],
               step: List[float]) -> Tuple[List[float], Tuple[float, float, float, float]]:
    """Return a pose moved by a 6-D step: ``t + dt``, ``exp(dr) R`` (the residual's convention).

    Plain floats; ``exp`` as scipy's ``from_rotvec``: ``(sin(a/2) / a) r, cos(a/2)``.
    """
    rx, ry, rz = step[3:]
    angle = math.hypot(rx, ry, rz)
    scale = math.sin(0.5 * angle) / angle if angle > 0.0 else 0.5
    exp = (scale * rx, scale * ry, scale * rz, math.cos(0.5 * angle))
    return ([translation[0] + step[0], translation[1] + step[1], translation[2] + step[2]],
            quat_product(exp, quat))


def irls_covariance(infos: np.ndarray, squared_distances: np.ndarray, loss: str,
                    scale: float) -> np.ndarray:
    """Return ``(sum_k w_k C_k^-1)^-1`` with the weights at the given squared distances."""
    weights = robust_weight(squared_distances, loss, scale)
    covariance = np.linalg.pinv(np.tensordot(weights, infos, 1), hermitian=True)
    return 0.5 * (covariance + covariance.T)


@dataclass(frozen=True)
class RobustMean:
    """The result of ``robust_mean``.

    Attributes:
        pose: the fused pose.
        covariance: (6, 6) ROS order, ``(sum_k w_k C_k^-1)^-1`` at the solution.
        weights: (N,) the final IRLS weight of each sample, in (0, 1].
        squared_distances: (N,) each sample's ``r^T C_k^-1 r`` against ``pose``.
        iterations: Gauss-Newton steps taken.
    """

    pose: Transform
    covariance: np.ndarray
    weights: np.ndarray
    squared_distances: np.ndarray
    iterations: int


def robust_mean(translations: np.ndarray, rotations: Rotation, covariances: np.ndarray,
                loss: str, scale: float, initial: Optional[Transform] = None,
                max_iterations: int = 50, tolerance: float = 1e-8) -> RobustMean:
    """Return the robust weighted mean of N pose samples (see the module docstring).

    Args:
        translations: (N, 3) sample positions, N >= 1.
        rotations: N stacked sample orientations.
        covariances: (N, 6, 6) covariances in ROS order, one per sample.
        loss: ``cauchy`` or ``huber``.
        scale: the loss scale ``c``, a Mahalanobis distance (> 0).
        initial: the starting estimate; None starts from ``medoid_index``.
        max_iterations: Gauss-Newton steps at most.
        tolerance: stop when a step moves less than this (metres plus radians).
    """
    translations = np.asarray(translations, dtype=np.float64).reshape(-1, 3)
    covariances = np.asarray(covariances, dtype=np.float64).reshape(-1, 6, 6)
    if len(translations) == 0 or not len(translations) == len(rotations) == len(covariances):
        raise ValueError(f'need N >= 1 samples with as many rotations and covariances, got '
                         f'{len(translations)}, {len(rotations)} and {len(covariances)}')
    if not (math.isfinite(scale) and scale > 0.0):
        raise ValueError(f'loss scale must be finite and > 0, got {scale!r}')
    quats = rotations.as_quat().reshape(-1, 4)
    infos = informations(covariances)
    if initial is None:
        index = medoid_index(translations, quats, infos, loss, scale)
        start_translation, start_quat = translations[index], quats[index]
    else:
        start_translation, start_quat = np.array(initial.translation), np.array(initial.rotation)
    means = solve_means(translations, quats, infos, np.ones((1, len(quats)), dtype=bool), loss,
                        scale, start_translation, start_quat, max_iterations=max_iterations,
                        tolerance=tolerance)
    s2 = means.squared_distances[0]
    return RobustMean(Transform(means.translations[0], means.quats[0]),
                      irls_covariance(infos, s2, loss, scale), robust_weight(s2, loss, scale),
                      s2, int(means.iterations[0]))
