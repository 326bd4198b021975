"""Resolve a user-facing device string ('auto', 'cpu', 'cuda', 'cuda:N') to a torch.device.

Also says what a device supports that the localizer asks about (bfloat16).
"""
import logging
import re

import torch

LOGGER = logging.getLogger(__name__)
_CUDA_PATTERN = re.compile(r'cuda(?::(\d+))?')
_warned_cpu_fallback = False


def resolve_device(spec: str) -> torch.device:
    """Return the device named by ``spec``.

    'auto' picks CUDA when available and otherwise the CPU (logging one warning per process).
    An explicit device that does not exist raises instead of silently falling back.

    Raises:
        ValueError: unknown spec, CUDA unavailable, or a CUDA index out of range.
    """
    global _warned_cpu_fallback
    if not isinstance(spec, str):
        raise ValueError(f"device must be a string ('auto', 'cpu', 'cuda', 'cuda:N'), got "
                         f'{spec!r}')
    text = spec.strip().lower()
    if text == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda')
        if not _warned_cpu_fallback:
            _warned_cpu_fallback = True
            LOGGER.warning("device 'auto': CUDA is not available, running on the CPU")
        return torch.device('cpu')
    if text == 'cpu':
        return torch.device('cpu')
    match = _CUDA_PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(f"unknown device {spec!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise ValueError(f'device {spec!r} requested but CUDA is not available on this machine')
    count = torch.cuda.device_count()
    index = int(match.group(1)) if match.group(1) is not None else None
    if index is not None and index >= count:
        raise ValueError(f'device {spec!r} requested but only {count} CUDA device(s) exist '
                         f'(indices 0..{count - 1})')
    return torch.device('cuda', index) if index is not None else torch.device('cuda')


def supports_bf16(device: torch.device) -> bool:
    """Return whether ``device`` runs bfloat16 autocast: the CPU does, GPUs from sm_80 on."""
    return device.type != 'cuda' or torch.cuda.get_device_capability(device) >= (8, 0)
