"""Vectorised ray intersections with the room shell, axis-aligned boxes and vertical cylinders.

All rays share one origin (a pinhole camera). Ray directions come as float32 planes
``(3, ...)`` (x, y and z components stored apart so every operation runs on contiguous arrays),
scaled so that the optical-axis component is 1: a ray parameter ``t`` is then the depth along
the optical axis. Misses are ``inf``.

Normal codes say which way the visible surface faces: ``2 * axis + (1 if the normal points to
+axis else 0)`` for flat faces, ``CURVED`` for the side of a cylinder.
"""
import numpy as np

CURVED = 6
_TINY = np.float32(1e-12)


def safe_inverse(directions):
    """Return 1 / directions with zero components (either sign) replaced by a tiny positive.

    The intersection functions take every ray's sign from this inverse, so that a -0.0
    component cannot pick the wrong slab bound.
    """
    safe = np.where(np.abs(directions) < _TINY, _TINY, directions)
    return np.float32(1.0) / safe


def room_hits(origin, directions, inverse, size):
    """Return (t, face id, normal code) where rays leave the room ``[0, size]`` from inside.

    Face ids follow ``world.ROOM_FACES``: ``2 * axis + side`` with side 1 at the high bound; the
    visible (inward) normal of a high face points to -axis.
    """
    exits = []
    for axis in range(3):
        high = np.float32(size[axis] - origin[axis]) * inverse[axis]
        low = np.float32(-origin[axis]) * inverse[axis]
        # Decide by the sign of the inverse: a zero component was replaced by +tiny there.
        exits.append(np.where(inverse[axis] > 0, high, low))
    t = np.minimum(np.minimum(exits[0], exits[1]), exits[2])
    axis = np.where(exits[0] == t, 0, np.where(exits[1] == t, 1, 2))
    side = _component(inverse, axis) > 0
    return t, 2 * axis + side, 2 * axis + ~side


def box_hits(origin, directions, inverse, lo, hi):
    """Return (t, normal code) of the first entry of rays into the box ``lo`` .. ``hi``."""
    entries, far = [], None
    for axis in range(3):
        t_lo = np.float32(lo[axis] - origin[axis]) * inverse[axis]
        t_hi = np.float32(hi[axis] - origin[axis]) * inverse[axis]
        entries.append(np.minimum(t_lo, t_hi))
        leave = np.maximum(t_lo, t_hi)
        far = leave if far is None else np.minimum(far, leave)
    near = np.maximum(np.maximum(entries[0], entries[1]), entries[2])
    axis = np.where(entries[0] == near, 0, np.where(entries[1] == near, 1, 2))
    hit = (near <= far) & (near > 0)
    # The entered face's outward normal opposes the ray along the entry axis.
    positive = _component(inverse, axis) < 0
    return np.where(hit, near, np.float32(np.inf)), 2 * axis + positive


def cylinder_hits(origin, directions, centre, radius, z0, z1):
    """Return (t, normal code) of the first entry into a vertical capped cylinder."""
    ox = np.float32(origin[0] - centre[0])
    oy = np.float32(origin[1] - centre[1])
    oz = np.float32(origin[2])
    dx, dy, dz = directions
    a = dx * dx + dy * dy
    half_b = ox * dx + oy * dy
    c = ox * ox + oy * oy - np.float32(radius * radius)
    disc = half_b * half_b - a * c
    with np.errstate(invalid='ignore', divide='ignore'):
        t = (-half_b - np.sqrt(np.maximum(disc, 0))) / a
    z = oz + t * dz
    side = (disc >= 0) & (a > 0) & (t > 0) & (z >= z0) & (z <= z1)
    t_best = np.where(side, t, np.float32(np.inf))
    code = np.full(t_best.shape, CURVED, dtype=np.int64)
    if oz > z1 or oz < z0:
        plane = z1 if oz > z1 else z0
        with np.errstate(invalid='ignore', divide='ignore'):
            t_cap = (np.float32(plane) - oz) / dz
        cap = ((t_cap > 0) & ((ox + t_cap * dx) ** 2 + (oy + t_cap * dy) ** 2 <= radius ** 2)
               & (t_cap < t_best))
        t_best = np.where(cap, t_cap, t_best)
        code = np.where(cap, 5 if oz > z1 else 4, code)
    return t_best.astype(np.float32, copy=False), code


def _component(directions, axis):
    """Return the ``axis`` component (0, 1 or 2 per ray) of direction planes (3, ...)."""
    return np.where(axis == 0, directions[0], np.where(axis == 1, directions[1], directions[2]))
