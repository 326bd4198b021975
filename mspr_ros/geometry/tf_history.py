"""A time-indexed transform tree: the ROS-free core of our TF listener (tf2 semantics).

The node feeds it every ``/tf`` and ``/tf_static`` transform and looks up, e.g., ``odom <- base``
at an image stamp. Each frame has at most one parent; an edge is either static (valid at all
times) or dynamic (a time series, interpolated between the two samples around the requested time
and never extrapolated beyond ``extrapolation_tolerance_s``). Thread-safe: the TF subscription
writes while the inference thread reads, and ``lookup(timeout=...)`` waits for data to arrive.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
import operator
import threading
import time
from typing import Any

from mspr_ros.geometry.transforms import Transform

_NS_PER_S = 1_000_000_000


class FrameNotFound(LookupError):
    """A frame that no transform mentions."""


class ExtrapolationError(LookupError):
    """The requested time lies outside the samples of an edge."""


class ConnectivityError(LookupError):
    """The frames exist but lie in different trees."""


class TransformDataError(ValueError):
    """A transform that cannot be added: a second parent, a cycle, bad names or stamps."""


@dataclasses.dataclass
class _Edge:
    parent: str
    static: bool
    # Dynamic edges: sorted stamps and their transforms. Static edges: one entry, stamp unused.
    stamps: list[int]
    transforms: list[Transform]


def _seconds(stamp_ns: int) -> str:
    return f'{stamp_ns / _NS_PER_S:.9f} s'


def _stamp(value: Any) -> int:
    if isinstance(value, bool):
        raise TransformDataError(f'stamp must be integer nanoseconds, got {value!r}')
    try:
        stamp = operator.index(value)
    except TypeError as error:
        raise TransformDataError(f'stamp must be integer nanoseconds, got {value!r}') from error
    if stamp < 0:
        raise TransformDataError(f'stamp must be >= 0 ns, got {stamp}')
    return stamp


def _frame(value: Any, role: str) -> str:
    if not isinstance(value, str) or not value:
        raise TransformDataError(f'{role} frame must be a non-empty string, got {value!r}')
    if value.startswith('/'):
        raise TransformDataError(f'{role} frame {value!r} must not start with "/" (tf2 rule)')
    return value


class TransformBuffer:
    """Stores transforms per (parent, child) edge and composes lookups across the tree."""

    def __init__(self, cache_time_s: float = 10.0, extrapolation_tolerance_s: float = 0.0
                 ) -> None:
        """Create an empty buffer.

        Args:
            cache_time_s: dynamic samples older than the newest sample of their edge minus this
                are pruned (> 0).
            extrapolation_tolerance_s: a requested time this close beyond an edge's oldest or
                newest sample uses that sample instead of failing (>= 0; tf2 uses 0).
        """
        if not cache_time_s > 0.0:
            raise ValueError(f'cache_time_s must be > 0, got {cache_time_s!r}')
        if not extrapolation_tolerance_s >= 0.0:
            raise ValueError('extrapolation_tolerance_s must be >= 0, got '
                             f'{extrapolation_tolerance_s!r}')
        self._cache_ns = int(round(cache_time_s * _NS_PER_S))
        self._tolerance_ns = int(round(extrapolation_tolerance_s * _NS_PER_S))
        self._edges: dict[str, _Edge] = {}  # keyed by child frame
        self._frames: set[str] = set()
        self._changed = threading.Condition()

    def set_transform(self, parent: str, child: str, stamp_ns: int, transform: Transform,
                      static: bool = False) -> None:
        """Add ``T_parent_child`` at ``stamp_ns`` (ignored for static edges, which are replaced).

        Raises:
            TransformDataError: bad frame names or stamp, a child that already has another
                parent (the "two parents" mistake, both named), a cycle, a static/dynamic
                mismatch on one edge, or a dynamic sample older than the cache window.
        """
        parent = _frame(parent, 'parent')
        child = _frame(child, 'child')
        stamp = _stamp(stamp_ns)
        if parent == child:
            raise TransformDataError(f'transform from frame {child!r} to itself')
        if not isinstance(transform, Transform):
            raise TransformDataError(f'transform must be a Transform, got '
                                     f'{type(transform).__name__}')
        with self._changed:
            edge = self._edges.get(child)
            if edge is not None and edge.parent != parent:
                raise TransformDataError(
                    f'frame {child!r} already has parent {edge.parent!r}; refusing a second '
                    f'parent {parent!r} (each frame has exactly one parent in a TF tree)')
            if edge is None:
                self._check_no_cycle(parent, child)
                edge = _Edge(parent, static, [], [])
            elif edge.static != static:
                kinds = ('static', 'dynamic')
                raise TransformDataError(
                    f'edge {parent!r} -> {child!r} is {kinds[not edge.static]}; got a '
                    f'{kinds[not static]} transform for it')
            if static:
                edge.stamps, edge.transforms = [stamp], [transform]
            else:
                self._insert(edge, child, stamp, transform)
            self._edges[child] = edge
            self._frames.update((parent, child))
            self._changed.notify_all()

    def _check_no_cycle(self, parent: str, child: str) -> None:
        frame = parent
        while frame in self._edges:
            frame = self._edges[frame].parent
            if frame == child:
                raise TransformDataError(f'adding {parent!r} -> {child!r} would create a cycle: '
                                         f'{child!r} is an ancestor of {parent!r}')

    def _insert(self, edge: _Edge, child: str, stamp: int, transform: Transform) -> None:
        newest = edge.stamps[-1] if edge.stamps else stamp
        if stamp < newest - self._cache_ns:
            raise TransformDataError(
                f'sample of {edge.parent!r} -> {child!r} at {_seconds(stamp)} is older than the '
                f'cache window (newest {_seconds(newest)}, cache {_seconds(self._cache_ns)}); '
                'if time jumped back (bag loop, simulation reset) call clear()')
        index = bisect.bisect_left(edge.stamps, stamp)
        if index < len(edge.stamps) and edge.stamps[index] == stamp:
            edge.transforms[index] = transform
        else:
            edge.stamps.insert(index, stamp)
            edge.transforms.insert(index, transform)
        cutoff = bisect.bisect_left(edge.stamps, edge.stamps[-1] - self._cache_ns)
        if cutoff:
            del edge.stamps[:cutoff]
            del edge.transforms[:cutoff]

    def clear(self) -> None:
        """Forget every transform (call when time jumps backwards)."""
        with self._changed:
            self._edges.clear()
            self._frames.clear()

    def frames(self) -> set[str]:
        """Return every frame any transform mentions."""
        with self._changed:
            return set(self._frames)

    def parent_of(self, frame: str) -> str | None:
        """Return the parent of ``frame``, or None for a root or unknown frame."""
        with self._changed:
            edge = self._edges.get(frame)
            return edge.parent if edge is not None else None

    def lookup(self, target_frame: str, source_frame: str, stamp_ns: int | None = None,
               timeout: float | None = None) -> Transform:
        """Return ``T_target_source`` at ``stamp_ns``, composed across any number of edges.

        Args:
            target_frame: the frame the result maps into.
            source_frame: the frame the result maps from.
            stamp_ns: nanoseconds, or None for the latest time at which every dynamic edge of the
                path has data (tf2's "time 0"); static edges are valid at any time.
            timeout: seconds to wait for the transform to become available (None or 0: do not
                wait). Waits on new data, not by polling. A frame relative to itself is the
                identity without any data (as in tf2).

        Raises:
            FrameNotFound, ExtrapolationError, ConnectivityError (all ``LookupError``): the
            error of the last attempt when the timeout expires.
        """
        target_frame = _frame(target_frame, 'target')
        source_frame = _frame(source_frame, 'source')
        stamp = None if stamp_ns is None else _stamp(stamp_ns)
        wait_s = 0.0 if timeout is None else float(timeout)
        if not (math.isfinite(wait_s) and wait_s >= 0.0):
            raise ValueError(f'timeout must be None or finite seconds >= 0, got {timeout!r}')
        deadline = time.monotonic() + wait_s
        with self._changed:
            while True:
                try:
                    return self._lookup_locked(target_frame, source_frame, stamp)
                except LookupError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0.0:
                        raise
                    self._changed.wait(remaining)

    def can_transform(self, target_frame: str, source_frame: str, stamp_ns: int | None = None,
                      timeout: float | None = None) -> bool:
        """Return whether ``lookup`` with the same arguments would succeed."""
        try:
            self.lookup(target_frame, source_frame, stamp_ns, timeout)
        except LookupError:
            return False
        return True

    def _path_to_root(self, frame: str) -> list[str]:
        path = [frame]
        while path[-1] in self._edges:
            path.append(self._edges[path[-1]].parent)
        return path

    def _lookup_locked(self, target: str, source: str, stamp: int | None) -> Transform:
        if target == source:
            # As tf2: a frame relative to itself is the identity, known or not.
            return Transform.identity()
        missing = [frame for frame in (target, source) if frame not in self._frames]
        if missing:
            known = sorted(self._frames)
            shown = ', '.join(known[:20]) + (' ...' if len(known) > 20 else '')
            raise FrameNotFound(f'frame(s) {missing} unknown in lookup {target!r} <- '
                                f'{source!r}; known frames: [{shown}]')
        source_path = self._path_to_root(source)
        target_path = self._path_to_root(target)
        on_target_path = set(target_path)
        common = next((frame for frame in source_path if frame in on_target_path), None)
        if common is None:
            raise ConnectivityError(
                f'frames {target!r} and {source!r} are not connected: their trees have roots '
                f'{target_path[-1]!r} and {source_path[-1]!r}')
        source_chain = source_path[:source_path.index(common)]
        target_chain = target_path[:target_path.index(common)]
        if stamp is None:
            stamp = self._latest_common_stamp(source_chain + target_chain)
        # T_common_frame for both frames, composed child-first up to the common ancestor.
        common_source = self._chain_transform(source_chain, stamp)
        common_target = self._chain_transform(target_chain, stamp)
        return common_target.inverse() @ common_source

    def _latest_common_stamp(self, children: list[str]) -> int | None:
        dynamic = [self._edges[child] for child in children if not self._edges[child].static]
        if not dynamic:
            return None
        return min(edge.stamps[-1] for edge in dynamic)

    def _chain_transform(self, children: list[str], stamp: int | None) -> Transform:
        result = Transform.identity()
        for child in reversed(children):  # from the ancestor side down to the frame
            result = result @ self._edge_transform(child, stamp)
        return result

    def _edge_transform(self, child: str, stamp: int | None) -> Transform:
        edge = self._edges[child]
        if edge.static:
            return edge.transforms[0]
        oldest, newest = edge.stamps[0], edge.stamps[-1]
        if stamp is None:  # only when the path has no dynamic edge, so unreachable here
            return edge.transforms[-1]
        if stamp < oldest - self._tolerance_ns or stamp > newest + self._tolerance_ns:
            direction = 'past' if stamp < oldest else 'future'
            raise ExtrapolationError(
                f'lookup would extrapolate into the {direction}: requested {_seconds(stamp)} '
                f'but edge {edge.parent!r} -> {child!r} has samples from {_seconds(oldest)} to '
                f'{_seconds(newest)} ({len(edge.stamps)} samples)')
        if stamp <= oldest:
            return edge.transforms[0]
        if stamp >= newest:
            return edge.transforms[-1]
        after = bisect.bisect_left(edge.stamps, stamp)
        if edge.stamps[after] == stamp:
            return edge.transforms[after]
        before = after - 1
        fraction = (stamp - edge.stamps[before]) / (edge.stamps[after] - edge.stamps[before])
        return edge.transforms[before].interpolate(edge.transforms[after], fraction)
