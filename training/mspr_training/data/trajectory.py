"""Time-stamped pose sequences with interpolation (ground truth read from bags)."""
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation, Slerp


@dataclass(frozen=True, eq=False)
class Trajectory:
    """Poses ``T_frame_child`` of a moving frame, sorted by strictly increasing stamp.

    Attributes:
        stamps_ns: int64 (N,) nanoseconds, strictly increasing.
        positions: float64 (N, 3) child origin in ``frame_id``.
        orientations: float64 (N, 4) unit quaternions x, y, z, w (w >= 0) of ``R_frame_child``.
        frame_id: the fixed frame the poses are expressed in.
    """

    stamps_ns: np.ndarray
    positions: np.ndarray
    orientations: np.ndarray
    frame_id: str

    def __post_init__(self):
        """Validate shapes and stamp order, normalise and canonicalise the quaternions."""
        stamps = np.asarray(self.stamps_ns, dtype=np.int64).reshape(-1)
        positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        quats = np.asarray(self.orientations, dtype=np.float64).reshape(-1, 4)
        if not len(stamps) == len(positions) == len(quats):
            raise ValueError(
                f'trajectory arrays disagree: {len(stamps)} stamps, {len(positions)} positions, '
                f'{len(quats)} orientations')
        if len(stamps) == 0:
            raise ValueError('trajectory is empty')
        if np.any(np.diff(stamps) <= 0):
            raise ValueError('trajectory stamps must be strictly increasing')
        quats = quats / np.linalg.norm(quats, axis=1, keepdims=True)
        quats = np.where(quats[:, 3:] < 0, -quats, quats)
        object.__setattr__(self, 'stamps_ns', stamps)
        object.__setattr__(self, 'positions', positions)
        object.__setattr__(self, 'orientations', quats)

    def __len__(self):
        """Return the number of poses."""
        return len(self.stamps_ns)

    def interpolate(self, stamps_ns, max_gap_ns):
        """Return poses at ``stamps_ns`` (M,): linear position, slerp orientation.

        A query is valid when it equals a stored stamp, or lies between two consecutive stored
        stamps at most ``max_gap_ns`` apart (None: any gap). Queries outside the stored range or
        across a larger gap are invalid and get NaN poses.

        Returns:
            positions float64 (M, 3), orientations float64 (M, 4) xyzw, valid bool (M,).
        """
        queries = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
        count = len(queries)
        positions = np.full((count, 3), np.nan)
        orientations = np.full((count, 4), np.nan)
        stamps = self.stamps_ns
        exact = np.searchsorted(stamps, queries)
        exact_hit = (exact < len(stamps)) & (stamps[np.minimum(exact, len(stamps) - 1)] == queries)
        upper = np.clip(np.searchsorted(stamps, queries, side='right'), 1, len(stamps) - 1)
        lower = upper - 1
        inside = (queries >= stamps[0]) & (queries <= stamps[-1]) & (len(stamps) > 1)
        if max_gap_ns is not None and len(stamps) > 1:
            inside &= (stamps[upper] - stamps[lower]) <= max_gap_ns
        valid = exact_hit | inside
        hits = exact_hit
        positions[hits] = self.positions[exact[hits]]
        orientations[hits] = self.orientations[exact[hits]]
        between = inside & ~exact_hit
        if np.any(between):
            origin = stamps[0]
            span = (stamps[upper[between]] - stamps[lower[between]]).astype(np.float64)
            weight = (queries[between] - stamps[lower[between]]).astype(np.float64) / span
            positions[between] = (
                self.positions[lower[between]] * (1.0 - weight)[:, None]
                + self.positions[upper[between]] * weight[:, None])
            slerp = Slerp((stamps - origin).astype(np.float64),
                          Rotation.from_quat(self.orientations))
            quats = slerp((queries[between] - origin).astype(np.float64)).as_quat()
            orientations[between] = np.where(quats[:, 3:] < 0, -quats, quats)
        return positions, orientations, valid


def trajectory_from_unsorted(stamps_ns, positions, orientations, frame_id):
    """Build a Trajectory from samples in any order; return it and the duplicate-stamp count.

    Samples sharing a stamp keep the last one in input order (a republished transform); the
    caller reports the returned count.
    """
    stamps = np.asarray(stamps_ns, dtype=np.int64)
    order = np.argsort(stamps, kind='stable')
    stamps = stamps[order]
    keep = np.append(stamps[1:] != stamps[:-1], True)
    positions = np.asarray(positions, dtype=np.float64)[order][keep]
    quats = np.asarray(orientations, dtype=np.float64)[order][keep]
    trajectory = Trajectory(stamps[keep], positions, quats, frame_id)
    return trajectory, int(len(stamps) - keep.sum())


def compose(first, second):
    """Compose pose arrays: ``T_a_c = T_a_b * T_b_c``.

    Args:
        first: (positions (N, 3), orientations (N, 4) xyzw) of ``T_a_b``.
        second: (positions (N, 3), orientations (N, 4) xyzw) of ``T_b_c``.

    Returns:
        (positions (N, 3), orientations (N, 4) xyzw, w >= 0) of ``T_a_c``.
    """
    rotation_ab = Rotation.from_quat(first[1])
    positions = first[0] + rotation_ab.apply(second[0])
    quats = (rotation_ab * Rotation.from_quat(second[1])).as_quat()
    return positions, np.where(quats[:, 3:] < 0, -quats, quats)


def invert(pose):
    """Return the inverse pose arrays of (positions (N, 3), orientations (N, 4) xyzw)."""
    inverse = Rotation.from_quat(pose[1]).inv()
    quats = inverse.as_quat()
    return -inverse.apply(pose[0]), np.where(quats[:, 3:] < 0, -quats, quats)
