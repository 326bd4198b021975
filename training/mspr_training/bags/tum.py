"""Trajectories as TUM text files, the format ``evo_ape`` / ``evo_rpe`` and most SLAM tools read.

One pose per line, ``timestamp tx ty tz qx qy qz qw``: the stamp in seconds (written with all
nine decimals, so a nanosecond stamp survives the round trip), position in metres, the x, y, z, w
quaternion (canonical, ``w >= 0``). Lines starting with ``#`` are comments.
"""
from pathlib import Path
from typing import Sequence

import numpy as np

from mspr_ros.geometry.transforms import canonical_quaternion

NS_PER_S = 1_000_000_000


def format_stamp(stamp_ns: int) -> str:
    """Return a nanosecond stamp as exact decimal seconds (``1700000000.033333333``)."""
    seconds, nanoseconds = divmod(int(stamp_ns), NS_PER_S)
    return f'{seconds}.{nanoseconds:09d}'


def write_tum(path, stamps_ns: Sequence[int], positions, orientations_xyzw,
              comment: str | None = None) -> Path:
    """Write poses (N stamps, (N, 3) positions, (N, 4) xyzw quaternions) as a TUM file.

    Raises:
        ValueError: the arrays disagree in length or shape.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    orientations = np.asarray(orientations_xyzw, dtype=np.float64).reshape(-1, 4)
    if not len(stamps_ns) == len(positions) == len(orientations):
        raise ValueError(f'{len(stamps_ns)} stamps, {len(positions)} positions and '
                         f'{len(orientations)} orientations: lengths differ')
    lines = [f'# {line}' for line in (comment or '').splitlines()]
    lines.append('# timestamp tx ty tz qx qy qz qw')
    for stamp, position, orientation in zip(stamps_ns, positions, orientations):
        values = [*position, *canonical_quaternion(orientation)]
        lines.append(' '.join([format_stamp(stamp)] + [repr(float(v)) for v in values]))
    path = Path(path)
    path.write_text('\n'.join(lines) + '\n')
    return path


def read_tum(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (stamps_ns int64 (N,), positions (N, 3), orientations xyzw (N, 4)) of a TUM file.

    Raises:
        ValueError: naming the file and line of a malformed row.
    """
    stamps, poses = [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith('#'):
            continue
        fields = text.split()
        if len(fields) != 8:
            raise ValueError(f'{path}:{number}: expected 8 values, got {len(fields)}')
        seconds, _, fraction = fields[0].partition('.')
        try:
            stamps.append(int(seconds) * NS_PER_S + int((fraction + '0' * 9)[:9]))
            poses.append([float(v) for v in fields[1:]])
        except ValueError as error:
            raise ValueError(f'{path}:{number}: {error}') from None
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 7)
    return np.asarray(stamps, dtype=np.int64), poses[:, :3], poses[:, 3:]
