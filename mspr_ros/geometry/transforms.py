"""Rigid transforms, scene alignments and the node's frame chain (ROS-free).

Conventions (docs/architecture.md):
- ``T_a_b`` maps points from frame ``b`` into frame ``a``; composition ``T_a_c = T_a_b @ T_b_c``.
- Quaternions are x, y, z, w (scipy and ROS order) and unit length.
- Roll, pitch, yaw are the ROS (REP-103) fixed-axis angles: ``R = Rz(yaw) Ry(pitch) Rx(roll)``.

Rotations go through ``scipy.spatial.transform.Rotation``.
"""
from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import math
import re
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from mspr_ros.geometry.interpolation import slerp_poses
# canonical_quaternion is re-exported: callers reach the convention through this module too.
from mspr_ros.geometry.quaternions import (canonical_quaternion, checked_vector, is_canonical,
                                           MIN_QUATERNION_NORM, unit_quaternion)

__all__ = ['base_in_map', 'body_from_optical', 'canonical_quaternion', 'map_to_odom',
           'optical_from_body', 'pose_error', 'quaternion_angle_deg', 'SceneAlignment',
           'Transform']

# Tolerance for accepting a 4x4 matrix as rigid (orthonormal rotation block, last row 0 0 0 1).
_RIGID_MATRIX_TOLERANCE = 1e-6


@dataclasses.dataclass(frozen=True, eq=False)
class Transform:
    """A rigid transform ``T_parent_child``: ``p_parent = R p_child + translation``.

    Attributes:
        translation: shape (3,) float64, metres; the child origin in the parent frame.
        rotation: shape (4,) float64 unit quaternion x, y, z, w of ``R_parent_child``. It is
            normalised on construction; its sign is kept (see ``canonical``).

    Both arrays are read-only copies. Equality is identity; compare with ``almost_equal``.
    """

    translation: np.ndarray
    rotation: np.ndarray

    def __post_init__(self) -> None:
        """Validate and normalise; raise ValueError on non-finite or zero input."""
        object.__setattr__(self, 'translation', checked_vector(self.translation, 3, 'translation'))
        object.__setattr__(self, 'rotation', unit_quaternion(self.rotation, 'rotation'))

    @classmethod
    def identity(cls) -> Transform:
        """Return the identity transform."""
        return cls(np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]))

    @classmethod
    def from_rotation(cls, translation: Any, rotation: Rotation) -> Transform:
        """Build from a translation (3,) and a scipy ``Rotation``."""
        return cls(translation, rotation.as_quat())

    @classmethod
    def from_matrix(cls, matrix: Any) -> Transform:
        """Build from a homogeneous 4x4 rigid matrix; reject non-rigid or non-finite matrices."""
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape != (4, 4):
            raise ValueError(f'transform matrix must be 4x4, got shape {m.shape}')
        if not np.all(np.isfinite(m)):
            raise ValueError('transform matrix must be finite')
        if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=_RIGID_MATRIX_TOLERANCE):
            raise ValueError(f'transform matrix last row must be 0 0 0 1, got {m[3].tolist()}')
        r = m[:3, :3]
        orthonormality = float(np.max(np.abs(r @ r.T - np.eye(3))))
        if orthonormality > _RIGID_MATRIX_TOLERANCE or np.linalg.det(r) < 0.0:
            raise ValueError('transform matrix rotation block is not a proper rotation '
                             f'(max |R R^T - I| = {orthonormality:.3g}, det = '
                             f'{np.linalg.det(r):.6g})')
        return cls(m[:3, 3], Rotation.from_matrix(r).as_quat())

    @classmethod
    def from_xyz_rpy(cls, xyz: Any, rpy: Any) -> Transform:
        """Build from a translation and ROS fixed-axis roll, pitch, yaw in radians."""
        angles = checked_vector(rpy, 3, 'rpy')
        return cls(xyz, Rotation.from_euler('xyz', angles).as_quat())

    @classmethod
    def from_xyz_quat(cls, xyz: Any, quat_xyzw: Any) -> Transform:
        """Build from a translation (3,) and a quaternion (4,) x, y, z, w (normalised here)."""
        return cls(xyz, quat_xyzw)

    @property
    def rotation_object(self) -> Rotation:
        """The rotation as a scipy ``Rotation``."""
        return Rotation.from_quat(self.rotation)

    def as_matrix(self) -> np.ndarray:
        """Return the homogeneous 4x4 float64 matrix."""
        m = np.eye(4)
        m[:3, :3] = self.rotation_object.as_matrix()
        m[:3, 3] = self.translation
        return m

    def inverse(self) -> Transform:
        """Return ``T_child_parent`` for this ``T_parent_child``."""
        inverse_rotation = self.rotation_object.inv()
        # scipy's apply needs a writable buffer; our arrays are read-only.
        translation = -inverse_rotation.apply(np.array(self.translation))
        return Transform.from_rotation(translation, inverse_rotation)

    def __matmul__(self, other: Transform) -> Transform:
        """Compose: ``T_a_b @ T_b_c = T_a_c`` (apply ``other`` first, then ``self``)."""
        if not isinstance(other, Transform):
            return NotImplemented
        rotation = self.rotation_object
        translation = self.translation + rotation.apply(np.array(other.translation))
        return Transform.from_rotation(translation, rotation * other.rotation_object)

    def apply(self, points: Any) -> np.ndarray:
        """Map points (N, 3) or one point (3,) from the child into the parent frame."""
        array = np.array(points, dtype=np.float64)
        if array.shape[-1:] != (3,) or array.ndim > 2:
            raise ValueError(f'points must have shape (N, 3) or (3,), got {array.shape}')
        return self.rotation_object.apply(array) + self.translation

    def rpy(self) -> np.ndarray:
        """Return ROS fixed-axis (roll, pitch, yaw) in radians, shape (3,).

        At pitch = +-90 degrees (gimbal lock) roll and yaw are not unique; scipy then sets one of
        them to zero (and warns).
        """
        return self.rotation_object.as_euler('xyz')

    def yaw(self) -> float:
        """Return the heading in radians in [-pi, pi].

        The heading of the child x-axis projected onto the parent x-y plane. It equals
        ``rpy()[2]`` wherever that is unique (pitch away from +-90 degrees), and is 0 when the
        x-axis points straight up or down.
        """
        r = self.rotation_object.as_matrix()
        return math.atan2(r[1, 0], r[0, 0])

    def flatten_2d(self) -> Transform:
        """Return the planar pose for ``two_d_mode``: same x, y and yaw; z, roll, pitch zero."""
        return Transform.from_xyz_rpy([self.translation[0], self.translation[1], 0.0],
                                      [0.0, 0.0, self.yaw()])

    def canonical(self) -> Transform:
        """Return the same transform with the project's canonical quaternion sign (w >= 0)."""
        if is_canonical(self.rotation):
            return self
        return Transform(self.translation, canonical_quaternion(self.rotation))

    def interpolate(self, other: Transform, fraction: float) -> Transform:
        """Interpolate towards ``other``: lerp of translations, slerp (shortest arc) of rotations.

        ``fraction`` 0 gives ``self``, 1 gives ``other``; values outside [0, 1] extrapolate along
        the same arc.
        """
        fraction = float(fraction)
        if not math.isfinite(fraction):
            raise ValueError(f'interpolation fraction must be finite, got {fraction}')
        translations, quats = slerp_poses(self.translation, self.rotation, other.translation,
                                          other.rotation, [fraction])
        return Transform(translations[0], quats[0])

    def rotation_angle_to(self, other: Transform) -> float:
        """Return the angle in radians, in [0, pi], of the rotation between both orientations."""
        return float((self.rotation_object.inv() * other.rotation_object).magnitude())

    def almost_equal(self, other: Transform, tol_t: float = 1e-6, tol_r: float = 1e-6) -> bool:
        """Return True when translations differ by <= tol_t metres and rotations by <= tol_r rad.

        q and -q are the same rotation and compare equal.
        """
        distance = float(np.linalg.norm(self.translation - other.translation))
        return distance <= tol_t and self.rotation_angle_to(other) <= tol_r

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle and copy through the constructor, so copies are validated and read-only."""
        return (Transform, (np.array(self.translation), np.array(self.rotation)))

    def __repr__(self) -> str:
        """Show translation and quaternion compactly."""
        return (f'Transform(translation={np.round(self.translation, 6).tolist()}, '
                f'rotation={np.round(self.rotation, 6).tolist()})')


@dataclasses.dataclass(frozen=True, eq=False)
class SceneAlignment:
    """A similarity transform ``map <- scene``: ``p_map = scale * R p_scene + translation``.

    Each scene of a weights bundle has its own coordinate frame (the frame its training poses were
    given in); this places it in the robot's map. The bundle stores it as the dict of ``to_dict``.

    Attributes:
        translation: shape (3,) float64, metres in the map frame.
        rotation: shape (4,) unit quaternion x, y, z, w of ``R_map_scene``.
        scale: map metres per scene unit, > 0 (1 for metric reconstructions).
    """

    translation: np.ndarray
    rotation: np.ndarray
    scale: float = 1.0

    _KEYS = ('translation', 'rotation_xyzw', 'scale')

    def __post_init__(self) -> None:
        """Validate and normalise; raise ValueError on bad values."""
        object.__setattr__(self, 'translation', checked_vector(self.translation, 3, 'translation'))
        object.__setattr__(self, 'rotation', unit_quaternion(self.rotation, 'rotation_xyzw'))
        if isinstance(self.scale, bool):
            raise ValueError(f'scale must be a number, got {self.scale!r}')
        try:
            scale = float(self.scale)
        except (TypeError, ValueError) as error:
            raise ValueError(f'scale must be a number, got {self.scale!r}') from error
        if not (math.isfinite(scale) and scale > 0.0):
            raise ValueError(f'scale must be finite and > 0, got {self.scale!r}')
        object.__setattr__(self, 'scale', scale)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle and copy through the constructor, so copies are validated and read-only."""
        return (SceneAlignment, (np.array(self.translation), np.array(self.rotation), self.scale))

    @classmethod
    def identity(cls) -> SceneAlignment:
        """Return the alignment of a scene whose frame is the map frame."""
        return cls(np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]), 1.0)

    @property
    def rotation_object(self) -> Rotation:
        """The rotation ``R_map_scene`` as a scipy ``Rotation``."""
        return Rotation.from_quat(self.rotation)

    def apply(self, T_scene_cam: Transform) -> Transform:
        """Return ``T_map_cam``: position ``s R p + t``, orientation ``R q``.

        The scale changes positions only; the orientation of a camera does not depend on units.
        """
        rotation = self.rotation_object
        position = self.scale * rotation.apply(np.array(T_scene_cam.translation))
        position += self.translation
        return Transform.from_rotation(position, rotation * T_scene_cam.rotation_object)

    def as_transform(self) -> Transform:
        """Return the rigid part ``T_map_scene`` (scale dropped), e.g. for /tf_static."""
        return Transform(self.translation, self.rotation)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], context: str = 'scene alignment'
                  ) -> SceneAlignment:
        """Build from ``{'translation': [3], 'rotation_xyzw': [4], 'scale': s}``.

        Args:
            data: the mapping stored per scene in the weights bundle.
            context: prefix for error messages (e.g. the file and the scene name).

        Raises:
            ValueError: naming ``context`` and the problem (missing or unknown key, wrong length,
                non-finite value, zero quaternion, scale <= 0).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f'{context}: expected a mapping with keys {list(cls._KEYS)}, '
                             f'got {type(data).__name__}')
        missing = [key for key in cls._KEYS if key not in data]
        unknown = sorted(str(key) for key in data if key not in cls._KEYS)
        if missing or unknown:
            raise ValueError(f'{context}: missing keys {missing}, unknown keys {unknown}; '
                             f'expected exactly {list(cls._KEYS)}')
        try:
            return cls(data['translation'], data['rotation_xyzw'], data['scale'])
        except ValueError as error:
            raise ValueError(f'{context}: {error}') from error

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready mapping read by ``from_dict``."""
        return {'translation': self.translation.tolist(),
                'rotation_xyzw': self.rotation.tolist(),
                'scale': self.scale}

    @classmethod
    def from_parameter(cls, values: Any) -> SceneAlignment:
        """Build from the 8-number parameter form ``[x, y, z, qx, qy, qz, qw, scale]``.

        The form of the node's ``scenes.<name>.map_from_scene`` parameter; the node, the bag
        tools and ``mspr-align`` all parse it here, so a value one accepts means the same to all.

        Raises:
            ValueError: a wrong length, a non-finite number, a zero quaternion or a scale <= 0.
        """
        try:
            numbers = [float(v) for v in (values if values is not None else ())]
        except (TypeError, ValueError):
            numbers = None
        if numbers is None or len(numbers) != 8 or not all(math.isfinite(v) for v in numbers):
            raise ValueError(f'must be 8 finite numbers {ALIGNMENT_PARAMETER_LAYOUT}, got '
                             f'{values if numbers is None else numbers}')
        if math.hypot(*numbers[3:7]) < 1e-9 or numbers[7] <= 0.0:
            raise ValueError(f'quaternion must be non-zero and scale positive, got {numbers}')
        return cls(numbers[0:3], numbers[3:7], numbers[7])

    def to_parameter(self) -> list[float]:
        """Return the 8-number parameter form read by ``from_parameter``."""
        return self.translation.tolist() + self.rotation.tolist() + [self.scale]


#: The layout of ``SceneAlignment.from_parameter``'s 8 numbers, for messages and docs.
ALIGNMENT_PARAMETER_LAYOUT = '[x, y, z, qx, qy, qz, qw, scale]'
_ALIGNMENT_PARAMETER = re.compile(r'^scenes\.(?P<scene>.+)\.map_from_scene$')


def alignment_parameter_name(scene: str) -> str:
    """Name of a scene's ``map <- scene`` parameter, e.g. ``scenes.atrium.map_from_scene``."""
    return f'scenes.{scene}.map_from_scene'


def alignment_parameter_scene(name: str) -> str | None:
    """Return the scene a ``scenes.<scene>.map_from_scene`` parameter names, else None."""
    match = _ALIGNMENT_PARAMETER.match(name)
    return match.group('scene') if match else None


def base_in_map(T_map_cam: Transform, T_base_cam: Transform) -> Transform:
    """Return ``T_map_base = T_map_cam @ inv(T_base_cam)``.

    ``T_base_cam`` is the camera (optical frame) extrinsic on the robot, from TF.
    """
    return T_map_cam @ T_base_cam.inverse()


def map_to_odom(T_map_base: Transform, T_odom_base: Transform) -> Transform:
    """Return ``T_map_odom = T_map_base @ inv(T_odom_base)``, the transform a localizer publishes.

    ``T_odom_base`` must be looked up at the image stamp (as AMCL does at the scan stamp), so that
    ``T_map_odom @ T_odom_base(t) = T_map_base(t)``.
    """
    return T_map_base @ T_odom_base.inverse()


# R_body_optical: its columns are the optical axes in the body frame: x_opt = -y_body (right),
# y_opt = -z_body (down), z_opt = x_body (forward). Equals ROS's rpy (-pi/2, 0, -pi/2).
R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0],
                           [-1.0, 0.0, 0.0],
                           [0.0, -1.0, 0.0]])
R_BODY_OPTICAL.setflags(write=False)


def body_from_optical() -> Transform:
    """Return ``T_body_optical``: the transform from a camera's optical frame to its body frame.

    Body frame (REP-103): x forward, y left, z up. Optical frame: z forward, x right, y down.
    This is the static transform a driver publishes as ``camera_link -> camera_optical_frame``.
    """
    return Transform(np.zeros(3), Rotation.from_matrix(R_BODY_OPTICAL).as_quat())


def optical_from_body() -> Transform:
    """Return ``T_optical_body``, the inverse of ``body_from_optical()``.

    It maps points given in the camera body frame (x forward, y left, z up) into the optical
    frame (z forward, x right, y down): ``T_base_optical = T_base_body @ body_from_optical()``.
    """
    return body_from_optical().inverse()


def quaternion_angle_deg(q_est: Any, q_gt: Any) -> np.ndarray:
    """Return the paper's orientation error ``2 acos(|<q_est, q_gt>|)`` in degrees.

    Args:
        q_est: shape (..., 4) quaternions (any order and norm consistent with ``q_gt``; both are
            normalised here).
        q_gt: shape (..., 4), broadcastable against ``q_est``.

    Returns:
        shape (...) float64 degrees in [0, 180]. The dot product is clamped to [-1, 1] so that
        rounding never yields NaN (the reference code did not clamp).
    """
    est = np.asarray(q_est, dtype=np.float64)
    gt = np.asarray(q_gt, dtype=np.float64)
    if est.shape[-1:] != (4,) or gt.shape[-1:] != (4,):
        raise ValueError(f'quaternions must have a last axis of 4, got {est.shape} and {gt.shape}')
    est_norm = np.linalg.norm(est, axis=-1, keepdims=True)
    gt_norm = np.linalg.norm(gt, axis=-1, keepdims=True)
    if np.any(est_norm < MIN_QUATERNION_NORM) or np.any(gt_norm < MIN_QUATERNION_NORM):
        raise ValueError('quaternions must be non-zero')
    dot = np.sum((est / est_norm) * (gt / gt_norm), axis=-1)
    return np.degrees(2.0 * np.arccos(np.clip(np.abs(dot), -1.0, 1.0)))


def pose_error(T_est: Transform, T_gt: Transform) -> tuple[float, float]:
    """Return (position error in metres, orientation error in degrees) with the paper's metric.

    Position: Euclidean distance of the translations. Orientation: ``quaternion_angle_deg``.
    """
    position_error = float(np.linalg.norm(T_est.translation - T_gt.translation))
    return position_error, float(quaternion_angle_deg(T_est.rotation, T_gt.rotation))
