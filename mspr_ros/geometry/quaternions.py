"""The project's one quaternion convention: x, y, z, w order, unit length, canonical sign.

``q`` and ``-q`` are the same rotation. Everything we store, publish or write picks the one with
``w > 0``; when ``w == 0`` the first non-zero of x, y, z is positive. This is exactly scipy's
``Rotation.as_quat(canonical=True)``, so quaternions we compute and quaternions scipy returns agree
(up to the rounding of normalising).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

# Below this norm a quaternion has no meaningful direction (a regressed 4-vector of zeros, say).
MIN_QUATERNION_NORM = 1e-9
# Components in scipy's sign rule order: w first, then x, y, z.
_SIGN_ORDER = [3, 0, 1, 2]


def checked_vector(value: Any, length: int, name: str) -> np.ndarray:
    """Return ``value`` as a new read-only finite float64 array of shape (length,).

    Raises:
        ValueError: naming ``name`` for a wrong length or a non-finite value.
    """
    try:
        array = np.array(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise ValueError(f'{name} must be {length} numbers, got {value!r}') from error
    if array.shape != (length,):
        raise ValueError(f'{name} must have {length} elements, got shape {np.shape(value)}')
    if not np.all(np.isfinite(array)):
        raise ValueError(f'{name} must be finite, got {array.tolist()}')
    array.setflags(write=False)
    return array


def unit_quaternion(value: Any, name: str) -> np.ndarray:
    """Return ``value`` (x, y, z, w) divided by its norm, read-only, its sign kept.

    Raises:
        ValueError: naming ``name`` for a non-finite or zero-length quaternion.
    """
    return _unit_rows(checked_vector(value, 4, name)[None], name)[0]


def _unit_rows(quats: np.ndarray, name: str) -> np.ndarray:
    """Return (N, 4) finite quaternions divided by their norms, read-only."""
    norms = np.linalg.norm(quats, axis=1, keepdims=True)
    small = np.flatnonzero(norms[:, 0] < MIN_QUATERNION_NORM)
    if small.size:
        raise ValueError(f'{name} must be a non-zero quaternion (x, y, z, w), got '
                         f'{quats[small[0]].tolist()}')
    unit = quats / norms
    unit.setflags(write=False)
    return unit


def is_canonical(unit_quats: Any) -> np.ndarray:
    """Return bool (...) of whether unit quaternions (..., 4) already have the canonical sign."""
    ordered = np.asarray(unit_quats, dtype=np.float64)[..., _SIGN_ORDER]
    leading = np.argmax(ordered != 0.0, axis=-1)
    return np.take_along_axis(ordered, leading[..., None], axis=-1)[..., 0] > 0.0


def canonical_quaternions(quaternions_xyzw: Any, name: str = 'quaternions') -> np.ndarray:
    """Return float64 (N, 4) unit x, y, z, w quaternions of the same rotations, canonical sign.

    Args:
        quaternions_xyzw: shape (N, 4) (or (4,), returned as (1, 4)), any non-zero norm.
        name: what the values are, for error messages.

    Raises:
        ValueError: naming ``name`` and the first bad row for a non-finite or zero quaternion.
    """
    quats = np.array(quaternions_xyzw, dtype=np.float64).reshape(-1, 4)
    bad = np.flatnonzero(~np.all(np.isfinite(quats), axis=1))
    if bad.size:
        raise ValueError(f'{name} must be finite, got {quats[bad[0]].tolist()}')
    unit = _unit_rows(quats, name)
    return np.where(is_canonical(unit)[:, None], unit, -unit)


def canonical_quaternion(quaternion_xyzw: Any) -> np.ndarray:
    """Return the unit x, y, z, w quaternion of the same rotation with ``w >= 0`` (float64 (4,)).

    The one sign convention of the project (see the module docstring). Raises ValueError for a
    non-finite or zero-length input, naming the values.
    """
    return canonical_quaternions(checked_vector(quaternion_xyzw, 4, 'quaternion'),
                                 'quaternion')[0]


def quaternion_from_rotation(rotation: Rotation) -> np.ndarray:
    """Return the canonical x, y, z, w quaternion of a scipy Rotation: (4,), or (N, 4) for N."""
    return rotation.as_quat(canonical=True)
