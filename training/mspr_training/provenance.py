"""Where a figure came from: the commit and whether the tree was clean, the command, the machine.

Every results file of ``benchmarks/`` and of ``make demo`` carries these facts, so that a table
rendered from it (``make figures``, ``benchmarks/figures.py``) names the code that produced it:

- ``machine_facts()`` at the start of a run: CPU, cores, memory, Python, torch, CUDA device, the
  checkout's commit, whether its tree was dirty (``git status --porcelain`` lists anything but
  results files) and what was changed, the date and the load average;
- ``run_record()`` when the results are written: the command line, the versions of torch,
  numpy, onnxruntime and rclpy (where installed), the thread settings, the end date, the run's
  duration and the load average at the end.

Only the standard library is imported here (psutil and torch where already installed), so a
benchmark and the demo can call it before anything heavy is loaded.
"""
import datetime
import importlib.metadata
import importlib.util
import os
from pathlib import Path
import platform
import shlex
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence, Set

# Writing a results file must not make the next benchmark of the same run "dirty".
IGNORED_CHANGES = ('benchmarks/results/',)
# Listed in a results file, at most this many changed paths (the count is always given).
MAX_LISTED_CHANGES = 40
PACKAGES = ('torch', 'numpy', 'onnxruntime', 'rclpy')
THREAD_VARIABLES = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OMP_WAIT_POLICY')


def _git(*args: str) -> Optional[str]:
    """Return the output of ``git args`` run in this package's folder, None on failure."""
    try:
        result = subprocess.run(['git', *args], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def _changed_paths(line: str) -> List[str]:
    """Return the path(s) of one ``git status --porcelain`` line (both sides of a rename)."""
    paths = line[3:]
    return [path.strip().strip('"') for path in paths.split(' -> ')]


def git_state() -> Dict[str, Any]:
    """Return ``commit``, ``dirty`` (None outside git) and the ``changes`` of the checkout.

    ``changes`` holds ``git status --porcelain`` lines (untracked files included) except those
    of results files (:data:`IGNORED_CHANGES`), at most :data:`MAX_LISTED_CHANGES` of them
    (then a last line says how many more there were).
    """
    commit = _git('rev-parse', 'HEAD')
    status = _git('status', '--porcelain', '--untracked-files=normal')
    if not commit or status is None:
        return {'commit': 'unknown', 'dirty': None, 'changes': []}
    changes = [line for line in status.splitlines() if line.strip() and not all(
        path.startswith(IGNORED_CHANGES) for path in _changed_paths(line))]
    listed = changes[:MAX_LISTED_CHANGES]
    if len(changes) > len(listed):
        listed.append(f'... and {len(changes) - len(listed)} more')
    return {'commit': commit.strip(), 'dirty': bool(changes), 'changes': listed}


# The vector extensions a CPU kernel library picks its kernels by (oneDNN, MKL, ONNX Runtime),
# in /proc/cpuinfo's spelling: x86's 'flags', ARM's 'Features'. Two hosts sold under one model
# name can differ in them (AVX2 only, or AVX-512 with VNNI), and timings with them.
VECTOR_EXTENSIONS = ('avx2', 'fma', 'avx512f', 'avx512_vnni', 'avx_vnni', 'avx512_bf16',
                     'amx_bf16', 'amx_int8', 'asimd', 'asimddp', 'i8mm', 'bf16', 'sve')


def _cpuinfo_value(keys: Sequence[str], cpuinfo: Path = Path('/proc/cpuinfo')) -> Optional[str]:
    """Return the first CPU's value of the first of ``keys`` found (None: absent or unreadable)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, separator, value = line.partition(':')
            if separator and key.strip().lower() in keys:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_flags(cpuinfo: Path = Path('/proc/cpuinfo')) -> Set[str]:
    """Return the first CPU's feature flags (empty where ``cpuinfo`` cannot be read)."""
    return set((_cpuinfo_value(('flags', 'features'), cpuinfo) or '').split())


def vector_extensions(cpuinfo: Path = Path('/proc/cpuinfo')) -> List[str]:
    """Return which of :data:`VECTOR_EXTENSIONS` the CPU has, in that order."""
    flags = cpu_flags(cpuinfo)
    return [name for name in VECTOR_EXTENSIONS if name in flags]


def cpu_model() -> str:
    """Return the CPU model name."""
    return _cpuinfo_value(('model name',)) or platform.processor() or 'unknown'


def load_average() -> List[float]:
    """Return the 1/5/15-minute load averages, rounded to hundredths."""
    return [round(v, 2) for v in os.getloadavg()]


def utc_now() -> str:
    """Return the current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def _memory_gib() -> float:
    try:
        import psutil
        return round(psutil.virtual_memory().total / 2 ** 30, 1)
    except ImportError:
        return round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30, 1)


def machine_facts() -> Dict[str, Any]:
    """Return the machine, the software and the checkout at the start of a run.

    Keys: ``cpu_model``, ``cpu_extensions`` (:func:`vector_extensions`), ``logical_cores``,
    ``usable_cores``, ``memory_gib``,
    ``torch_version``, ``python_version``, ``platform``, ``cuda_device``, ``git_commit``,
    ``git_dirty``, ``git_changes``, ``date_utc``, ``load_average_start``.
    """
    import torch
    git = git_state()
    return {
        'cpu_model': cpu_model(), 'cpu_extensions': vector_extensions(),
        'logical_cores': os.cpu_count() or 0,
        'usable_cores': len(os.sched_getaffinity(0)), 'memory_gib': _memory_gib(),
        'torch_version': torch.__version__, 'python_version': platform.python_version(),
        'platform': platform.platform(),
        'cuda_device': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        'git_commit': git['commit'], 'git_dirty': git['dirty'], 'git_changes': git['changes'],
        'date_utc': utc_now(), 'load_average_start': load_average()}


def package_versions(names: Sequence[str] = PACKAGES) -> Dict[str, Optional[str]]:
    """Return the installed version of each package; None where it is not installed.

    A module already imported reports its own ``__version__`` (torch's has the build tag);
    nothing is imported here. A package present without distribution metadata (ROS 2 from
    apt) is 'installed, version unknown'.
    """
    versions: Dict[str, Optional[str]] = {}
    for name in names:
        module = sys.modules.get(name)
        version = getattr(module, '__version__', None) if module is not None else None
        if version is None:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                version = ('installed, version unknown'
                           if importlib.util.find_spec(name) is not None else None)
        versions[name] = str(version) if version is not None else None
    return versions


def thread_settings() -> Dict[str, Any]:
    """Return torch's intra-op threads (where torch is loaded) and the threading variables."""
    torch = sys.modules.get('torch')
    return {'torch_intra_op': torch.get_num_threads() if torch is not None else None,
            **{name: os.environ.get(name) for name in THREAD_VARIABLES}}


def command_line(argv: Optional[Sequence[str]] = None, program: Optional[str] = None) -> str:
    """Return the command that started this process, as one shell line.

    The script is named relative to the working directory when it lies below it; ``program``
    replaces ``python <script>`` (e.g. ``python -m mspr_training.demo``).
    """
    argv = list(sys.argv if argv is None else argv)
    if program is None:
        script = Path(argv[0]) if argv else Path('?')
        try:
            script = script.resolve().relative_to(Path.cwd())
        except ValueError:
            pass
        head = ['python', str(script)]
    else:
        head = shlex.split(program)
    return shlex.join(head + argv[1:])


def run_record(machine: Dict[str, Any], argv: Optional[Sequence[str]] = None,
               program: Optional[str] = None) -> Dict[str, Any]:
    """Return the provenance block of a results file written now.

    ``machine`` is :func:`machine_facts` (or a benchmark's ``MachineInfo`` as a dict) from the
    start of the run: the commit, tree state, start date and start load come from there.
    """
    end = datetime.datetime.now(datetime.timezone.utc)
    start = machine.get('date_utc')
    try:
        duration = (end - datetime.datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        duration = None
    changes = list(machine.get('git_changes') or [])
    return {
        'git': {'commit': machine.get('git_commit', 'unknown'),
                'dirty': machine.get('git_dirty'), 'changes': changes},
        'command': command_line(argv, program), 'packages': package_versions(),
        'threads': thread_settings(), 'date_utc_start': start,
        'date_utc_end': end.isoformat(timespec='seconds'), 'duration_s': duration,
        'load_average_start': machine.get('load_average_start'),
        'load_average_end': load_average()}
