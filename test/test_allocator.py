"""retain_freed_memory: freed frame memory stays in the process; a user's glibc setting wins.

Whether that saves time is measured in the node (mspr_ros/runtime/allocator.py has the figures);
here
the contract is checked in a fresh process: a freed 40 MiB block is returned to the OS with
glibc's defaults and kept for reuse once tuned.
"""
import subprocess
import sys

import pytest

from mspr_ros.runtime import allocator

PROBE = """
import ctypes, os, sys
from mspr_ros.runtime.allocator import retain_freed_memory
note = retain_freed_memory() if sys.argv[1] == 'tuned' else None
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def resident_mib():
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
size = 40 << 20
before = resident_mib()
block = libc.malloc(size)
ctypes.memset(block, 1, size)  # touch every page, as a tensor would
libc.free(block)
print(note)
print(resident_mib() - before)
"""


def _kept_after_free(mode):
    out = subprocess.run([sys.executable, '-c', PROBE, mode], check=True, capture_output=True,
                         text=True, env={'PATH': '/usr/bin:/bin'}).stdout.splitlines()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc only')
def test_freed_frame_memory_is_kept_for_reuse_once_tuned():
    note, kept_default = _kept_after_free('default')
    assert note == 'None' and kept_default < 5.0
    note, kept_tuned = _kept_after_free('tuned')
    assert note.startswith('glibc keeps up to 256 MiB') and kept_tuned > 35.0


def test_a_user_setting_is_kept(monkeypatch):
    monkeypatch.setenv('MALLOC_TRIM_THRESHOLD_', '1000000')
    assert allocator.retain_freed_memory() is None
