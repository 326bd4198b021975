"""Pinhole intrinsics and camera poses of the rendered world.

Pixel convention (OpenCV): pixel (u, v) has its centre at image coordinates (u, v), so the image
spans [-0.5, W - 0.5] and the exact centre is ((W - 1) / 2, (H - 1) / 2). A camera-frame point
(x, y, z) in the optical frame (x right, y down, z forward) projects to
``u = fx x / z + cx``, ``v = fy y / z + cy``.
"""
from dataclasses import asdict, dataclass
import functools
import math

import numpy as np
from scipy.spatial.transform import Rotation

from mspr_ros.geometry.transforms import R_BODY_OPTICAL


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels (no distortion)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_fov(cls, width, height, horizontal_fov_deg=65.0):
        """Return square-pixel intrinsics with the principal point at the image centre."""
        focal = (width / 2.0) / math.tan(math.radians(horizontal_fov_deg) / 2.0)
        return cls(int(width), int(height), focal, focal, (width - 1) / 2.0, (height - 1) / 2.0)

    def matrix(self) -> np.ndarray:
        """Return the 3 x 3 camera matrix K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def to_dict(self):
        """Return a JSON-ready dict."""
        return asdict(self)

    def ray_directions(self) -> np.ndarray:
        """Return float32 (H, W, 3) optical-frame ray directions scaled so that z = 1.

        With z = 1 a ray parameter equals the depth along the optical axis. Read-only, cached.
        """
        return _ray_directions(self)

    def project(self, points_cam) -> np.ndarray:
        """Project optical-frame points (N, 3) with z > 0 to pixel coordinates (N, 2) u, v."""
        points = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
        return np.stack([self.fx * points[:, 0] / points[:, 2] + self.cx,
                         self.fy * points[:, 1] / points[:, 2] + self.cy], axis=1)


@functools.lru_cache(maxsize=8)
def _ray_directions(intrinsics):
    """Compute ``Intrinsics.ray_directions`` once per intrinsics."""
    u = (np.arange(intrinsics.width) - intrinsics.cx) / intrinsics.fx
    v = (np.arange(intrinsics.height) - intrinsics.cy) / intrinsics.fy
    directions = np.empty((intrinsics.height, intrinsics.width, 3), dtype=np.float32)
    directions[..., 0] = u[None, :]
    directions[..., 1] = v[:, None]
    directions[..., 2] = 1.0
    directions.setflags(write=False)
    return directions


def camera_pose(position, yaw, pitch=0.0, roll=0.0) -> np.ndarray:
    """Return the 4 x 4 ``T_scene_cam`` of an optical camera on a body with yaw/pitch/roll.

    The body frame is REP-103 (x forward, y left, z up) in a z-up scene; ``yaw`` turns about the
    scene z axis (0 looks along +x), positive ``pitch`` tilts the view down, positive ``roll``
    banks to the right. Angles in radians, applied as intrinsic Z-Y-X.
    """
    pose = np.eye(4)
    body = Rotation.from_euler('ZYX', [yaw, pitch, roll]).as_matrix()
    pose[:3, :3] = body @ R_BODY_OPTICAL
    pose[:3, 3] = position
    return pose


def as_pose_matrix(pose) -> np.ndarray:
    """Return a 4 x 4 float64 pose from a 4 x 4 matrix or a (position (3,), xyzw (4,)) pair."""
    if isinstance(pose, tuple | list) and len(pose) == 2:
        matrix = np.eye(4)
        matrix[:3, :3] = Rotation.from_quat(pose[1]).as_matrix()
        matrix[:3, 3] = pose[0]
        return matrix
    matrix = np.asarray(pose, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f'pose must be 4x4 or (position, orientation), got shape {matrix.shape}')
    return matrix
