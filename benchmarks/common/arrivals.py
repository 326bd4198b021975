"""Arrival times of stamped messages, recorded in the executor thread, with waits on them."""
import threading
import time
from typing import Any, Dict

from mspr_ros.ros.conversions import stamp_to_ns


class StampedArrivals:
    """Arrival times of stamped messages, keyed by header stamp (ns), with waits on them.

    The callback records ``time.perf_counter()`` and ``time.time_ns()`` on arrival, in the
    executor thread, so a waiting main thread does not add its wake-up delay to a latency.
    """

    def __init__(self) -> None:
        """Start empty."""
        self._arrived: Dict[int, tuple] = {}
        self._changed = threading.Condition()

    def callback(self, msg: Any) -> None:
        """Subscription callback: record the message's stamp and the arrival time."""
        arrival = (time.perf_counter(), time.time_ns())
        stamp = stamp_to_ns(msg.header.stamp)
        with self._changed:
            self._arrived.setdefault(stamp, arrival)
            self._changed.notify_all()

    def wait(self, stamp_ns: int, timeout: float) -> tuple:
        """Return ``(perf_counter s, time_ns)`` of the arrival of ``stamp_ns``.

        Raises:
            TimeoutError: nothing with that stamp arrived within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while stamp_ns not in self._arrived:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f'no message stamped {stamp_ns} within {timeout:.0f} s')
                self._changed.wait(remaining)
            return self._arrived[stamp_ns]

    def snapshot(self) -> Dict[int, tuple]:
        """Return a copy of stamp -> arrival."""
        with self._changed:
            return dict(self._arrived)
