"""Camera paths like a hand-held or robot-mounted camera walking loops through a room.

A path is one closed loop around the room inside its walkway band: a rounded rectangle pushed
sideways by a random smooth (low-frequency Fourier) offset, walked clockwise or anticlockwise,
sampled at equal arc length (one loop per sequence, as a dataset's subsampled video). The camera
is carried at ~1.5 m with a small step bob, looks mostly along the direction of travel with a
slow look-around yaw oscillation, and tilts by a few degrees of pitch and roll. Orientations are
built for the optical frame (z forward, x right, y down).
"""
from dataclasses import dataclass
import math

import numpy as np
from scipy.ndimage import gaussian_filter1d

from mspr_training.synth.camera import camera_pose

#: Dense samples per loop used to measure length, clearance and curvature.
DENSE_SAMPLES = 2000


@dataclass(frozen=True)
class PathStyle:
    """How the camera is carried (metres, degrees)."""

    height: float = 1.5
    bob_amplitude: float = 0.025
    stride: float = 0.7
    look_around_deg: float = 20.0
    look_around_period: float = 7.0
    pitch_deg: float = 3.0
    pitch_bias_deg: float = 2.0
    roll_deg: float = 2.0
    clearance: float = 0.5
    lateral_fraction: float = 0.8
    lateral_wavelength: float = 6.0
    corner_radius: float = 1.5
    min_turn_radius: float = 0.5
    smoothing: float = 0.4


class PathError(RuntimeError):
    """No collision-free loop could be found in the room."""


def plan_path(scene, num_frames, seed, style=PathStyle(), attempts=200,
              clockwise=None) -> np.ndarray:
    """Return float64 (num_frames, 4, 4) ``T_scene_cam`` poses along one closed loop.

    The loop runs around the room inside its walkway band, clockwise or anticlockwise
    (``clockwise`` None: drawn at random), with a random lateral offset at each waypoint;
    different seeds give different loops.

    Raises:
        PathError: no loop keeping ``style.clearance`` from walls and obstacles and turning no
            tighter than ``style.min_turn_radius`` was found.
    """
    if num_frames < 1:
        raise ValueError(f'num_frames must be positive, got {num_frames}')
    rng = np.random.default_rng(seed)
    for _ in range(attempts):
        loop = _random_loop(scene, rng, style, clockwise)
        if loop is not None:
            return _sample_poses(loop, num_frames, rng, style)
    raise PathError(f'no collision-free loop in scene {scene.name!r} after {attempts} attempts')


def _random_loop(scene, rng, style, clockwise=None):
    """Return a dense (DENSE_SAMPLES, 2) closed curve, or None when it fails the checks."""
    inner, outer = scene.walkway
    middle, half_width = (inner + outer) / 2, (outer - inner) / 2
    width, depth = scene.size[0] - 2 * middle, scene.size[1] - 2 * middle
    radius = min(style.corner_radius, width / 2, depth / 2)
    perimeter = 2 * (width + depth) - (8 - 2 * math.pi) * radius
    along = np.linspace(0.0, perimeter, DENSE_SAMPLES, endpoint=False)
    points, normals = _rounded_rectangle(along, middle, width, depth, radius)
    # Inward offsets shrink the corner radius: keep them within what the turn limit allows.
    amplitude = min(style.lateral_fraction * half_width, max(radius - style.min_turn_radius, 0.1))
    harmonics = np.arange(1, max(2, int(perimeter / style.lateral_wavelength)) + 1)
    weights = rng.normal(size=len(harmonics)) / harmonics
    phases = rng.uniform(0, 2 * math.pi, len(harmonics))
    wave = np.sin(2 * math.pi * np.outer(along / perimeter, harmonics) + phases) @ weights
    offsets = amplitude * wave / np.abs(wave).max()
    # Offsetting along normals kinks the curve slightly where arcs meet straights (the offset
    # curve's speed changes there); a short circular blur removes the kinks.
    sigma = style.smoothing / (perimeter / DENSE_SAMPLES)
    dense = gaussian_filter1d(points + offsets[:, None] * normals, sigma, axis=0, mode='wrap')
    dense = np.roll(dense, int(rng.integers(DENSE_SAMPLES)), axis=0)
    # The draw is made even when the direction is imposed, so the rest of the loop stays the same.
    reverse = rng.uniform() < 0.5
    if reverse if clockwise is None else clockwise:
        dense = dense[::-1]
    if scene.clearance(dense).min() < style.clearance:
        return None
    if _max_curvature(dense) > 1.0 / style.min_turn_radius:
        return None
    return dense


def _rounded_rectangle(along, inset, width, depth, radius):
    """Return points (N, 2) and inward unit normals (N, 2) around a rounded rectangle.

    The rectangle spans ``inset`` .. ``inset + width`` by ``inset`` .. ``inset + depth``;
    ``along`` holds arc lengths measured anticlockwise from ``(inset + radius, inset)``.
    """
    x0, y0, x1, y1 = inset + radius, inset + radius, inset + width - radius, inset + depth - radius
    straight_x, straight_y, arc = x1 - x0, y1 - y0, math.pi * radius / 2
    # Pieces in order: (length, start heading, start point or arc centre, is_arc).
    pieces = [(straight_x, 0.0, (x0, inset), False), (arc, 0.0, (x1, y0), True),
              (straight_y, math.pi / 2, (inset + width, y0), False),
              (arc, math.pi / 2, (x1, y1), True),
              (straight_x, math.pi, (x1, inset + depth), False), (arc, math.pi, (x0, y1), True),
              (straight_y, 3 * math.pi / 2, (inset, y1), False),
              (arc, 3 * math.pi / 2, (x0, y0), True)]
    points = np.empty((len(along), 2))
    headings = np.empty(len(along))
    start = 0.0
    for index, (length, heading, anchor, is_arc) in enumerate(pieces):
        last = index == len(pieces) - 1
        on_piece = (along >= start) & ((along < start + length) | last)
        step = along[on_piece] - start
        if is_arc:
            angle = heading + step / max(radius, 1e-9)
            # Anticlockwise travel: the centre lies to the left, at +90 deg from the heading.
            points[on_piece, 0] = anchor[0] + radius * np.sin(angle)
            points[on_piece, 1] = anchor[1] - radius * np.cos(angle)
            headings[on_piece] = angle
        else:
            points[on_piece, 0] = anchor[0] + step * math.cos(heading)
            points[on_piece, 1] = anchor[1] + step * math.sin(heading)
            headings[on_piece] = heading
        start += length
    normals = np.stack([-np.sin(headings), np.cos(headings)], axis=1)
    return points, normals


def _max_curvature(dense):
    """Return the largest heading change per metre (1/m) along a dense closed curve (M, 2)."""
    steps = np.roll(dense, -1, axis=0) - dense
    heading = np.arctan2(steps[:, 1], steps[:, 0])
    turn = np.angle(np.exp(1j * (np.roll(heading, -1) - heading)))
    return float(np.max(np.abs(turn) / np.linalg.norm(steps, axis=1)))


def _sample_poses(dense, num_frames, rng, style):
    """Return poses at equal arc length along a dense closed curve."""
    closed = np.vstack([dense, dense[:1]])
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))]
    length = arc[-1]
    start = rng.uniform(0.0, length)
    distance = start + np.arange(num_frames) * (length / num_frames)
    along = np.mod(distance, length)
    xy = np.stack([np.interp(along, arc, closed[:, k]) for k in (0, 1)], axis=1)
    # Heading from a central difference over ~10 cm smooths the spline's dense sampling.
    ahead = np.mod(along + 0.05, length)
    behind = np.mod(along - 0.05, length)
    delta = (np.stack([np.interp(ahead, arc, closed[:, k]) for k in (0, 1)], axis=1)
             - np.stack([np.interp(behind, arc, closed[:, k]) for k in (0, 1)], axis=1))
    heading = np.arctan2(delta[:, 1], delta[:, 0])
    phases = rng.uniform(0.0, 2 * math.pi, size=4)
    look = math.radians(style.look_around_deg) * np.sin(
        2 * math.pi * distance / style.look_around_period + phases[0])
    pitch = math.radians(style.pitch_bias_deg) + math.radians(style.pitch_deg) * np.sin(
        2 * math.pi * distance / 5.3 + phases[1])
    roll = math.radians(style.roll_deg) * np.sin(2 * math.pi * distance / 4.1 + phases[2])
    height = style.height + style.bob_amplitude * np.sin(
        2 * math.pi * distance / style.stride + phases[3])
    return np.stack([
        camera_pose((xy[i, 0], xy[i, 1], height[i]), heading[i] + look[i], pitch[i], roll[i])
        for i in range(num_frames)])
