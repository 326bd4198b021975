"""CPU renderer of the synthetic scenes: a vectorised numpy ray caster.

Why a ray caster instead of pyrender/OpenGL: pyrender needs system EGL or OSMesa libraries that a
pip-only set-up cannot guarantee on a bare CI machine, while casting one ray per pixel against
boxes, cylinders and the room's planes is exact (analytic intersections), deterministic and needs
only numpy. Per frame it casts all rays at once; each object is intersected only with the rays of
its screen window, then pixels are shaded in groups of (primitive, face).

Cameras: any ``CameraModel``, distorted or not. Each pixel's ray is the camera's own undistorted
ray (``CameraModel.ray_directions``), so a lens's distortion lands exactly where OpenCV's
projection of the camera puts it.

Shading: nearest-texel lookup in pre-filtered photo textures, Lambert lighting (ambient plus a
directional term from the surface normal), a colour tint, optional vignetting and an exposure
gain (a camera's auto-exposure landing elsewhere).
"""
from dataclasses import dataclass
import functools
import math

import numpy as np

from mspr_ros.camera.model import CameraModel
from mspr_training.synth.camera import as_pose_matrix
from mspr_training.synth.raycast import (box_hits, CURVED, cylinder_hits, room_hits, safe_inverse)
from mspr_training.synth.textures import TEXTURE_SIZE
from mspr_training.synth.world import Box, ROOM_FACES, Scene

#: Unit normal of each flat normal code (2 * axis + positive).
CODE_NORMALS = np.array([[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]],
                        dtype=np.float32)


@dataclass(frozen=True)
class Lighting:
    """Illumination of one sequence.

    Attributes:
        ambient: light reaching every surface.
        diffuse: strength of the directional light on a surface facing it.
        direction: unit vector the directional light travels along (scene frame).
        tint: RGB gain of the light colour.
        vignetting: relative brightness lost at the image corners (0 = none).
        exposure: gain of the whole image (1 = the training exposure).
    """

    ambient: float = 0.6
    diffuse: float = 0.45
    direction: tuple = (0.3, 0.2, -0.93)
    tint: tuple = (1.0, 1.0, 1.0)
    vignetting: float = 0.0
    exposure: float = 1.0

    @classmethod
    def random(cls, rng):
        """Return seeded lighting: dimmer or brighter, warmer or cooler, light from above."""
        azimuth = rng.uniform(0, 2 * math.pi)
        elevation = rng.uniform(math.radians(35), math.radians(80))
        direction = (-math.cos(elevation) * math.cos(azimuth),
                     -math.cos(elevation) * math.sin(azimuth), -math.sin(elevation))
        warmth = rng.uniform(-0.08, 0.08)
        return cls(ambient=float(rng.uniform(0.45, 0.7)), diffuse=float(rng.uniform(0.25, 0.55)),
                   direction=tuple(float(d) for d in direction),
                   tint=(1.0 + warmth, 1.0, 1.0 - warmth),
                   vignetting=float(rng.uniform(0.0, 0.35)))

    @classmethod
    def shifted(cls, rng):
        """Return seeded lighting outside the range :meth:`random` draws training light from.

        What a robot meets on another day: the exposure 25-40 % darker or brighter, a colour
        cast two to three times stronger, a wider range of ambient and sun strength, a lower
        sun and more vignetting. Test sequences use it, so a test measures generalisation to
        light rather than recall of the training images.
        """
        azimuth = rng.uniform(0, 2 * math.pi)
        elevation = rng.uniform(math.radians(20), math.radians(80))
        direction = (-math.cos(elevation) * math.cos(azimuth),
                     -math.cos(elevation) * math.sin(azimuth), -math.sin(elevation))
        warmth = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.18))
        exposure = float(1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.4))
        return cls(ambient=float(rng.uniform(0.35, 0.8)), diffuse=float(rng.uniform(0.15, 0.7)),
                   direction=tuple(float(d) for d in direction),
                   tint=(1.0 + warmth, 1.0, 1.0 - warmth),
                   vignetting=float(rng.uniform(0.1, 0.5)), exposure=exposure)

    def to_dict(self):
        """Return a JSON-ready dict."""
        return {'ambient': self.ambient, 'diffuse': self.diffuse,
                'direction': list(self.direction), 'tint': list(self.tint),
                'vignetting': self.vignetting, 'exposure': self.exposure}


@dataclass(frozen=True, eq=False)
class RenderResult:
    """One rendered view.

    Attributes:
        rgb: uint8 (H, W, 3).
        depth: float32 (H, W) metres along the optical axis.
        primitive_id: int32 (H, W): 0..5 the ROOM_FACES, 6 + i the scene's ``objects[i]``.
    """

    rgb: np.ndarray
    depth: np.ndarray
    primitive_id: np.ndarray


def render(scene: Scene, pose, camera: CameraModel, lighting: Lighting | None = None
           ) -> RenderResult:
    """Render ``scene`` seen by a camera at ``pose``.

    Args:
        scene: the room to draw.
        pose: ``T_scene_cam`` (optical frame), a 4 x 4 matrix or (position (3,), xyzw (4,)).
            The camera centre must be inside the room and outside every object.
        camera: the camera (any ``CameraModel``; distortion is rendered).
        lighting: illumination (default ``Lighting()``).
    """
    lighting = lighting or Lighting()
    matrix = as_pose_matrix(pose)
    rotation, origin = matrix[:3, :3], matrix[:3, 3]
    if not scene.contains_camera(origin):
        raise ValueError(f'camera centre {origin.tolist()} is outside room {scene.name!r} or '
                         'inside one of its objects')
    height, width = camera.height, camera.width
    rays = rotation.astype(np.float32) @ camera.ray_directions().reshape(-1, 3).T
    directions = rays.reshape(3, height, width)
    inverse = safe_inverse(directions)
    depth, primitive, code = room_hits(origin, directions, inverse, scene.size)
    for index, item in enumerate(scene.objects):
        window = _screen_window(item.bounds(), rotation, origin, camera)
        if window is None:
            continue
        rows, cols = window
        if isinstance(item, Box):
            t, item_code = box_hits(origin, directions[:, rows, cols],
                                    inverse[:, rows, cols], item.lo, item.hi)
        else:
            t, item_code = cylinder_hits(origin, directions[:, rows, cols], item.centre,
                                         item.radius, item.z0, item.z1)
        closer = t < depth[rows, cols]
        depth[rows, cols][closer] = t[closer]
        primitive[rows, cols][closer] = len(ROOM_FACES) + index
        code[rows, cols][closer] = item_code[closer]
    points = origin.astype(np.float32)[:, None] + depth.reshape(1, -1) * rays
    colour, gain = _shade(scene, points, primitive.ravel(), code.ravel(), lighting)
    gain = gain.reshape(height, width) * _vignette(camera, lighting.vignetting)
    tint = np.asarray(lighting.tint, np.float32) * np.float32(lighting.exposure)
    rgb = colour.reshape(height, width, 3) * gain[..., None] * tint
    return RenderResult(rgb=np.clip(rgb + 0.5, 0, 255).astype(np.uint8),
                        depth=depth.astype(np.float32), primitive_id=primitive.astype(np.int32))


def _screen_window(bounds, rotation, origin, camera, margin=1):
    """Return (row slice, column slice) holding every pixel whose ray may hit a box, or None.

    Works on the rays themselves, so it holds for any camera: the box's corners are projected
    without distortion onto the z = 1 plane, where the box's shadow lies inside the rectangle
    [x0, x1] x [y0, y1] of their projections (a box in front of the camera projects to the
    convex hull of its corners). A pixel can only hit the box when its ray's (x, y) lies in that
    rectangle; the window keeps the columns whose rays reach [x0, x1] in some row and the rows
    whose rays reach [y0, y1] in some column (``_ray_extents``), widened by ``margin`` pixels
    for rounding. For a pinhole this is the box's projected rectangle; with distortion (where
    straight edges bend, and a polynomial lens model folds back outside its image, so projecting
    edge points could miss pixels) it is a conservative superset. The window only limits which
    rays are tested, so it never changes a pixel as long as it holds every hit.
    """
    corners = np.array([[bounds[i, 0], bounds[j, 1], bounds[k, 2]]
                        for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    points = (corners - origin) @ rotation
    if np.all(points[:, 2] <= 0):
        return None
    if np.any(points[:, 2] <= 1e-6):
        # Part of the box is behind the camera: its projection is unbounded.
        return slice(0, camera.height), slice(0, camera.width)
    x = points[:, 0] / points[:, 2]
    y = points[:, 1] / points[:, 2]
    col_min, col_max, row_min, row_max = _ray_extents(camera)
    cols = np.flatnonzero((col_max >= x.min()) & (col_min <= x.max()))
    rows = np.flatnonzero((row_max >= y.min()) & (row_min <= y.max()))
    if cols.size == 0 or rows.size == 0:
        return None
    return (slice(max(0, int(rows[0]) - margin), min(camera.height, int(rows[-1]) + margin + 1)),
            slice(max(0, int(cols[0]) - margin), min(camera.width, int(cols[-1]) + margin + 1)))


@functools.lru_cache(maxsize=8)
def _ray_extents(camera):
    """Return the ray x range of each column and the ray y range of each row, float64.

    (column min x (W,), column max x (W,), row min y (H,), row max y (H,)) of the camera's
    z = 1 rays; for a pinhole each column has one x and each row one y.
    """
    rays = camera.ray_directions().astype(np.float64)
    return (rays[..., 0].min(axis=0), rays[..., 0].max(axis=0),
            rays[..., 1].min(axis=1), rays[..., 1].max(axis=1))


def _shade(scene, points, primitive, code, lighting):
    """Return texture colour float32 (P, 3) in 0..255 and Lambert gain float32 (P,).

    ``points`` are the hit points as float32 planes (3, P). Pixels are sorted into groups of
    equal (primitive, normal code) so that each group is a contiguous slice; one scatter puts
    the results back in pixel order.
    """
    count = points.shape[1]
    key = primitive.astype(np.int64) * 8 + code
    order = np.argsort(key, kind='stable')
    sorted_keys = key[order]
    sorted_points = points[:, order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    ends = np.r_[starts[1:], count]
    sorted_colour = np.empty((count, 3), dtype=np.float32)
    sorted_gain = np.empty(count, dtype=np.float32)
    light = -np.asarray(lighting.direction, dtype=np.float32)
    for start, end in zip(starts, ends):
        primitive_id, face_code = divmod(int(sorted_keys[start]), 8)
        if primitive_id < len(ROOM_FACES):
            material, item = scene.face_materials[primitive_id], None
        else:
            item = scene.primitive(primitive_id)
            material = item.material
        group_points = sorted_points[:, start:end]
        if face_code == CURVED:
            lambert = np.maximum(
                ((group_points[0] - np.float32(item.centre[0])) * light[0]
                 + (group_points[1] - np.float32(item.centre[1])) * light[1])
                / np.float32(item.radius), 0)
        else:
            lambert = max(float(CODE_NORMALS[face_code] @ light), 0.0)
        sorted_gain[start:end] = lighting.ambient + lighting.diffuse * lambert
        sorted_colour[start:end] = _texels(material, item, group_points, face_code)
    colour = np.empty_like(sorted_colour)
    colour[order] = sorted_colour
    gain = np.empty_like(sorted_gain)
    gain[order] = sorted_gain
    return colour, gain


def _texels(material, item, points, face_code):
    """Return float32 (n, 3) texture colours of surface points (3, n) on one face."""
    texture = material.texture()
    if material.source == '':
        return texture[0, 0]
    u, v = _surface_coordinates(item, points, face_code)
    if material.tile_m is None:
        # Stretch the photo once over the face: normalise by the face's extent.
        (u0, u1), (v0, v1) = _face_ranges(item, face_code)
        col = np.clip(((u - u0) * (TEXTURE_SIZE / (u1 - u0))).astype(np.int32), 0,
                      TEXTURE_SIZE - 1)
        row = np.clip(((v - v0) * (TEXTURE_SIZE / (v1 - v0))).astype(np.int32), 0,
                      TEXTURE_SIZE - 1)
    else:
        scale = np.float32(TEXTURE_SIZE / material.tile_m)
        # TEXTURE_SIZE is a power of two: a bit mask is the (always positive) modulo.
        col = np.floor(u * scale).astype(np.int32) & (TEXTURE_SIZE - 1)
        row = np.floor(v * scale).astype(np.int32) & (TEXTURE_SIZE - 1)
    return np.take(texture.reshape(-1, 3), row * TEXTURE_SIZE + col, axis=0)


def _surface_coordinates(item, points, face_code):
    """Return in-plane coordinates (u right, v down) in metres of points (3, n) on a face.

    Horizontal faces use (x, y); vertical ones are seen from the side their normal points to.
    """
    x, y, z = points
    if face_code == CURVED:
        angle = np.arctan2(y - item.centre[1], x - item.centre[0])
        return angle * np.float32(item.radius), -z
    if face_code >= 4:
        return x, y
    # Seen from the side the normal points to, "right" is (-normal) x up.
    return {0: (-y, -z), 1: (y, -z), 2: (x, -z), 3: (-x, -z)}[face_code]


def _face_ranges(item, face_code):
    """Return ((u_min, u_max), (v_min, v_max)) of a box face in ``_surface_coordinates``."""
    lo, hi = item.bounds()
    corners = np.array([lo, hi], dtype=np.float32).T
    u, v = _surface_coordinates(item, corners, face_code)
    return (float(u.min()), float(u.max())), (float(v.min()), float(v.max()))


def _vignette(camera, strength):
    """Return float32 (H, W) brightness factors falling by ``strength`` at the corners."""
    if strength <= 0:
        return np.float32(1.0)
    return np.float32(1.0) - np.float32(strength) * _radius_squared(camera)


def _radius_squared(camera):
    """Return float32 (H, W) squared tangent of each pixel's ray angle, 1 at its largest.

    The fall-off follows the angle off the optical axis, so a distorted lens darkens where it
    looks far out; the maximum is at the image corners for a pinhole or a barrel lens.
    """
    rays = camera.ray_directions()
    squared = rays[..., 0] ** 2 + rays[..., 1] ** 2
    return squared / squared.max()
