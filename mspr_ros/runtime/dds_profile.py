"""The Fast DDS profile that lets camera images use shared memory, and how processes get it.

Fast DDS's default shared-memory segment (512 KiB) is smaller than one 640x480 rgb8 image, so
images fall back to UDP over loopback: slow, and best-effort subscriptions lose most frames
(``config/fastdds_images.xml`` has the measurements). Fast DDS reads the profile named by
``FASTDDS_DEFAULT_PROFILES_FILE`` when a process creates its participant, so every process we
start (node, bag player, demo, tests) gets it unless the user already chose a profile.
"""
import os
from pathlib import Path
from typing import MutableMapping, Optional

PROFILE_FILE_NAME = 'fastdds_images.xml'
# The current name first; Fast DDS still honours the older one, and a user who set either keeps it.
PROFILE_VARIABLES = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')


def image_profile_path() -> Optional[Path]:
    """Return the profile of this checkout or installation, or None when neither has it."""
    checkout = Path(__file__).resolve().parents[2] / 'config' / PROFILE_FILE_NAME
    if checkout.is_file():
        return checkout
    try:
        from ament_index_python.packages import get_package_share_directory
        installed = Path(get_package_share_directory('mspr_ros')) / 'config' / PROFILE_FILE_NAME
    except (ImportError, LookupError, OSError):
        return None
    return installed if installed.is_file() else None


def with_image_profile(env: Optional[MutableMapping[str, str]] = None
                       ) -> MutableMapping[str, str]:
    """Point ``env`` (default ``os.environ``) at the image profile unless it names a profile.

    Returns ``env`` itself, so a child's environment reads ``with_image_profile(dict(...))``.
    """
    env = os.environ if env is None else env
    if any(env.get(name) for name in PROFILE_VARIABLES):
        return env
    path = image_profile_path()
    if path is not None:
        env[PROFILE_VARIABLES[0]] = str(path)
    return env
