"""Logging for the node: core ``logging`` records into rclpy, and throttling per key."""
import contextlib
import logging
import math
import threading
import time
from typing import Dict

WARN_THROTTLE_S = 5.0


class _RosLogHandler(logging.Handler):
    """Forwards Python ``logging`` records of the core (e.g. the device fallback) to rclpy.

    Only records logged by the thread that installed it: a node configuring in one thread must
    not capture what another node (or a test) logs in another thread at the same time.
    """

    def __init__(self, ros_logger):
        """Forward to ``ros_logger`` (an rclpy logger) what the current thread logs."""
        super().__init__(level=logging.INFO)
        self._ros_logger = ros_logger
        self._thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep only the installing thread's records."""
        return record.thread == self._thread and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        """Log ``record`` at the matching rclpy severity."""
        text = record.getMessage()
        if record.levelno >= logging.ERROR:
            self._ros_logger.error(text)
        elif record.levelno >= logging.WARNING:
            self._ros_logger.warning(text)
        else:
            self._ros_logger.info(text)


@contextlib.contextmanager
def core_logs_to(ros_logger):
    """Route ``mspr_ros.*`` Python log records of this thread to ``ros_logger`` inside the block.

    The core logger's level and propagation stay as they are: toggling them is global, and a
    second node or thread would lose its records for as long as the block lasts. Records below
    the core logger's effective level (WARNING unless someone set it) are not forwarded, so
    the node shows the core's warnings and errors.
    """
    core_logger = logging.getLogger('mspr_ros')
    handler = _RosLogHandler(ros_logger)
    core_logger.addHandler(handler)
    try:
        yield
    finally:
        core_logger.removeHandler(handler)


class ThrottledLog:
    """Logs at most once per ``period_s`` per key (rclpy throttles per call site only)."""

    def __init__(self, ros_logger, period_s: float = WARN_THROTTLE_S):
        """Log to ``ros_logger``."""
        self._logger = ros_logger
        self._period_s = period_s
        self._last: Dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, text: str, level: str = 'warn') -> None:
        """Log ``text`` at ``level`` ('info', 'warn', 'error') unless ``key`` logged recently."""
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -math.inf) < self._period_s:
                return
            self._last[key] = now
        # rclpy fixes the severity per call site, hence one call per level.
        if level == 'info':
            self._logger.info(text)
        elif level == 'error':
            self._logger.error(text)
        else:
            self._logger.warning(text)
