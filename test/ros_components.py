"""Say whether the real ROS 2 components built from ``../shared/vendor/ros2_tf2`` are here.

``tf2_ros`` (with the C++ tf2 core) and ``bondpy`` exist on every ROS 2 install but have no
PyPI wheel; the set-up (``tools/setup_venv.sh``) builds them into ``.venv`` from the upstream
sources in ``../shared/vendor/ros2_tf2``. A clone with nothing beside it has no such sources,
and the tests that need them skip, saying why.

Where they must be covered they are required instead: with ``MSPR_REQUIRE_ROS2_TF2=1`` (set by
``.ci/run`` when the vendor folder is beside the clone), or under ``CI=true`` whenever the
vendor folder is there. A required component that is missing makes its tests fail, so the path
CI is meant to cover cannot quietly become a skip again.
"""
import importlib
import os
from pathlib import Path
from typing import Callable, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
VENDOR = REPO.parent / 'shared' / 'vendor' / 'ros2_tf2'
REQUIRE_VARIABLE = 'MSPR_REQUIRE_ROS2_TF2'
# component -> the modules its tests use (the C extension and the action type included).
COMPONENTS = {
    'tf2_ros': ('tf2_ros', 'tf2_py', 'tf2_msgs.action'),
    'bondpy': ('bondpy.bondpy', 'bond.msg', 'smclib.statemap'),
}
INSTALL_HINT = ('the set-up builds it into .venv from ../shared/vendor/ros2_tf2; every ROS 2 '
                'install has it')


def required() -> bool:
    """Return True where a missing component must fail its tests rather than skip them."""
    if os.environ.get(REQUIRE_VARIABLE) == '1':
        return True
    return os.environ.get('CI', '').lower() == 'true' and VENDOR.is_dir()


def missing(component: str,
            importer: Callable[[str], object] = importlib.import_module) -> Optional[str]:
    """Return why ``component`` cannot be used here, or None when it can."""
    for name in COMPONENTS[component]:
        try:
            importer(name)
        except ImportError as error:
            return f"ROS 2's {component} is not installed ({error}; {INSTALL_HINT})"
    return None


def skip_reason(component: str) -> Optional[str]:
    """Return the reason to skip a test needing ``component``, or None: present, or required."""
    problem = missing(component)
    if problem is None or required():
        return None
    return problem


def needs(component: str):
    """Return a ``pytest.mark.skipif`` for a test needing ``component`` (``skip_reason``)."""
    reason = skip_reason(component)
    return pytest.mark.skipif(reason is not None, reason=str(reason))
