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
print('pid', os.getpid(), flush=True)  # printed again if the process restarts itself
from mspr_ros.runtime import allocator
mode = sys.argv[1]
note = None
if mode == 'preferred':
    note = allocator.use_preferred_allocator()
elif mode == 'preferred_called_with_argv':
    note = allocator.use_preferred_allocator([])
elif mode == 'node':
    note = allocator.retain_freed_memory()
elif mode == 'training':
    note = allocator.configure_for_training()
elif mode == 'worker':
    allocator.worker_init_fn(0)
    note = 'worker'
libc = ctypes.CDLL(None)  # the process's malloc: a preloaded allocator's when there is one
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


def _run_probe(mode, env=None):
    """Return (pids printed at start, note, MiB resident after free, faults of the reuse)."""
    out = subprocess.run([sys.executable, '-c', PROBE, mode], check=True, capture_output=True,
                         text=True, env={'PATH': '/usr/bin:/bin', **(env or {})}
                         ).stdout.splitlines()
    pids = [line for line in out if line.startswith('pid ')]
    rest = out[len(pids):]
    return pids, rest[0], float(rest[1]), int(rest[2])


def _probe(mode, env=None):
    """Return (note, MiB still resident after free, minor faults of the second allocation)."""
    pids, note, kept, refaults = _run_probe(mode, env)
    assert len(pids) == 1, f'{mode} restarted the process: {pids}'
    return note, kept, refaults


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


@pytest.mark.skipif(allocator.find_tcmalloc() is None, reason=allocator.TCMALLOC_MISSING)
def test_a_program_restarts_once_on_tcmalloc_and_keeps_freed_blocks():
    """mspr-train's first call: the same process (pid) restarts once with tcmalloc mapped."""
    pids, note, kept, refaults = _run_probe('preferred')
    assert len(pids) == 2 and pids[0] == pids[1]
    assert note == 'tcmalloc (preloaded)'
    assert refaults < 0.01 * PAGES_OF_200_MIB


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc only')
@pytest.mark.parametrize('mode, env', [
    ('preferred', {'MSPR_ALLOCATOR': 'glibc'}),
    ('preferred_called_with_argv', {}),  # main(argv) from a caller's process: never restart
])
def test_without_a_restart_glibc_is_tuned(mode, env):
    """MSPR_ALLOCATOR=glibc, or a main called in-process: no restart, glibc keeps the block."""
    note, kept, refaults = _probe(mode, env)
    assert note.startswith('glibc keeps all')
    assert kept > 195.0 and refaults < 0.01 * PAGES_OF_200_MIB


def test_an_unknown_allocator_choice_is_refused(monkeypatch):
    monkeypatch.setenv('MSPR_ALLOCATOR', 'mimalloc')
    with pytest.raises(RuntimeError, match="MSPR_ALLOCATOR='mimalloc' is not one of auto"):
        allocator.use_preferred_allocator()


def test_tcmalloc_asked_for_but_missing_says_what_to_install(monkeypatch):
    monkeypatch.setenv('MSPR_ALLOCATOR', 'tcmalloc')
    monkeypatch.setattr(allocator, 'find_tcmalloc', lambda: None)
    with pytest.raises(RuntimeError, match='apt install libtcmalloc-minimal4'):
        allocator.use_preferred_allocator()
