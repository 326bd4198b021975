"""Robust weighted mean of pose samples on SE(3): iteratively reweighted least squares (ROS-free).

Each sample is a pose with a 6x6 covariance in ROS order (x, y, z, rot x, rot y, rot z): the
position error is additive in the parent frame and the orientation error a small rotation about
the parent's fixed axes, ``R_true = exp(delta) R_est`` (as ``mspr_ros.geometry.covariance``).
The mean minimises ``sum_k rho(r_k^T C_k^-1 r_k)`` with ``r_k`` the error of sample ``k`` against
the estimate and ``rho`` a Cauchy or Huber loss: each Gauss-Newton step is a weighted mean of the
errors with weights ``w_k = rho'(s_k^2)`` (IRLS). This is what a factor graph with one pose
variable and one robust prior factor per sample solves; the fused covariance
``(sum_k w_k C_k^-1)^-1`` is what its linearised marginal gives.
"""
from dataclasses import dataclass
import math
from typing import Optional

import numpy as np
from scipy.spatial.transform import Rotation

from mspr_ros.geometry.transforms import Transform

LOSSES = ('cauchy', 'huber')


def pose_residual(sample: Transform, estimate: Transform) -> np.ndarray:
    """Return the 6-D error ``sample - estimate``: position difference, rotation vector.

    The rotation part is ``log(R_sample R_estimate^T)``, a rotation about the parent's axes.
    """
    rotation = sample.rotation_object * estimate.rotation_object.inv()
    return np.concatenate([sample.translation - estimate.translation, rotation.as_rotvec()])


def information(covariance: np.ndarray) -> np.ndarray:
    """Return the information matrix (pseudo-inverse, so a zero-variance axis is tolerated)."""
    return np.linalg.pinv(covariance, hermitian=True)


def squared_mahalanobis(residual: np.ndarray, covariance: np.ndarray) -> float:
    """Return ``r^T C^+ r`` (never negative)."""
    return max(float(residual @ information(covariance) @ residual), 0.0)


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


def medoid_index(translations: np.ndarray, rotations: Rotation, infos: np.ndarray, loss: str,
                 scale: float) -> int:
    """Return the index of the sample with the least robust cost to all samples.

    A starting point that a minority of outliers cannot drag away (the weighted mean of all
    samples can be: one sample 100 sigma away moves it by 100/N sigma).
    """
    costs = []
    for index in range(len(translations)):
        residuals = stacked_residuals(translations, rotations, translations[index],
                                      rotations[index])
        s2 = np.einsum('ni,nij,nj->n', residuals, infos, residuals)
        costs.append(float(np.sum(robust_cost(s2, loss, scale))))
    return int(np.argmin(costs))


def stacked_residuals(translations: np.ndarray, rotations: Rotation, translation: np.ndarray,
                      rotation: Rotation) -> np.ndarray:
    """Return the (N, 6) ``pose_residual`` of N stacked samples against one pose."""
    rotation_error = (rotations * rotation.inv()).as_rotvec()
    return np.concatenate([translations - translation, rotation_error], axis=1)


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
    infos = np.linalg.pinv(covariances, hermitian=True)
    if initial is None:
        index = medoid_index(translations, rotations, infos, loss, scale)
        translation, rotation = translations[index], rotations[index]
    else:
        translation, rotation = np.array(initial.translation), initial.rotation_object
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        residuals = stacked_residuals(translations, rotations, translation, rotation)
        s2 = np.einsum('ni,nij,nj->n', residuals, infos, residuals)
        weights = robust_weight(s2, loss, scale)
        hessian = np.einsum('n,nij->ij', weights, infos)
        gradient = np.einsum('n,nij,nj->i', weights, infos, residuals)
        step = np.linalg.solve(hessian, gradient)
        # Left perturbation, the residual's own convention: t + dt, exp(dr) R.
        translation = translation + step[:3]
        rotation = Rotation.from_rotvec(step[3:]) * rotation
        if float(np.linalg.norm(step)) < tolerance:
            break
    residuals = stacked_residuals(translations, rotations, translation, rotation)
    s2 = np.maximum(np.einsum('ni,nij,nj->n', residuals, infos, residuals), 0.0)
    weights = robust_weight(s2, loss, scale)
    covariance = np.linalg.pinv(np.einsum('n,nij->ij', weights, infos), hermitian=True)
    return RobustMean(Transform.from_rotation(translation, rotation),
                      0.5 * (covariance + covariance.T), weights, s2, iterations)
