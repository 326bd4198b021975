"""When the ``map -> odom`` correction is stamped (ROS-free): one rule for every broadcast.

AMCL's rule: an accepted correction is stamped with the time of the data it came from plus
``transform_tolerance``, and the newest correction is re-sent at a steady rate with a stamp that
keeps moving forward. Applied naively, inference latency breaks it: the re-broadcast
(``now + tolerance``) has already stamped the old correction later than the new frame's
``image + tolerance``, so stamps go back and a TF lookup blends the old and new corrections.

``MapOdomStamps`` keeps the rule exact:

- every stamp is strictly greater than the previous one (tf2 drops a repeated stamp with a
  ``TF_REPEATED_DATA`` warning, so "non-decreasing" is kept strict);
- an accepted correction B is stamped ``s = max(image + tolerance, last + 2 ns)``; when a
  correction A was sent before, A is sent again at ``s - 1 ns`` in the same message, so a lookup
  before ``s`` returns A and a lookup at or after ``s`` returns B: never a blend of the two;
- the re-broadcast sends the newest correction at ``max(now + tolerance, last + 1 ns)``.
"""
from dataclasses import dataclass
import threading
from typing import List, Optional, Tuple

from mspr_ros.geometry.transforms import Transform


@dataclass(frozen=True)
class StampedCorrection:
    """One ``map -> odom`` to broadcast: the transform and its stamp (ns)."""

    transform: Transform
    stamp_ns: int


class MapOdomStamps:
    """The newest accepted correction and the stamps it is broadcast with. Thread-safe."""

    def __init__(self, tolerance_ns: int) -> None:
        """Stamp ``tolerance_ns`` (>= 0) ahead of the data or the clock."""
        self._lock = threading.Lock()
        self._tolerance_ns = 0
        self.tolerance_ns = tolerance_ns
        self._latest: Optional[Transform] = None
        self._last_stamp: Optional[int] = None

    @property
    def tolerance_ns(self) -> int:
        """Future-dating of every stamp (``transform_tolerance``), nanoseconds."""
        return self._tolerance_ns

    @tolerance_ns.setter
    def tolerance_ns(self, value: int) -> None:
        if int(value) < 0:
            raise ValueError(f'tolerance_ns must be >= 0, got {value!r}')
        with self._lock:
            self._tolerance_ns = int(value)

    @property
    def latest(self) -> Optional[Tuple[Transform, int]]:
        """The newest correction and its last stamp, None before the first one."""
        with self._lock:
            if self._latest is None:
                return None
            return self._latest, self._last_stamp

    def reset(self) -> None:
        """Forget the correction and the stamps (activation, or time jumping back)."""
        with self._lock:
            self._latest = None
            self._last_stamp = None

    def accept(self, transform: Transform, data_stamp_ns: int) -> List[StampedCorrection]:
        """Stamp a newly accepted correction; return what to send, in order, in one message."""
        with self._lock:
            stamp = int(data_stamp_ns) + self._tolerance_ns
            out = []
            if self._last_stamp is not None:
                stamp = max(stamp, self._last_stamp + 2)
                if self._latest is not None:
                    # Hold the previous correction up to the step, so nothing interpolates.
                    out.append(StampedCorrection(self._latest, stamp - 1))
            out.append(StampedCorrection(transform, stamp))
            self._latest, self._last_stamp = transform, stamp
            return out

    def rebroadcast(self, now_ns: int) -> Optional[StampedCorrection]:
        """Re-stamp the newest correction for the steady re-broadcast (None before a fix)."""
        with self._lock:
            if self._latest is None:
                return None
            stamp = max(int(now_ns) + self._tolerance_ns, self._last_stamp + 1)
            self._last_stamp = stamp
            return StampedCorrection(self._latest, stamp)
