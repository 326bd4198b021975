"""Time-stamped pose sequences with interpolation (ground truth read from bags).

The maths (canonical quaternions, the one slerp) is ``mspr_ros.geometry``'s; this module adds the
sequence type the training and evaluation code passes around.
"""
from dataclasses import dataclass

import numpy as np

from mspr_ros.geometry.interpolation import interpolate_series, latest_per_stamp
from mspr_ros.geometry.quaternions import canonical_quaternions


@dataclass(frozen=True, eq=False)
class Trajectory:
    """Poses ``T_frame_child`` of a moving frame, sorted by strictly increasing stamp.

    Attributes:
        stamps_ns: int64 (N,) nanoseconds, strictly increasing.
        positions: float64 (N, 3) child origin in ``frame_id``.
        orientations: float64 (N, 4) canonical unit quaternions x, y, z, w of ``R_frame_child``.
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
        object.__setattr__(self, 'stamps_ns', stamps)
        object.__setattr__(self, 'positions', positions)
        object.__setattr__(self, 'orientations', canonical_quaternions(quats, 'orientations'))

    def __len__(self):
        """Return the number of poses."""
        return len(self.stamps_ns)

    def interpolate(self, stamps_ns, max_gap_ns):
        """Return poses at ``stamps_ns`` (M,): linear position, slerp orientation.

        A query is valid when it equals a stored stamp, or lies between two consecutive stored
        stamps at most ``max_gap_ns`` apart (None: any gap). Queries outside the stored range or
        across a larger gap are invalid and get NaN poses.

        Returns:
            positions float64 (M, 3), orientations float64 (M, 4) xyzw canonical, valid bool (M,).
        """
        return interpolate_series(self.stamps_ns, self.positions, self.orientations, stamps_ns,
                                  max_gap_ns)


def trajectory_from_unsorted(stamps_ns, positions, orientations, frame_id):
    """Build a Trajectory from samples in any order; return it and the duplicate-stamp count.

    Samples sharing a stamp keep the last one in input order (a republished transform); the
    caller reports the returned count.
    """
    keep, duplicates = latest_per_stamp(stamps_ns)
    trajectory = Trajectory(np.asarray(stamps_ns, dtype=np.int64)[keep],
                            np.asarray(positions, dtype=np.float64)[keep],
                            np.asarray(orientations, dtype=np.float64)[keep], frame_id)
    return trajectory, duplicates
