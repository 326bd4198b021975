"""What a TF tree refuses: its errors, and the checks of frame names, stamps and transforms."""
from __future__ import annotations

import operator
from typing import Any

from mspr_ros.geometry.transforms import Transform

NS_PER_S = 1_000_000_000


class FrameNotFound(LookupError):
    """A frame that no transform mentions."""


class ExtrapolationError(LookupError):
    """The requested time lies outside the samples of an edge."""


class ConnectivityError(LookupError):
    """The frames exist but lie in different trees."""


class TransformDataError(ValueError):
    """A transform that cannot be added: a second parent, a cycle, bad names or stamps."""


def seconds_text(stamp_ns: int) -> str:
    """Return nanoseconds as seconds with 9 decimals, for messages."""
    return f'{stamp_ns / NS_PER_S:.9f} s'


def checked_stamp(value: Any) -> int:
    """Return ``value`` as integer nanoseconds >= 0, or raise TransformDataError."""
    if isinstance(value, bool):
        raise TransformDataError(f'stamp must be integer nanoseconds, got {value!r}')
    try:
        stamp = operator.index(value)
    except TypeError as error:
        raise TransformDataError(f'stamp must be integer nanoseconds, got {value!r}') from error
    if stamp < 0:
        raise TransformDataError(f'stamp must be >= 0 ns, got {stamp}')
    return stamp


def clean_frame_id(frame_id: str) -> str:
    """Return ``frame_id`` without the leading ``/`` of ROS 1 names (``/map`` -> ``map``).

    tf2 refuses such names; recordings converted from ROS 1 still carry them.
    """
    return frame_id.lstrip('/')


def checked_frame(value: Any, role: str) -> str:
    """Return a valid tf2 frame name (non-empty, no leading ``/``) or raise TransformDataError."""
    if not isinstance(value, str) or not value:
        raise TransformDataError(f'{role} frame must be a non-empty string, got {value!r}')
    if value.startswith('/'):
        raise TransformDataError(f'{role} frame {value!r} must not start with "/" (tf2 rule)')
    return value


def check_transform(transform: Any) -> None:
    """Raise TransformDataError unless ``transform`` is a ``Transform``."""
    if not isinstance(transform, Transform):
        raise TransformDataError(f'transform must be a Transform, got '
                                 f'{type(transform).__name__}')
