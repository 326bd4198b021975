"""Cameras and camera poses of the rendered world.

The renderer draws through any ``mspr_ros.camera.model.CameraModel`` (the project's one camera
class: a pinhole, or a lens with ``plumb_bob`` / ``rational_polynomial`` / ``equidistant``
distortion). ``CameraModel.from_fov`` is the training camera; :func:`wide_camera` a wide-angle
lens with radial distortion, the kind a robot may carry instead.

Pixel convention (OpenCV): pixel (u, v) has its centre at image coordinates (u, v), so the image
spans [-0.5, W - 0.5] and the exact centre is ((W - 1) / 2, (H - 1) / 2). A camera-frame point
(x, y, z) in the optical frame (x right, y down, z forward) projects through a pinhole to
``u = fx x / z + cx``, ``v = fy y / z + cy``, the distortion applied to (x / z, y / z) between.
"""
import math

import numpy as np
from scipy.spatial.transform import Rotation

from mspr_ros.camera.model import CameraModel
from mspr_ros.geometry.transforms import R_BODY_OPTICAL


def wide_camera(width=400, height=300, horizontal_fov_deg=90.0, k1=-0.28, k2=0.07
                ) -> CameraModel:
    """Return a square-pixel ``plumb_bob`` camera whose distorted image spans the given fov.

    Principal point at the image centre, distortion ``(k1, k2, 0, 0, 0)``. The focal length is
    chosen so that the image's left and right borders (``width / 2`` pixels from the centre,
    the convention of ``CameraModel.from_fov``) see rays at half the field of view: a ray at
    angle a has the undistorted normalised radius ``t = tan(a)``, which the radial model maps to
    ``t (1 + k1 t^2 + k2 t^4)``, so ``f = (width / 2) / (t (1 + k1 t^2 + k2 t^4))`` with
    ``t = tan(fov / 2)``. The defaults (400 x 300, 90 deg, -0.28, 0.07) give
    ``f = 200 / 0.79 = 253.16`` px; the pinhole of the same focal would span only 76.6 deg, and
    the image corners look 53.9 deg off the axis (a pinhole's corners at that focal: 44.6 deg).
    Both coefficients zero give the pinhole ``CameraModel.from_fov`` (as ``from_camera_info``
    reads all-zero coefficients).

    Raises:
        ValueError: a field of view outside (0, 180) degrees, or coefficients whose radial map
            is not increasing out to the image corners (it would fold the image back on itself).
    """
    if not 0.0 < horizontal_fov_deg < 180.0:
        raise ValueError(f'horizontal field of view must be in (0, 180) degrees, got '
                         f'{horizontal_fov_deg}')
    if k1 == 0 and k2 == 0:
        return CameraModel.from_fov(width, height, horizontal_fov_deg)
    t = math.tan(math.radians(horizontal_fov_deg) / 2.0)
    scale = 1.0 + k1 * t ** 2 + k2 * t ** 4
    if scale <= 0:
        raise ValueError(f'distortion k1={k1}, k2={k2} folds the image back before '
                         f'{horizontal_fov_deg / 2} deg off the axis')
    focal = (width / 2.0) / (t * scale)
    camera = CameraModel(width, height, focal, focal, (width - 1) / 2.0, (height - 1) / 2.0,
                         'plumb_bob', (k1, k2, 0.0, 0.0, 0.0))
    # The distorted radius r (1 + k1 r^2 + k2 r^4) must grow with r up to the corner's radius.
    corner = math.hypot(width, height) / 2.0 / focal
    radii = np.linspace(0.0, _undistorted_radius(corner, k1, k2), 512)
    if np.any(1.0 + 3.0 * k1 * radii ** 2 + 5.0 * k2 * radii ** 4 <= 0):
        raise ValueError(f'distortion k1={k1}, k2={k2} is not monotonic over the image')
    return camera


def _undistorted_radius(distorted, k1, k2):
    """Return the smallest r >= 0 with r (1 + k1 r^2 + k2 r^4) = distorted, else a bound."""
    radii = np.linspace(0.0, 4.0 * max(distorted, 1.0), 4001)
    values = radii * (1.0 + k1 * radii ** 2 + k2 * radii ** 4)
    reached = np.flatnonzero(values >= distorted)
    return float(radii[reached[0]] if reached.size else radii[-1])


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
