"""Data-parallel process group set-up from the ``torchrun`` environment.

``torchrun --nproc_per_node N -m mspr_training.train ...`` sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; without them the run is a single process.
Backend: NCCL on CUDA, gloo on CPU. Only rank 0 logs and writes files.
"""
from dataclasses import dataclass
import os

import torch
import torch.distributed as dist

_TORCHRUN_VARIABLES = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the data-parallel group.

    Attributes:
        rank: global rank (0 for a single process).
        world_size: number of processes.
        local_rank: rank on this machine (selects the CUDA device).
        device: the torch device this process computes on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')

    @property
    def enabled(self) -> bool:
        """Return True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Return True on the process that logs and writes files."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Return True when the torchrun variables are present."""
    return all(name in os.environ for name in _TORCHRUN_VARIABLES)


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group described by the torchrun environment, if any.

    Args:
        device: the device resolved from the config; with CUDA each process takes
            ``cuda:LOCAL_RANK``.

    Raises:
        RuntimeError: a partial torchrun environment, or CUDA asked for with fewer devices than
            local processes.
    """
    present = [name for name in _TORCHRUN_VARIABLES if name in os.environ]
    if not present:
        return DistributedContext(device=device)
    if len(present) != len(_TORCHRUN_VARIABLES):
        raise RuntimeError(f'partial torchrun environment: {present} set but '
                           f'{sorted(set(_TORCHRUN_VARIABLES) - set(present))} missing')
    rank = int(os.environ['RANK'])
    world_size = int(os.environ['WORLD_SIZE'])
    local_rank = int(os.environ['LOCAL_RANK'])
    if device.type == 'cuda':
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f'local rank {local_rank} but only {torch.cuda.device_count()} '
                               'CUDA devices are visible')
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
        backend = 'nccl'
    else:
        backend = 'gloo'
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank,
                              device=device)


def barrier(context: DistributedContext) -> None:
    """Wait for every process (no-op for a single process)."""
    if context.enabled:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Return the element-wise sum of ``tensor`` over all processes (a copy)."""
    total = tensor.detach().clone()
    if context.enabled:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def broadcast_object(value, context: DistributedContext):
    """Return rank 0's ``value`` on every process."""
    if not context.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def shutdown(context: DistributedContext) -> None:
    """Leave the process group."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(value, context: DistributedContext) -> list:
    """Return the list of every process's ``value`` (rank order) on every process."""
    if not context.enabled:
        return [value]
    gathered = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered
