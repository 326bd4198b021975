"""Keep glibc's allocator from handing freed memory back to the OS after every frame or step.

Why: each inference (and each training step) allocates and frees the same blocks, from a few
kilobytes to the 157 MB attention tensors of the paper model at batch 8 (64 x 784 x 784 fp32).
With glibc's defaults, blocks above 32 MB are served by ``mmap`` and unmapped on ``free``, and
the heap top is trimmed as soon as 128 KiB lie free, so the next frame or step page-faults all
of it in again. Measured in the node (demo model, 640x480, one torch thread, 60 frames): 7-8 ms
of system time per 31 ms frame with the defaults, 0.2 ms with large blocks kept; in a paper-size
training step (issue 18) about 1.7 M minor faults and more system time than user time.

What is set, with ``mallopt``: no block is served by ``mmap`` (``M_MMAP_MAX = 0``: every size
comes from the heap and stays there when freed) and the heap keeps up to ``trim_threshold`` free
bytes at its top (``M_TRIM_THRESHOLD``; -1, what training uses, never trims). The cost is memory
kept for reuse: the process stays at its peak heap size.

Process-wide, so it is for programs (the node, ``mspr-train`` and its workers, benchmarks, your
own script using ``Localizer``), not something the library does by itself on import.
"""
import ctypes
import ctypes.util
import os
from typing import Optional

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
MIB = 1 << 20
TRIM_THRESHOLD = 1024 * MIB
NEVER_TRIM = -1  # glibc converts it to SIZE_MAX: the heap top is never given back
TOP_PAD = 64 * MIB
# glibc reads these at start-up; a user who set any of them keeps their choice.
USER_VARIABLES = ('MALLOC_TRIM_THRESHOLD_', 'MALLOC_TOP_PAD_', 'MALLOC_MMAP_THRESHOLD_',
                  'MALLOC_MMAP_MAX_')


def _mallopt():
    """Return glibc's ``mallopt`` with its signature, or None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def retain_freed_memory(trim_threshold: int = TRIM_THRESHOLD) -> Optional[str]:
    """Keep freed blocks of every size in the process; return what was done, or None.

    Args:
        trim_threshold: free bytes the heap top may hold before glibc gives memory back;
            :data:`NEVER_TRIM` never gives it back. The default suits the node: it covers a
            batch-16 inference of the paper model (315 MB attention tensors) and bounds what an
            unusual peak leaves behind.

    Nothing is done where the C library is not glibc (musl, macOS) or where the user set one of
    glibc's ``MALLOC_*_`` variables.
    """
    if any(name in os.environ for name in USER_VARIABLES):
        return None
    mallopt = _mallopt()
    if mallopt is None:
        return None
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, trim_threshold), (M_TOP_PAD, TOP_PAD))
    if not all(mallopt(option, value) == 1 for option, value in settings):
        return None
    kept = 'all' if trim_threshold == NEVER_TRIM else f'up to {trim_threshold // MIB} MiB'
    return f'glibc keeps {kept} of the freed heap, blocks of every size on the heap (no mmap)'


def configure_for_training() -> Optional[str]:
    """Apply the setting for a training process (``mspr-train``, torchrun workers, the demo).

    A training step frees gigabytes of activations at its end and needs them again at once, so
    nothing is ever trimmed. Returns what was done, or None (see :func:`retain_freed_memory`).
    """
    return retain_freed_memory(trim_threshold=NEVER_TRIM)


def worker_init_fn(worker_id: int) -> None:
    """Apply :func:`configure_for_training` in a DataLoader worker (its ``worker_init_fn``).

    A forked worker inherits the parent's setting, a spawned one does not; applying it again is
    harmless. Chain it with another init function by calling it from that function.
    """
    del worker_id
    configure_for_training()
