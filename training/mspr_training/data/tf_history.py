"""Recorded TF trees: compose static and time-varying transforms along a frame chain."""
from collections import defaultdict, deque

import numpy as np

from mspr_training.data.trajectory import compose, invert, Trajectory, trajectory_from_unsorted


class TransformHistory:
    """Every transform of a recording, keyed by (parent, child) frame.

    Static transforms (``/tf_static``) hold for all time; dynamic ones (``/tf``) are interpolated
    between their stamps. Frame names are stored without a leading ``/`` (ROS 1 style names).
    """

    def __init__(self):
        """Start with no transforms."""
        self._static = {}
        self._dynamic = defaultdict(list)
        self.duplicate_stamps = 0

    def add(self, parent, child, stamp_ns, translation, rotation_xyzw, static):
        """Record ``T_parent_child`` (translation (3,), rotation xyzw (4,)) at ``stamp_ns``."""
        key = (_clean(parent), _clean(child))
        pose = (np.asarray(translation, dtype=np.float64), np.asarray(rotation_xyzw, np.float64))
        if static:
            self._static[key] = pose
        else:
            self._dynamic[key].append((int(stamp_ns), *pose))

    def frames(self):
        """Return the sorted names of every frame seen."""
        names = set()
        for parent, child in list(self._static) + list(self._dynamic):
            names.update((parent, child))
        return sorted(names)

    def lookup(self, target_frame, source_frame, max_gap_ns=None) -> Trajectory:
        """Return the trajectory of ``T_target_source`` (source frame's pose in the target frame).

        The chain may hop through any number of frames, each edge used forwards or inverted.
        Stamps are the union of the stamps of the chain's dynamic edges, kept where every dynamic
        edge interpolates validly (inside its range, no gap over ``max_gap_ns``).

        Raises:
            LookupError: unknown frame, no chain, a chain made of static transforms only, no
                common valid stamp, or the same edge on both static and dynamic topics.
        """
        target, source = _clean(target_frame), _clean(source_frame)
        both = sorted(set(self._static) & set(self._dynamic))
        if both:
            raise LookupError(f'transform {both[0][0]} -> {both[0][1]} is both static and dynamic')
        edges = self._chain(target, source)
        dynamic = {}
        for parent, child in {(p, c) for p, c, _ in edges if (p, c) in self._dynamic}:
            stamps, positions, quats = zip(*self._dynamic[(parent, child)])
            trajectory, duplicates = trajectory_from_unsorted(stamps, positions, quats, parent)
            self.duplicate_stamps += duplicates
            dynamic[(parent, child)] = trajectory
        if not dynamic:
            raise LookupError(
                f'{target} -> {source} is connected by static transforms only: no trajectory')
        stamps = np.unique(np.concatenate([t.stamps_ns for t in dynamic.values()]))
        valid = np.ones(len(stamps), dtype=bool)
        pose = (np.zeros((len(stamps), 3)), np.tile([0.0, 0.0, 0.0, 1.0], (len(stamps), 1)))
        for parent, child, forward in edges:
            if (parent, child) in dynamic:
                positions, quats, edge_valid = dynamic[(parent, child)].interpolate(
                    stamps, max_gap_ns)
                valid &= edge_valid
                step = (np.nan_to_num(positions), np.nan_to_num(quats, nan=0.5))
            else:
                translation, rotation = self._static[(parent, child)]
                count = len(stamps)
                step = (np.tile(translation, (count, 1)), np.tile(rotation, (count, 1)))
            pose = compose(pose, step if forward else invert(step))
        if not np.any(valid):
            raise LookupError(f'{target} -> {source}: the chain transforms never overlap in time')
        return Trajectory(stamps[valid], pose[0][valid], pose[1][valid], target)

    def _chain(self, target, source):
        """Return edges ``(parent, child, forward)`` leading from ``target`` to ``source``."""
        neighbours = defaultdict(list)
        for parent, child in list(self._static) + list(self._dynamic):
            neighbours[parent].append((child, (parent, child, True)))
            neighbours[child].append((parent, (parent, child, False)))
        for frame in (target, source):
            if frame not in neighbours:
                raise LookupError(
                    f'frame {frame!r} is not in the TF tree (frames: {", ".join(self.frames())})')
        previous = {target: None}
        queue = deque([target])
        while queue:
            frame = queue.popleft()
            for other, edge in neighbours[frame]:
                if other not in previous:
                    previous[other] = (frame, edge)
                    queue.append(other)
        if source not in previous:
            raise LookupError(f'no TF chain connects {target!r} and {source!r}')
        edges = []
        frame = source
        while previous[frame] is not None:
            frame, edge = previous[frame]
            edges.append(edge)
        return edges[::-1]


def _clean(frame):
    """Return a frame name without the leading slash of ROS 1 style names."""
    return frame.lstrip('/')
