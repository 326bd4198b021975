"""Where a figure was measured: the machine, its load, and the thread settings of the run."""
from dataclasses import dataclass, field
import os
from typing import List, Optional, Tuple

import torch

from mspr_training import provenance


@dataclass
class MachineInfo:
    """Where a figure was measured.

    Attributes:
        cpu_model: ``model name`` of /proc/cpuinfo (``platform.processor()`` elsewhere).
        cpu_extensions: the vector extensions the CPU has (``provenance.vector_extensions``):
            hosts of one model name differ in them, and so do their timings.
        logical_cores: CPUs the OS reports.
        usable_cores: CPUs this process may run on (affinity).
        memory_gib: physical memory.
        torch_version, python_version, platform: software.
        cuda_device: name of CUDA device 0, None without CUDA.
        git_commit: the checkout's commit ('unknown' outside git).
        date_utc: ISO time of the measurement start.
        load_average_start: 1/5/15-minute load averages when the benchmark started.
        git_dirty: whether ``git status --porcelain`` listed anything but results files at the
            start (None outside git); ``git_changes`` those lines
            (``mspr_training.provenance.git_state``).
    """

    cpu_model: str
    logical_cores: int
    usable_cores: int
    memory_gib: float
    torch_version: str
    python_version: str
    platform: str
    cuda_device: Optional[str]
    git_commit: str
    date_utc: str
    load_average_start: List[float]
    git_dirty: Optional[bool] = None
    git_changes: List[str] = field(default_factory=list)
    cpu_extensions: List[str] = field(default_factory=list)


# Shared with make demo's results file (mspr_training.provenance).
cpu_model = provenance.cpu_model
load_average = provenance.load_average


def machine_info() -> MachineInfo:
    """Return the facts of this machine and of the checkout now."""
    return MachineInfo(**provenance.machine_facts())


def omp_wait_policy() -> str:
    """Return the OpenMP wait policy in force ('default' when the environment sets none)."""
    return os.environ.get('OMP_WAIT_POLICY', 'default')


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads here and in every child process started afterwards."""
    torch.set_num_threads(threads)
    os.environ['OMP_NUM_THREADS'] = str(threads)


def contention_note(machine: MachineInfo, threads: int) -> Optional[str]:
    """Return a warning when other processes load the CPUs this benchmark needs, else None."""
    load = machine.load_average_start[0]
    # Cores not needed by the measured threads; half a core of other work is tolerated.
    spare = machine.usable_cores - threads
    if load > spare + 0.5:
        return (f'the machine was busy: load average {load:.2f} on {machine.usable_cores} '
                f'cores when the benchmark started, so the figures are slower than on an idle '
                f'machine (ratios measured side by side stay comparable)')
    return None


def print_machine(machine: MachineInfo, threads: int) -> None:
    """Print the one-line machine description every benchmark starts with."""
    cuda = machine.cuda_device or 'no CUDA'
    tree = {True: 'DIRTY tree', False: 'clean tree', None: 'not a git checkout'}[
        machine.git_dirty]
    extensions = ' '.join(machine.cpu_extensions) or 'no vector extensions listed'
    print(f'{machine.cpu_model} ({extensions}), '
          f'{machine.usable_cores}/{machine.logical_cores} cores, '
          f'torch {machine.torch_version}, {cuda}, {threads} threads, OpenMP wait policy '
          f'{omp_wait_policy()}, load {machine.load_average_start[0]:.2f} '
          f'({machine.date_utc}; commit {machine.git_commit[:7]}, {tree})', flush=True)


def start_report(threads: int) -> Tuple[MachineInfo, List[str]]:
    """Print the machine line; return it and the run's notes (a contention warning, if any)."""
    machine = machine_info()
    print_machine(machine, threads)
    notes = [note for note in [contention_note(machine, threads)] if note]
    if machine.git_dirty:
        notes.append('dirty tree: the checkout had uncommitted changes (results files aside), '
                     'so commit ' + machine.git_commit[:7] + ' is not the whole code that ran')
    return machine, notes
