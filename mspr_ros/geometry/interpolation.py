"""Pose interpolation: the project's one slerp, and interpolation of a time series of poses.

``Transform.interpolate`` (one pair), ``TransformBuffer`` (TF edges) and the training package's
``Trajectory`` (ground truth read from bags) all interpolate through ``slerp_poses``: linear in
translation, spherical along the shortest arc in rotation, so ``q`` and ``-q`` interpolate alike.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from mspr_ros.geometry.quaternions import quaternion_from_rotation


def slerp_poses(start_translations: Any, start_quats: Any, end_translations: Any,
                end_quats: Any, fractions: Any) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate N pose pairs: lerp of translations, shortest-arc slerp of rotations.

    Args:
        start_translations, end_translations: shape (N, 3).
        start_quats, end_quats: shape (N, 4) x, y, z, w, any sign.
        fractions: shape (N,); 0 gives the start, 1 the end; values outside [0, 1] extrapolate
            along the same arc.

    Returns:
        translations (N, 3) and canonical unit quaternions (N, 4), float64.
    """
    fractions = np.asarray(fractions, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(fractions)):
        raise ValueError(f'interpolation fractions must be finite, got {fractions.tolist()}')
    start = Rotation.from_quat(np.asarray(start_quats, dtype=np.float64).reshape(-1, 4))
    end = Rotation.from_quat(np.asarray(end_quats, dtype=np.float64).reshape(-1, 4))
    # as_rotvec is the shortest rotation (angle <= pi) between both, whatever their signs.
    delta = (start.inv() * end).as_rotvec()
    rotations = start * Rotation.from_rotvec(fractions[:, None] * delta)
    start_t = np.asarray(start_translations, dtype=np.float64).reshape(-1, 3)
    end_t = np.asarray(end_translations, dtype=np.float64).reshape(-1, 3)
    # (1 - f) a + f b rather than a + f (b - a): exact at both ends.
    translations = (1.0 - fractions[:, None]) * start_t + fractions[:, None] * end_t
    return translations, quaternion_from_rotation(rotations)


def interpolate_series(stamps_ns: Any, translations: Any, quats: Any, queries_ns: Any,
                       max_gap_ns: int | None = None, tolerance_ns: int = 0
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the poses of a time series at query stamps (M,), and which queries are valid.

    A query is valid when it equals a stored stamp, lies between two consecutive stamps at most
    ``max_gap_ns`` apart (None: any gap), or lies within ``tolerance_ns`` beyond the first or last
    stamp (it then gets that end's pose, as tf2's extrapolation tolerance). Invalid queries get
    NaN poses.

    Args:
        stamps_ns: int (N,) strictly increasing, N >= 1.
        translations: (N, 3); quats: (N, 4) x, y, z, w.
        queries_ns: int (M,) in any order.

    Returns:
        translations float64 (M, 3), quaternions float64 (M, 4) (stored ones as stored,
        interpolated ones canonical), valid bool (M,).
    """
    stamps = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
    translations = np.asarray(translations, dtype=np.float64).reshape(-1, 3)
    quats = np.asarray(quats, dtype=np.float64).reshape(-1, 4)
    queries = np.asarray(queries_ns, dtype=np.int64).reshape(-1)
    last = len(stamps) - 1
    out_t = np.full((len(queries), 3), np.nan)
    out_q = np.full((len(queries), 4), np.nan)
    exact = np.minimum(np.searchsorted(stamps, queries), last)
    exact_hit = stamps[exact] == queries
    upper = np.clip(np.searchsorted(stamps, queries, side='right'), 1, max(last, 1))
    lower = upper - 1
    between = (queries > stamps[0]) & (queries < stamps[-1]) & ~exact_hit
    if max_gap_ns is not None and last > 0:
        between &= (stamps[upper] - stamps[lower]) <= max_gap_ns
    before = (queries < stamps[0]) & (queries >= stamps[0] - tolerance_ns)
    after = (queries > stamps[-1]) & (queries <= stamps[-1] + tolerance_ns)
    stored = np.where(before, 0, np.where(after, last, exact))
    from_samples = exact_hit | before | after
    out_t[from_samples] = translations[stored[from_samples]]
    out_q[from_samples] = quats[stored[from_samples]]
    if np.any(between):
        low, high = lower[between], upper[between]
        span = (stamps[high] - stamps[low]).astype(np.float64)
        fractions = (queries[between] - stamps[low]).astype(np.float64) / span
        out_t[between], out_q[between] = slerp_poses(
            translations[low], quats[low], translations[high], quats[high], fractions)
    return out_t, out_q, from_samples | between


def latest_per_stamp(stamps_ns: Any) -> tuple[np.ndarray, int]:
    """Return the indices sorting ``stamps_ns`` without repeats, and how many repeats were dropped.

    Of samples sharing a stamp the last in input order is kept: a republished transform or pose
    supersedes the earlier one.
    """
    stamps = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
    order = np.argsort(stamps, kind='stable')
    ordered = stamps[order]
    keep = np.append(ordered[1:] != ordered[:-1], True)
    return order[keep], int(len(stamps) - keep.sum())
