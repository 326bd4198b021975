"""A time-indexed transform tree: the ROS-free core of our TF listener (tf2 semantics).

The node feeds it every ``/tf`` and ``/tf_static`` transform and looks up, e.g., ``odom <- base``
at an image stamp. Each frame has at most one parent; an edge is either static (valid at all
times) or dynamic (a time series, interpolated between the two samples around the requested time
and never extrapolated beyond ``extrapolation_tolerance_s``). Thread-safe: the TF subscription
writes while the inference thread reads, and ``lookup(timeout=...)`` waits for data to arrive.

The bag tools use the same buffer for a whole recording: ``set_transforms`` adds one edge's samples
at once, ``chain_stamps`` and ``lookup_many`` give a frame chain at every stamp as arrays.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
import threading
import time
from typing import Any

import numpy as np
from scipy.spatial.transform import RigidTransform, Rotation

from mspr_ros.geometry.interpolation import interpolate_series, latest_per_stamp
from mspr_ros.geometry.quaternions import quaternion_from_rotation
# The errors and clean_frame_id are part of this module's interface: re-exported.
from mspr_ros.geometry.tf_checks import (check_transform, checked_frame, checked_stamp,
                                         clean_frame_id, ConnectivityError, ExtrapolationError,
                                         FrameNotFound, NS_PER_S, seconds_text,
                                         TransformDataError)
from mspr_ros.geometry.transforms import Transform

__all__ = ['clean_frame_id', 'ConnectivityError', 'ExtrapolationError', 'FrameNotFound',
           'TransformBuffer', 'TransformDataError']


@dataclasses.dataclass
class _Edge:
    parent: str
    static: bool
    # Dynamic edges: sorted stamps and their transforms. Static edges: one entry, stamp unused.
    stamps: list[int]
    transforms: list[Transform]


class TransformBuffer:
    """Stores transforms per (parent, child) edge and composes lookups across the tree."""

    def __init__(self, cache_time_s: float | None = 10.0,
                 extrapolation_tolerance_s: float = 0.0) -> None:
        """Create an empty buffer.

        Args:
            cache_time_s: dynamic samples older than the newest sample of their edge minus this
                are pruned (> 0); None keeps every sample (a whole recording).
            extrapolation_tolerance_s: a requested time this close beyond an edge's oldest or
                newest sample uses that sample instead of failing (>= 0; tf2 uses 0).
        """
        if cache_time_s is not None and not cache_time_s > 0.0:
            raise ValueError(f'cache_time_s must be > 0 or None, got {cache_time_s!r}')
        if not extrapolation_tolerance_s >= 0.0:
            raise ValueError('extrapolation_tolerance_s must be >= 0, got '
                             f'{extrapolation_tolerance_s!r}')
        self._cache_ns = None if cache_time_s is None else int(round(cache_time_s * NS_PER_S))
        self._tolerance_ns = int(round(extrapolation_tolerance_s * NS_PER_S))
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
        parent, child = self._edge_names(parent, child)
        stamp = checked_stamp(stamp_ns)
        check_transform(transform)
        with self._changed:
            edge = self._edge_for(parent, child, static)
            if static:
                edge.stamps, edge.transforms = [stamp], [transform]
            else:
                self._insert(edge, child, stamp, transform)
            self._store(parent, child, edge)

    def set_transforms(self, parent: str, child: str, stamps_ns: Any, transforms: Any,
                       static: bool = False) -> int:
        """Add many samples of ``T_parent_child`` at once (e.g. one edge of a recording).

        The checks are those of ``set_transform``. Samples may come in any order; of samples
        sharing a stamp (with each other or with stored ones) the last given wins, and a static
        edge keeps its last transform. With a cache window, samples older than the newest minus
        the window are pruned as if they had been added in time order.

        Returns:
            how many samples were dropped because a later one had the same stamp.
        """
        parent, child = self._edge_names(parent, child)
        stamps = [checked_stamp(stamp) for stamp in stamps_ns]
        transforms = list(transforms)
        if len(stamps) != len(transforms):
            raise TransformDataError(f'{len(stamps)} stamps for {len(transforms)} transforms')
        for transform in transforms:
            check_transform(transform)
        if not stamps:
            return 0
        with self._changed:
            edge = self._edge_for(parent, child, static)
            if static:
                edge.stamps, edge.transforms = stamps[-1:], transforms[-1:]
                repeats = 0
            else:
                merged_stamps, merged = edge.stamps + stamps, edge.transforms + transforms
                keep, repeats = latest_per_stamp(merged_stamps)
                edge.stamps = [merged_stamps[index] for index in keep]
                edge.transforms = [merged[index] for index in keep]
                self._prune(edge)
            self._store(parent, child, edge)
        return repeats

    @staticmethod
    def _edge_names(parent: Any, child: Any) -> tuple[str, str]:
        parent = checked_frame(parent, 'parent')
        child = checked_frame(child, 'child')
        if parent == child:
            raise TransformDataError(f'transform from frame {child!r} to itself')
        return parent, child

    def _edge_for(self, parent: str, child: str, static: bool) -> _Edge:
        """Return the stored edge of ``child`` (or a new one) after the tree checks."""
        edge = self._edges.get(child)
        if edge is not None and edge.parent != parent:
            raise TransformDataError(
                f'frame {child!r} already has parent {edge.parent!r}; refusing a second '
                f'parent {parent!r} (each frame has exactly one parent in a TF tree)')
        if edge is None:
            self._check_no_cycle(parent, child)
            return _Edge(parent, static, [], [])
        if edge.static != static:
            kinds = ('static', 'dynamic')
            raise TransformDataError(
                f'edge {parent!r} -> {child!r} is {kinds[not edge.static]}; got a '
                f'{kinds[not static]} transform for it')
        return edge

    def _store(self, parent: str, child: str, edge: _Edge) -> None:
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
        if self._cache_ns is not None and stamp < newest - self._cache_ns:
            raise TransformDataError(
                f'sample of {edge.parent!r} -> {child!r} at {seconds_text(stamp)} is older than '
                f'the cache window (newest {seconds_text(newest)}, cache '
                f'{seconds_text(self._cache_ns)}); if time jumped back (bag loop, simulation '
                'reset) call clear()')
        index = bisect.bisect_left(edge.stamps, stamp)
        if index < len(edge.stamps) and edge.stamps[index] == stamp:
            edge.transforms[index] = transform
        else:
            edge.stamps.insert(index, stamp)
            edge.transforms.insert(index, transform)
        self._prune(edge)

    def _prune(self, edge: _Edge) -> None:
        if self._cache_ns is None:
            return
        cutoff = bisect.bisect_left(edge.stamps, edge.stamps[-1] - self._cache_ns)
        if cutoff:
            del edge.stamps[:cutoff]
            del edge.transforms[:cutoff]

    def clear(self, keep_static: bool = False) -> None:
        """Forget every transform; ``keep_static``: only the dynamic ones, as tf2 on a jump back.

        Static transforms hold in any time line and are latched once per subscriber only.
        """
        with self._changed:
            self._edges = {c: e for c, e in self._edges.items() if keep_static and e.static}
            self._frames = {f for c, e in self._edges.items() for f in (c, e.parent)}

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
        target_frame = checked_frame(target_frame, 'target')
        source_frame = checked_frame(source_frame, 'source')
        stamp = None if stamp_ns is None else checked_stamp(stamp_ns)
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

    def _chains(self, target: str, source: str) -> tuple[list[str], list[str]]:
        """Return the children of the edges from ``target`` and ``source`` to their common root.

        Each list is child-first: it starts at the frame itself.
        """
        missing = [frame for frame in (target, source) if frame not in self._frames]
        if missing:
            known = sorted(self._frames)
            shown = ', '.join(known[:20]) + (' ...' if len(known) > 20 else '')
            named = f'frame {missing[0]!r} is' if len(missing) == 1 else f'frames {missing} are'
            raise FrameNotFound(f'{named} not in the TF tree (lookup {target!r} <- {source!r}; '
                                f'known frames: [{shown}])')
        source_path = self._path_to_root(source)
        target_path = self._path_to_root(target)
        on_target_path = set(target_path)
        common = next((frame for frame in source_path if frame in on_target_path), None)
        if common is None:
            raise ConnectivityError(
                f'no TF chain connects {target!r} and {source!r}: their trees have roots '
                f'{target_path[-1]!r} and {source_path[-1]!r}')
        return target_path[:target_path.index(common)], source_path[:source_path.index(common)]

    def _lookup_locked(self, target: str, source: str, stamp: int | None) -> Transform:
        if target == source:
            # As tf2: a frame relative to itself is the identity, known or not.
            return Transform.identity()
        target_chain, source_chain = self._chains(target, source)
        if stamp is None:
            stamp = self._latest_common_stamp(source_chain + target_chain)
        # T_common_frame for both frames, composed child-first up to the common ancestor.
        common_source = self._chain_transform(source_chain, stamp)
        common_target = self._chain_transform(target_chain, stamp)
        return common_target.inverse() @ common_source

    def chain_stamps(self, target_frame: str, source_frame: str) -> np.ndarray:
        """Return the sorted union (int64) of the stamps of the dynamic edges between two frames.

        It is empty when static transforms alone connect them.

        Raises:
            FrameNotFound, ConnectivityError (``LookupError``).
        """
        target = checked_frame(target_frame, 'target')
        source = checked_frame(source_frame, 'source')
        if target == source:
            return np.zeros(0, dtype=np.int64)
        with self._changed:
            chains = self._chains(target, source)
            stamps = [self._edges[child].stamps for chain in chains for child in chain
                      if not self._edges[child].static]
        return np.unique(np.concatenate([np.zeros(0, dtype=np.int64)] + [
            np.asarray(edge_stamps, dtype=np.int64) for edge_stamps in stamps]))

    def lookup_many(self, target_frame: str, source_frame: str, stamps_ns: Any,
                    max_gap_ns: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``T_target_source`` at many stamps at once, as arrays.

        Each dynamic edge of the chain is interpolated as ``lookup`` does (within the
        extrapolation tolerance beyond its ends), and additionally only across gaps of at most
        ``max_gap_ns`` between its samples (None: any gap).

        Returns:
            translations float64 (M, 3), canonical quaternions x, y, z, w float64 (M, 4) and
            valid bool (M,): where every dynamic edge had data; invalid rows are NaN.

        Raises:
            FrameNotFound, ConnectivityError (``LookupError``).
        """
        target = checked_frame(target_frame, 'target')
        source = checked_frame(source_frame, 'source')
        queries = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
        valid = np.ones(len(queries), dtype=bool)
        composed = RigidTransform.identity(len(queries))
        if target != source:
            with self._changed:
                target_chain, source_chain = self._chains(target, source)
                common_target = self._chain_arrays(target_chain, queries, max_gap_ns, valid)
                common_source = self._chain_arrays(source_chain, queries, max_gap_ns, valid)
            composed = common_target.inv() * common_source
        translations, rotations = composed.as_components()
        quats = quaternion_from_rotation(rotations)
        translations[~valid] = np.nan
        quats[~valid] = np.nan
        return translations, quats, valid

    def _chain_arrays(self, children: list[str], queries: np.ndarray, max_gap_ns: int | None,
                      valid: np.ndarray) -> RigidTransform:
        """Return ``T_ancestor_frame`` at every query; clear ``valid`` where an edge has none."""
        result = RigidTransform.identity(len(queries))
        for child in reversed(children):  # from the ancestor side down to the frame
            edge = self._edges[child]
            translations = np.array([transform.translation for transform in edge.transforms])
            quats = np.array([transform.rotation for transform in edge.transforms])
            if edge.static:
                count = len(queries)
                translations, quats = np.repeat(translations, count, 0), np.repeat(quats, count, 0)
            else:
                translations, quats, edge_valid = interpolate_series(
                    edge.stamps, translations, quats, queries, max_gap_ns, self._tolerance_ns)
                valid &= edge_valid
                # Rows without data become the identity so the product stays defined.
                translations[~edge_valid] = 0.0
                quats[~edge_valid] = (0.0, 0.0, 0.0, 1.0)
            result = result * RigidTransform.from_components(
                translations, Rotation.from_quat(quats))
        return result

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
                f'lookup would extrapolate into the {direction}: requested '
                f'{seconds_text(stamp)} but edge {edge.parent!r} -> {child!r} has samples from '
                f'{seconds_text(oldest)} to {seconds_text(newest)} ({len(edge.stamps)} samples)')
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
