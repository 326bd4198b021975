"""Pose covariance for the published pose (ROS-free).

Order everywhere: ROS ``PoseWithCovariance`` order (x, y, z, rot_x, rot_y, rot_z); metres and
radians; the rotation part is a small rotation about the fixed axes of the frame the pose is
given in (the ROS convention), so ``R_true = exp(delta) R_est`` with ``delta`` in that frame.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from mspr_ros.geometry.transforms import SceneAlignment

COVARIANCE_MODES = ('calibrated', 'fixed')
#: The two 3x3 blocks of a 6x6 pose covariance, in the order above.
BLOCK_AXES = {'position': slice(0, 3), 'rotation': slice(3, 6)}
# Variance given to the dimensions two_d_mode does not estimate (z, roll, pitch): large enough
# that a filter ignores them, finite so that it stays invertible (REP-145 style, as robot drivers
# report unknown axes).
UNESTIMATED_VARIANCE = 1e3
# The confidence floor keeps the inflation factor finite for a confidence of exactly 0.
_MIN_CONFIDENCE = 1e-3
# Relative tolerance for symmetry and for negative eigenvalues from rounding.
_PSD_TOLERANCE = 1e-9


def validate_covariance(matrix: Any, name: str = 'covariance') -> np.ndarray:
    """Return ``matrix`` as a float64 (6, 6) symmetric positive semidefinite array.

    Raises:
        ValueError: naming ``name`` when it is not 6x6, not finite, not symmetric or has a
            negative eigenvalue (both up to a relative tolerance of 1e-9 for rounding).
    """
    try:
        cov = np.array(matrix, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f'{name} must be a 6x6 matrix of numbers, got {matrix!r}') from error
    if cov.shape == (36,):
        cov = cov.reshape(6, 6)
    if cov.shape != (6, 6):
        raise ValueError(f'{name} must be 6x6 (or 36 row-major values), got shape {cov.shape}')
    if not np.all(np.isfinite(cov)):
        raise ValueError(f'{name} must be finite, got {cov.tolist()}')
    scale = max(float(np.max(np.abs(cov))), 1e-300)
    asymmetry = float(np.max(np.abs(cov - cov.T)))
    if asymmetry > _PSD_TOLERANCE * scale:
        raise ValueError(f'{name} must be symmetric, max |C - C^T| = {asymmetry:.3g}')
    cov = 0.5 * (cov + cov.T)
    smallest = float(np.linalg.eigvalsh(cov)[0])
    if smallest < -_PSD_TOLERANCE * scale:
        raise ValueError(f'{name} must be positive semidefinite, smallest eigenvalue '
                         f'{smallest:.3g}')
    return cov


def confidence_inflation_factor(scene_confidence: float, inflation: float) -> float:
    """Return ``1 + inflation * (1 - c) / max(c, 1e-3)`` for scene confidence ``c``.

    It is 1 at confidence 1, grows monotonically as the confidence drops (by ``inflation`` at
    c = 0.5, ~1000 x ``inflation`` at c = 0), so an uncertain scene classification never comes
    with a tight covariance. ``inflation = 0`` disables it.
    """
    confidence = float(scene_confidence)
    if not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
        raise ValueError(f'scene_confidence must be in [0, 1], got {scene_confidence!r}')
    inflation = float(inflation)
    if not (math.isfinite(inflation) and inflation >= 0.0):
        raise ValueError(f'inflation must be finite and >= 0, got {inflation!r}')
    return 1.0 + inflation * (1.0 - confidence) / max(confidence, _MIN_CONFIDENCE)


def _positive_stddev(value: float, name: str) -> float:
    stddev = float(value)
    if not (math.isfinite(stddev) and stddev > 0.0):
        raise ValueError(f'{name} must be finite and > 0, got {value!r}')
    return stddev


def pose_covariance(calibration_6x6: Any, scene_confidence: float,
                    alignment: SceneAlignment | None, inflation: float,
                    mode: str = 'calibrated', fixed_position_stddev: float = 0.5,
                    fixed_orientation_stddev: float = 0.1) -> np.ndarray:
    """Return the (6, 6) covariance of a pose published in the map frame.

    Args:
        calibration_6x6: the scene's calibrated covariance from the weights bundle, shape (6, 6)
            (or 36 values row-major), in the scene frame and scene units. Ignored (may be None)
            in ``fixed`` mode.
        scene_confidence: softmax probability of the selected scene, in [0, 1].
        alignment: the scene's ``map <- scene`` similarity, or None for the identity.
        inflation: the ``confidence_inflation_factor`` gain (>= 0).
        mode: ``calibrated`` or ``fixed``.
        fixed_position_stddev: metres, in the map frame (``fixed`` mode).
        fixed_orientation_stddev: radians (``fixed`` mode).

    ``calibrated``: the calibration is moved into the map frame with the Jacobian
    ``J = diag(s R, R)`` of the alignment: ``J C J^T`` (the position block becomes
    ``s^2 R C_pp R^T``; rotations about scene axes become rotations about map axes, which leaves an
    isotropic orientation block unchanged; scale does not touch angles). ``fixed``: the diagonal
    of the given standard deviations, already in the map frame, so the alignment is not used.
    Both are then multiplied by ``confidence_inflation_factor``.

    Returns:
        shape (6, 6) float64, symmetric positive semidefinite.
    """
    factor = confidence_inflation_factor(scene_confidence, inflation)
    if mode == 'fixed':
        position_var = _positive_stddev(fixed_position_stddev, 'fixed_position_stddev') ** 2
        orientation_var = (
            _positive_stddev(fixed_orientation_stddev, 'fixed_orientation_stddev') ** 2)
        cov = np.diag([position_var] * 3 + [orientation_var] * 3)
    elif mode == 'calibrated':
        if calibration_6x6 is None:
            raise ValueError('calibrated covariance mode needs a calibration, got None '
                             '(the weights bundle has none for this scene; use mode "fixed")')
        cov = validate_covariance(calibration_6x6, 'covariance calibration')
        if alignment is not None:
            rotation = alignment.rotation_object.as_matrix()
            jacobian = np.zeros((6, 6))
            jacobian[:3, :3] = alignment.scale * rotation
            jacobian[3:, 3:] = rotation
            cov = jacobian @ cov @ jacobian.T
    else:
        raise ValueError(f'covariance mode must be one of {COVARIANCE_MODES}, got {mode!r}')
    cov = factor * cov
    return 0.5 * (cov + cov.T)


def covariance_at_offset(cov: Any, offset: Any) -> np.ndarray:
    """Return the covariance of a point rigidly attached at ``offset`` from the pose's origin.

    Use it to move the camera pose covariance to the base: ``offset = p_base - p_cam`` in the
    map frame. An orientation error ``d_theta`` (about the map axes) moves the attached point by
    ``d_theta x offset``, so ``J = [[I, -[offset]x], [0, I]]`` and the result is ``J C J^T``;
    the orientation block is unchanged.

    Args:
        cov: shape (6, 6) in ROS order, in the frame ``offset`` is expressed in.
        offset: shape (3,) metres.
    """
    full = validate_covariance(cov)
    x, y, z = np.asarray(offset, dtype=np.float64).reshape(3)
    if not np.all(np.isfinite([x, y, z])):
        raise ValueError(f'offset must be finite, got {offset!r}')
    skew = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    jacobian = np.eye(6)
    jacobian[:3, 3:] = -skew
    moved = jacobian @ full @ jacobian.T
    return 0.5 * (moved + moved.T)


def two_d_covariance(cov: Any, unestimated_variance: float = UNESTIMATED_VARIANCE) -> np.ndarray:
    """Return the covariance of a ``two_d_mode`` pose (x, y, yaw estimated; z, roll, pitch not).

    The x, y, yaw rows and columns are kept; z, roll and pitch lose their correlations and get
    ``unestimated_variance`` (default 1e3) on the diagonal, so a filter ignores them. Stays PSD:
    the kept block is a principal submatrix of a PSD matrix.
    """
    full = validate_covariance(cov)
    variance = float(unestimated_variance)
    if not (math.isfinite(variance) and variance > 0.0):
        raise ValueError(f'unestimated_variance must be finite and > 0, got {variance!r}')
    planar = np.zeros((6, 6))
    kept = [0, 1, 5]
    planar[np.ix_(kept, kept)] = full[np.ix_(kept, kept)]
    for index in (2, 3, 4):
        planar[index, index] = variance
    return planar


def flatten_row_major(cov: Any) -> list[float]:
    """Return the 36 row-major floats of a (6, 6) covariance for a ROS message."""
    matrix = np.asarray(cov, dtype=np.float64)
    if matrix.shape != (6, 6):
        raise ValueError(f'covariance must be 6x6, got shape {matrix.shape}')
    return [float(value) for value in matrix.reshape(36)]
