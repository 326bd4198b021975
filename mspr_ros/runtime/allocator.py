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

A better allocator, where installed: gperftools' tcmalloc (Debian ``libtcmalloc-minimal4``, BSD
licence) keeps freed memory in its own caches without any of this, and measured faster still in
a paper-size training step (``benchmarks/train_speed.py``: 1.04x the tuned glibc step in the
full run, 1.15x in a quick one). It can
only take over at process start (``LD_PRELOAD``), so :func:`use_preferred_allocator` restarts
the command line once with it preloaded. jemalloc was measured too and was slower than tuned
glibc with its defaults (it hands freed pages back after a delay): not used.
"""
import ctypes
import ctypes.util
import glob
import logging
import os
import sys
from typing import Optional, Sequence

LOGGER = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
MIB = 1 << 20
TRIM_THRESHOLD = 1024 * MIB
NEVER_TRIM = -1  # glibc converts it to SIZE_MAX: the heap top is never given back
TOP_PAD = 64 * MIB
# Where Debian and Ubuntu install tcmalloc; find_library also finds it on other layouts.
TCMALLOC_GLOBS = ('/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4',
                  '/usr/lib64/libtcmalloc_minimal.so.4', '/usr/lib/libtcmalloc_minimal.so.4')
# MSPR_ALLOCATOR: 'auto' (tcmalloc where installed, else tuned glibc), 'tcmalloc' (required),
# 'glibc' (never restart). The marker tells the restarted process it has been restarted.
CHOICE_VARIABLE = 'MSPR_ALLOCATOR'
CHOICES = ('auto', 'tcmalloc', 'glibc')
RESTART_MARKER = 'MSPR_ALLOCATOR_PRELOADED'
TCMALLOC_MISSING = ('libtcmalloc_minimal is not installed '
                    '(Debian/Ubuntu: apt install libtcmalloc-minimal4)')
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


def find_tcmalloc() -> Optional[str]:
    """Return the path of an installed ``libtcmalloc_minimal``, or None."""
    for pattern in TCMALLOC_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return ctypes.util.find_library('tcmalloc_minimal')


def preloaded_allocator() -> Optional[str]:
    """Return 'tcmalloc' or 'jemalloc' when that allocator is mapped in this process, else None."""
    try:
        with open('/proc/self/maps', encoding='utf-8') as maps:
            text = maps.read()
    except OSError:
        return None
    for name in ('tcmalloc', 'jemalloc'):
        if f'lib{name}' in text:
            return name
    return None


def use_preferred_allocator(argv: Optional[Sequence[str]] = None) -> Optional[str]:
    """Run this program on tcmalloc where installed, else tune glibc; return what is active.

    With tcmalloc found and not yet loaded, the process restarts itself (``os.execv`` of the
    interpreter with its original arguments, ``sys.orig_argv``) with tcmalloc added to
    ``LD_PRELOAD``; children (data-loader workers, torchrun's) inherit it. Only a program's own
    command line may do that: ``argv`` is what its ``main`` was called with, and anything but
    None (a caller in the same process, such as a test or a notebook) gets the glibc tuning
    instead of a restart. ``MSPR_ALLOCATOR`` chooses: 'auto' (default), 'tcmalloc' (fail if it
    is missing) or 'glibc'.

    Raises:
        RuntimeError: ``MSPR_ALLOCATOR`` is not one of :data:`CHOICES`, or is 'tcmalloc' and
            tcmalloc is not installed or did not load.
    """
    choice = os.environ.get(CHOICE_VARIABLE, 'auto') or 'auto'
    if choice not in CHOICES:
        raise RuntimeError(f'{CHOICE_VARIABLE}={choice!r} is not one of {", ".join(CHOICES)}')
    loaded = preloaded_allocator()
    if loaded is not None:
        return f'{loaded} (preloaded)'
    if choice != 'glibc' and argv is None:
        library = find_tcmalloc()
        if library is None and choice == 'tcmalloc':
            raise RuntimeError(f'{CHOICE_VARIABLE}=tcmalloc, but {TCMALLOC_MISSING}')
        if library is not None and RESTART_MARKER in os.environ:
            # Restarted once already and still not loaded: ld.so ignored the preload.
            if choice == 'tcmalloc':
                raise RuntimeError(f'{library} was preloaded but did not load')
            LOGGER.warning('%s was preloaded but did not load; tuning glibc instead', library)
        elif library is not None:
            _restart_with_preload(library)
    return configure_for_training()


def _restart_with_preload(library: str) -> None:
    """Replace this process by the same command line with ``library`` preloaded."""
    preload = os.environ.get('LD_PRELOAD', '')
    os.environ['LD_PRELOAD'] = f'{library}:{preload}' if preload else library
    os.environ[RESTART_MARKER] = library
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
