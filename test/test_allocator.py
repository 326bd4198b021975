"""retain_freed_memory: freed memory of every size stays in the process; a user's setting wins.

Whether that saves time is measured in the node and in a training step (mspr_ros/runtime/
allocator.py, benchmarks/train_speed.py); here the contract is checked in a fresh process: a
freed 200 MiB block (larger than the paper model's 157 MB attention tensors) is returned to the
OS with glibc's defaults and kept once tuned, so allocating it again faults no page in.
"""
import subprocess
import sys

import pytest

from mspr_ros.runtime import allocator

PROBE = """
import ctypes, os, resource, sys
from mspr_ros.runtime import allocator
mode = sys.argv[1]
note = None
if mode == 'node':
    note = allocator.retain_freed_memory()
elif mode == 'training':
    note = allocator.configure_for_training()
elif mode == 'worker':
    allocator.worker_init_fn(0)
    note = 'worker'
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def resident_mib():
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
def touch_and_free(size):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)  # touch every page, as a tensor would
    libc.free(block)
size = 200 << 20
before = resident_mib()
touch_and_free(size)
kept = resident_mib() - before
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch_and_free(size)
refaults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(note)
print(kept)
print(refaults)
"""
PAGES_OF_200_MIB = (200 << 20) // 4096


def _probe(mode, env=None):
    """Return (note, MiB still resident after free, minor faults of the second allocation)."""
    out = subprocess.run([sys.executable, '-c', PROBE, mode], check=True, capture_output=True,
                         text=True, env={'PATH': '/usr/bin:/bin', **(env or {})}
                         ).stdout.splitlines()
    return out[0], float(out[1]), int(out[2])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc only')
def test_glibc_defaults_give_a_large_freed_block_back():
    """Without the setting a freed 200 MiB block leaves, and using it again faults it all in."""
    note, kept, refaults = _probe('default')
    assert note == 'None' and kept < 5.0
    assert refaults > 0.9 * PAGES_OF_200_MIB


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc only')
@pytest.mark.parametrize('mode, note_start', [
    ('node', 'glibc keeps up to 1024 MiB'),
    ('training', 'glibc keeps all'),
    ('worker', 'worker'),
])
def test_freed_blocks_of_every_size_are_kept_once_tuned(mode, note_start):
    """Node, training process and DataLoader worker keep the block; reuse faults ~no page."""
    note, kept, refaults = _probe(mode)
    assert note.startswith(note_start)
    assert kept > 195.0
    assert refaults < 0.01 * PAGES_OF_200_MIB


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc only')
def test_a_user_setting_wins_in_the_process():
    """A user's MALLOC_MMAP_MAX_ makes the call a no-op: glibc's defaults stay in force."""
    note, kept, _ = _probe('training', env={'MALLOC_TOP_PAD_': '0'})
    assert note == 'None' and kept < 5.0


@pytest.mark.parametrize('variable', allocator.USER_VARIABLES)
def test_a_user_setting_is_kept(monkeypatch, variable):
    """Any of glibc's MALLOC_*_ variables leaves the allocator alone."""
    monkeypatch.setenv(variable, '1000000')
    assert allocator.retain_freed_memory() is None
    assert allocator.configure_for_training() is None
