"""Logging for the node: core ``logging`` records into rclpy, and throttling per key."""
import contextlib
import logging
import math
import threading
import time
from typing import Dict

WARN_THROTTLE_S = 5.0


class _RosLogHandler(logging.Handler):
    """Forwards Python ``logging`` records of the core (e.g. the device fallback) to rclpy."""

    def __init__(self, ros_logger):
        """Forward to ``ros_logger`` (an rclpy logger)."""
        super().__init__(level=logging.INFO)
        self._ros_logger = ros_logger

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
    """Route ``mspr_ros.*`` Python log records to ``ros_logger`` inside the block."""
    core_logger = logging.getLogger('mspr_ros')
    handler = _RosLogHandler(ros_logger)
    previous_level, previous_propagate = core_logger.level, core_logger.propagate
    core_logger.addHandler(handler)
    core_logger.setLevel(logging.INFO)
    core_logger.propagate = False
    try:
        yield
    finally:
        core_logger.removeHandler(handler)
        core_logger.setLevel(previous_level)
        core_logger.propagate = previous_propagate


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
