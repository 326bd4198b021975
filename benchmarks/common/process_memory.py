"""Memory a process holds: resident (psutil) and on the GPU (nvidia-smi)."""
import subprocess
from typing import List, Optional

import psutil
import torch


def process_tree(pid: int) -> List[psutil.Process]:
    """Return process ``pid`` and all its descendants."""
    process = psutil.Process(pid)
    return [process] + process.children(recursive=True)


def resident_bytes(pid: int) -> int:
    """Return the resident memory of process ``pid`` and its children (bytes)."""
    return sum(p.memory_info().rss for p in process_tree(pid))


def gpu_memory_mib(pid: int) -> Optional[float]:
    """GPU memory used by process ``pid`` and its children (MiB), None when unavailable."""
    if not torch.cuda.is_available():
        return None
    try:
        result = subprocess.run(
            ['nvidia-smi', '--query-compute-apps=pid,used_memory',
             '--format=csv,noheader,nounits'], capture_output=True, text=True, timeout=10,
            check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    pids = {process.pid for process in process_tree(pid)}
    used = [float(memory) for line in result.stdout.splitlines()
            for found, memory in [line.split(',')] if int(found) in pids]
    return sum(used) if used else 0.0
