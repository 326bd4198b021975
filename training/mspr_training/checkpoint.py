"""Training checkpoints: atomic writes, weights-only loading, RNG capture, latest lookup.

A checkpoint is a ``torch.save`` of a dict made only of tensors, numbers, strings, bools, None,
lists and dicts, so it loads with ``torch.load(weights_only=True)`` (nothing is unpickled):

    format       CHECKPOINT_FORMAT
    model        model state dict
    criterion    loss state dict (the learnable s_x, s_q)
    optimizer    optimizer state dict
    scheduler    LR scheduler state dict
    scaler       GradScaler state dict
    sampler      sampler state (seed, epoch, settings)
    progress     {epoch, iteration, global_step, epoch_done}: ``iteration`` batches of
                 ``epoch`` are done; ``epoch_done`` marks an epoch-end checkpoint
    rng          python/numpy/torch/cuda generator states as tensors
    config       TrainConfig.to_dict()
    scene_names  scene names in index order
    data_fingerprint  sha256 of the training set (see mspr_training.datasets)

File names: ``checkpoint_<global step, 9 digits>.pt`` for epoch-end and final checkpoints,
``checkpoint_<step>_iter.pt`` for mid-epoch ones; the latest is the highest step (an epoch-end
file wins over a mid-epoch file of the same step).
"""
from __future__ import annotations

from pathlib import Path
import random
import re
from typing import Any

import numpy as np
import torch

from mspr_ros.runtime.atomic_file import atomic_write

CHECKPOINT_FORMAT = 1
_NAME = re.compile(r'^checkpoint_(\d{9})(_iter)?\.pt$')


class CheckpointError(Exception):
    """A checkpoint is missing or unusable; the message names the file."""


def checkpoint_name(global_step: int, mid_epoch: bool) -> str:
    """Return the file name of a checkpoint at ``global_step``."""
    return f'checkpoint_{global_step:09d}{"_iter" if mid_epoch else ""}.pt'


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Return the run's checkpoints, oldest first (by step; epoch-end after mid-epoch)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for path in run_dir.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file():
            found.append(((int(match.group(1)), match.group(2) is None), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """Return the newest checkpoint of ``run_dir``, or None when there is none."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def resolve_checkpoint(path: str | Path) -> Path:
    """Return ``path`` if it is a file, or the latest checkpoint of the run folder ``path``.

    Raises:
        CheckpointError: nothing there, or a folder without checkpoints.
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f'{path}: run folder holds no checkpoint_*.pt file')
        return latest
    raise CheckpointError(f'{path}: no such checkpoint file or run folder')


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    A kill at any moment leaves either the previous file or the complete new one.
    """
    path = Path(path)
    with atomic_write(path) as handle:
        torch.save(state, handle)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True``.

    Raises:
        CheckpointError: missing, unreadable, not weights-only or of another format.
    """
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f'{path}: cannot load checkpoint: {error}') from error
    if not isinstance(state, dict) or state.get('format') != CHECKPOINT_FORMAT:
        raise CheckpointError(f'{path}: not an mspr_training checkpoint (format '
                              f'{state.get("format") if isinstance(state, dict) else None!r}, '
                              f'expected {CHECKPOINT_FORMAT})')
    state['path'] = str(path)
    return state


def prune_iteration_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` mid-epoch checkpoints of ``run_dir``."""
    mid_epoch = [path for path in list_checkpoints(run_dir) if path.stem.endswith('_iter')]
    for path in mid_epoch[:-keep] if keep > 0 else mid_epoch:
        path.unlink(missing_ok=True)


def capture_rng_state() -> dict[str, Any]:
    """Return every generator state the training loop draws from, as tensors."""
    version, mt_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        'python': torch.tensor(mt_state, dtype=torch.int64),
        'python_version': version,
        'python_gauss': gauss,
        'numpy_kind': kind,
        'numpy_keys': torch.from_numpy(keys.astype(np.int64)),
        'numpy_position': int(position),
        'numpy_has_gauss': int(has_gauss),
        'numpy_cached_gaussian': float(cached),
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the generator states captured by :func:`capture_rng_state`."""
    random.setstate((state['python_version'], tuple(int(v) for v in state['python'].tolist()),
                     state['python_gauss']))
    np.random.set_state((state['numpy_kind'], state['numpy_keys'].numpy().astype(np.uint32),
                         state['numpy_position'], state['numpy_has_gauss'],
                         state['numpy_cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
