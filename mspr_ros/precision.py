"""Which numeric precision the localizer runs in, from what was asked and where it runs.

Torch-free on purpose: the node validates its ``precision`` parameter against
:data:`PRECISIONS` without loading torch. The rule (docs/architecture.md, Localizer):

- 'fp32' runs everywhere.
- 'fp16' and 'bf16' are torch autocast; they need the torch back-end (onnxruntime runs the
  exported float32 graph as it is).
- 'fp16' needs CUDA: CPU autocast in float16 is slow and barely supported.
- 'bf16' runs on the CPU (torch's CPU autocast supports it) and on GPUs with bfloat16 support
  (compute capability 8.0 and newer).

What cannot run falls back to 'fp32' with one warning naming what was asked and what runs.
"""
from typing import Optional, Tuple

PRECISIONS = ('fp32', 'fp16', 'bf16')


def check_precision(precision: str) -> str:
    """Return ``precision`` when it is one of :data:`PRECISIONS`.

    Raises:
        ValueError: naming the value and the allowed ones.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def resolve_precision(requested: str, device_type: str, backend: str,
                      bf16_supported: bool = True) -> Tuple[str, Optional[str]]:
    """Return ``(precision that runs, warning or None)`` for a request on a device and back-end.

    Args:
        requested: one of :data:`PRECISIONS`.
        device_type: 'cpu' or 'cuda'.
        backend: 'torch' or 'onnxruntime'.
        bf16_supported: whether the CUDA device has bfloat16 (ignored on the CPU).

    Raises:
        ValueError: ``requested`` is not one of :data:`PRECISIONS`.
    """
    check_precision(requested)
    if requested == 'fp32':
        return 'fp32', None
    if backend != 'torch':
        reason = 'the torch back-end'
    elif requested == 'fp16' and device_type != 'cuda':
        reason = 'torch on CUDA (bf16 runs on the CPU)'
    elif requested == 'bf16' and device_type == 'cuda' and not bf16_supported:
        reason = 'a GPU with bfloat16 support (compute capability 8.0 or newer)'
    else:
        return requested, None
    return 'fp32', (f'precision {requested} needs {reason}; running fp32 with {backend} on '
                    f'{device_type}')
