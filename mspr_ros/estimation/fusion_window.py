"""The fusion window's samples as stacked arrays, carried to the newest odometry (ROS-free).

``mspr_ros.estimation.fusion`` decides which samples a window holds and which of them count;
this module holds them, one row per sample in stamp order, so that a frame stacks nothing: a
new sample is one appended row, the samples that leave are the oldest rows. ``carry`` moves all
of them at once to the newest odometry (step 1 of the fusion's docstring): the base pose each
predicts now, its covariance grown by the lever arm of the path travelled since and by odometry
drift, and the information matrices the robust mean and the gate use. Carrying is redone every
frame: lever arms and drift grow with the newest odometry, and every covariance with them. Each
row also keeps what its error's correlation with the others depends on (the fusion's docstring):
its scene and the odometry pose of the base when its image was taken.

Single poses are handled as arrays too (``PoseArrays``), composed in plain floats: ~3 us each,
where a ``Transform`` composition costs ~60 us (scipy and validation) and numpy on 7 numbers
~10 us of call overhead. The fusion builds a ``Transform`` only for what it returns.
"""
from dataclasses import dataclass, fields
import math
from typing import List, NamedTuple, Sequence, Tuple

import numpy as np

from mspr_ros.estimation.fusion_robust import informations, quat_product, right_matrix

# A pose as arrays: translation (3,) and xyzw quaternion (4,).
PoseArrays = Tuple[np.ndarray, np.ndarray]
_IDENTITY = np.eye(6)
# -skew(lever) in the position-rotation block of the carrying Jacobian: rows, columns, the
# lever's component and its sign ([[0, z, -y], [-z, 0, x], [y, -x, 0]]).
_SKEW_ROWS, _SKEW_COLUMNS = np.array([0, 0, 1, 1, 2, 2]), np.array([4, 5, 3, 5, 3, 4])
_SKEW_COMPONENTS, _SKEW_SIGNS = np.array([2, 1, 2, 0, 1, 0]), np.array([1., -1, -1, 1, 1, -1])


def quat_matrix(quat: np.ndarray) -> np.ndarray:
    """Return the 3x3 rotation matrix of one xyzw quaternion (scipy's formula)."""
    return np.array(_rotation_rows(np.asarray(quat).tolist()))


def _rotation_rows(quat: Sequence[float]) -> List[List[float]]:
    x, y, z, w = quat
    return [[w * w + x * x - y * y - z * z, 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), w * w - x * x + y * y - z * z, 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), w * w - x * x - y * y + z * z]]


def _rotate(quat: Sequence[float], vector: Sequence[float]) -> List[float]:
    return [row[0] * vector[0] + row[1] * vector[1] + row[2] * vector[2]
            for row in _rotation_rows(quat)]


def compose_poses(a_t: np.ndarray, a_q: np.ndarray, b_t: np.ndarray,
                  b_q: np.ndarray) -> PoseArrays:
    """Return ``T_a @ T_b`` (``Transform.__matmul__``) of poses given as arrays."""
    a_q = a_q.tolist()
    rotated = _rotate(a_q, b_t.tolist())
    return (np.array([a + b for a, b in zip(a_t.tolist(), rotated)]),
            np.array(quat_product(a_q, b_q.tolist())))


def invert_pose(t: np.ndarray, q: np.ndarray) -> PoseArrays:
    """Return the inverse (``Transform.inverse``) of a pose given as arrays."""
    x, y, z, w = q.tolist()
    inverse_q = [-x, -y, -z, w]
    return -np.array(_rotate(inverse_q, t.tolist())), np.array(inverse_q)


def flatten_pose(t: np.ndarray, q: np.ndarray) -> PoseArrays:
    """Return ``Transform.flatten_2d`` of a pose given as arrays: x, y, yaw kept, the rest 0."""
    x, y, z, w = (float(value) for value in q)
    half_yaw = 0.5 * math.atan2(2 * (x * y + z * w), w * w + x * x - y * y - z * z)
    return (np.array([t[0], t[1], 0.0]),
            np.array([0.0, 0.0, math.sin(half_yaw), math.cos(half_yaw)]))


@dataclass
class SampleWindow:
    """The window's samples in stamp order, one row each."""

    stamps_ns: np.ndarray        # (N,) int64
    map_odom_t: np.ndarray       # (N, 3) the frame's map <- odom
    map_odom_q: np.ndarray       # (N, 4)
    map_odom_r: np.ndarray       # (N, 3, 3) its rotation matrix (computed once, for carrying)
    covariances: np.ndarray      # (N, 6, 6) of the frame's base pose
    map_base_t: np.ndarray       # (N, 3) the frame's base position in the map
    odometry_t: np.ndarray       # (N, 3) odom <- base at the frame: where the view was taken
    odometry_q: np.ndarray       # (N, 4)
    odometry_m: np.ndarray       # (N,) odometry path length travelled up to the frame
    scenes: np.ndarray           # (N,) object: the scene the frame was localized in
    accepted: np.ndarray         # (N,) bool

    @classmethod
    def row(cls, stamp_ns: int, map_odom: PoseArrays, covariance: np.ndarray,
            odometry: PoseArrays, odometry_m: float, scene: str = '') -> 'SampleWindow':
        """Return a one-sample window, its sample accepted (``odometry``: odom <- base)."""
        map_base_t = compose_poses(*map_odom, *odometry)[0]
        scenes = np.empty(1, dtype=object)
        scenes[0] = scene
        return cls(np.array([stamp_ns], dtype=np.int64), map_odom[0][None], map_odom[1][None],
                   quat_matrix(map_odom[1])[None], covariance[None], map_base_t[None],
                   odometry[0][None], odometry[1][None], np.array([odometry_m]), scenes,
                   np.ones(1, dtype=bool))

    @classmethod
    def empty(cls) -> 'SampleWindow':
        """Return a window without samples."""
        origin = np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0])
        return cls.row(0, origin, np.eye(6), origin, 0.0).from_row(1)

    def __len__(self) -> int:
        """Return the number of samples."""
        return len(self.accepted)

    def from_row(self, first: int) -> 'SampleWindow':
        """Return the samples from row ``first`` on (views, not copies)."""
        return SampleWindow(*(getattr(self, field.name)[first:] for field in fields(self)))

    def append(self, other: 'SampleWindow') -> 'SampleWindow':
        """Return this window with ``other``'s samples after its own."""
        return SampleWindow(*(np.concatenate([getattr(self, field.name),
                                              getattr(other, field.name)])
                              for field in fields(self)))


class Carried(NamedTuple):
    """The window moved to the newest odometry; covariances on the fusion's axes (d of 6)."""

    translations: np.ndarray     # (N, 3) the base position now, as each sample predicts it
    quats: np.ndarray            # (N, 4) and its orientation
    covariances: np.ndarray      # (N, d, d)
    infos: np.ndarray            # (N, d, d) their pseudo-inverses
    stamps_ns: np.ndarray        # (N,)
    odometry_t: np.ndarray       # (N, 3) odom <- base at each frame (not carried)
    odometry_q: np.ndarray       # (N, 4)
    scenes: np.ndarray           # (N,) object


def carry(window: SampleWindow, odometry: PoseArrays, odometry_m: float,
          drift_per_m: np.ndarray, axes: np.ndarray) -> Carried:
    """Return the base poses now as the window's samples predict them, and their covariances.

    Args:
        window: the samples.
        odometry: the newest odom <- base, as arrays.
        odometry_m: the odometry path length travelled up to the newest sample.
        drift_per_m: (6,) odometry's drift per metre of each axis, ROS order
            (``FusionConfig.odometry_drift_per_m`` on x, y, z, ``odometry_rotation_drift_per_m``
            on the three angles).
        axes: the axes kept (``PLANAR_AXES`` in two_d, whose other axes are unestimated).
    """
    odom_t, odom_q = odometry
    translations = window.map_odom_t + window.map_odom_r @ odom_t
    quats = window.map_odom_q @ right_matrix(odom_q)
    # Lever arm: the base's travel since each frame, in the map frame; an orientation error d
    # of that frame moves the predicted base by d x lever (covariance_at_offset).
    lever = translations - window.map_base_t
    jacobians = np.broadcast_to(_IDENTITY, (len(quats), 6, 6)).copy()
    jacobians[:, _SKEW_ROWS, _SKEW_COLUMNS] = lever[:, _SKEW_COMPONENTS] * _SKEW_SIGNS
    covariances = jacobians @ window.covariances @ jacobians.transpose(0, 2, 1)
    # Odometry's own drift over the path travelled since: on every variance (m^2 and rad^2),
    # the diagonal being every 7th of the 36 entries.
    drift = np.outer(odometry_m - window.odometry_m, drift_per_m)
    covariances.reshape(-1, 36)[:, ::7] += drift ** 2
    if len(axes) < 6:
        covariances = covariances[:, axes[:, None], axes]
    return Carried(translations, quats, covariances, informations(covariances), window.stamps_ns,
                   window.odometry_t, window.odometry_q, window.scenes)
