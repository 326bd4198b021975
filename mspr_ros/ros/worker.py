"""The inference thread: keeps only the newest frame, so a slow model drops frames, not queues.

The image callback hands each message to ``LatestFrameWorker.offer`` (never blocks); the thread
takes the newest one when it is free, honouring a rate cap, and calls ``process`` on it. An
exception in ``process`` is reported to ``on_error`` and the thread goes on with the next frame.

It is the node's only thread that waits (for ``odom -> base`` at the image stamp), while the
single-threaded executor keeps receiving TF. Measured with 640x480 images
(benchmarks/README.md): rclpy's MultiThreadedExecutor delayed each image by 25-75 ms median,
p95 350 ms, where the single-threaded one takes 2 ms.
"""
import math
import threading
import time
from typing import Any, Callable, Optional


class LatestFrameWorker:
    """One thread processing the newest offered frame."""

    def __init__(self, process: Callable[[Any], None], max_rate: Callable[[], float],
                 on_error: Callable[[Exception], None], name: str = 'mspr_inference'):
        """``max_rate()`` returns the current cap in Hz (0: none), read before each frame."""
        self._process = process
        self._max_rate = max_rate
        self._on_error = on_error
        self._name = name
        self._lock = threading.Condition()
        self._pending: Optional[Any] = None
        self._stop = True
        self._thread: Optional[threading.Thread] = None

    def offer(self, msg: Any) -> bool:
        """Make ``msg`` the next frame; return True if it replaced one not yet processed."""
        with self._lock:
            superseded = self._pending is not None
            self._pending = msg
            self._lock.notify_all()
        return superseded

    def start(self) -> None:
        """Start the thread (drops any frame left from before)."""
        with self._lock:
            self._pending = None
            self._stop = False
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop and join the thread (idempotent; the frame being processed finishes first)."""
        with self._lock:
            self._stop = True
            self._pending = None
            self._lock.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def _loop(self) -> None:
        last_start = -math.inf
        while True:
            with self._lock:
                while self._pending is None and not self._stop:
                    self._lock.wait()
                if self._stop:
                    return
                max_rate = self._max_rate()
                if max_rate > 0.0:
                    wait = last_start + 1.0 / max_rate - time.monotonic()
                    if wait > 0.0:
                        # Wait out the rate limit; a newer frame may replace this one meanwhile.
                        self._lock.wait(wait)
                        continue
                msg, self._pending = self._pending, None
            last_start = time.monotonic()
            try:
                self._process(msg)
            except Exception as error:  # noqa: BLE001 - one bad frame must not kill the worker
                self._on_error(error)
