"""Keep glibc's allocator from handing freed memory back to the OS after every frame.

Why: each inference allocates and frees the same tens of megabytes. With glibc's defaults the
inference thread's heap is trimmed and large blocks are unmapped as soon as they are freed, so
the next frame page-faults all of it in again. Measured in the node (demo model, 640x480, one
torch thread, 60 frames): 7-8 ms of system time per 31 ms frame; with these settings 0.2 ms, and
the model ran as fast in the node as alone (benchmarks/README.md). The cost is memory kept for
reuse: at most ``TRIM_THRESHOLD`` of free heap (blocks above ``MMAP_THRESHOLD`` are still mapped
and unmapped one by one).

Process-wide, so it is for programs (the node, benchmarks, your own script using ``Localizer``),
not something the library does by itself on import.
"""
import ctypes
import ctypes.util
import os
from typing import Optional

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MIB = 1 << 20
MMAP_THRESHOLD = 64 * MIB
TRIM_THRESHOLD = 256 * MIB
TOP_PAD = 64 * MIB
# glibc reads these at start-up; a user who set any of them keeps their choice.
USER_VARIABLES = ('MALLOC_TRIM_THRESHOLD_', 'MALLOC_TOP_PAD_', 'MALLOC_MMAP_THRESHOLD_')


def retain_freed_memory() -> Optional[str]:
    """Apply the settings above with ``mallopt``; return what was done, or None if nothing.

    Nothing is done where the C library is not glibc (musl, macOS) or where the user set one of
    glibc's ``MALLOC_*_`` variables.
    """
    if any(name in os.environ for name in USER_VARIABLES):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                (M_TOP_PAD, TOP_PAD))
    if not all(mallopt(option, value) == 1 for option, value in settings):
        return None
    return (f'glibc keeps up to {TRIM_THRESHOLD // MIB} MiB of freed heap, maps blocks above '
            f'{MMAP_THRESHOLD // MIB} MiB')
