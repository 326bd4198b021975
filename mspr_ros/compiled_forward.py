"""Inference from the model compiled by ``torch.compile`` (ROS-free).

The eager forward of the paper-size model at batch 1 on a small CPU spends a good share of its
time outside the matrix products and attention kernels: Python dispatches each of hundreds of
operators, and the element-wise work around each kernel (bias, residual sum, LayerNorm,
activation) reads and writes each token map once more. ``torch.compile`` (TorchInductor) traces
the rewritten inference model (:mod:`mspr_ros.model.inference`) once into one graph and generates
fused kernels for it: C++/OpenMP on the CPU, Triton on CUDA. At batch 1 on 2 CPU cores the demo
model then takes 0.56 of the model as built, where the eager rewrite takes 0.77; the paper model,
whose time goes mostly to the matrix products and attention kernels themselves, 0.80 against 0.90
(``benchmarks/torch_latency.py``).

The price is the compile: about 40 s for the demo model and a minute for the paper model on 2
cores with an empty cache, paid when the
localizer is built (the node's configure), so that no frame pays for it; TorchInductor caches
the kernels it generated on disk (``TORCHINDUCTOR_CACHE_DIR``), and a later process with the same
model and shapes reuses them. It needs a C++ compiler on the CPU (Triton on CUDA); a compile that
fails raises :class:`CompileError` naming why, and nothing falls back to eager. The graph is
compiled for one shape (``dynamic=False``): batch 1, what the node runs; another batch size is
compiled again on its first call.

The model runs once eagerly before it is compiled: its lazy caches (the sine positional
encoding's table per feature-map shape) are then full when the graph is traced. Traced with a
cache miss, the graph would carry a guard that the entry is missing, fail it on the next call
and compile again: the first frame would pay the compile after all.
"""
import contextlib
import logging
import time
from typing import Any, Callable

import torch
from torch import nn

LOGGER = logging.getLogger(__name__)


class CompileError(RuntimeError):
    """``torch.compile`` could not compile the model (the message says why)."""


def compile_model(model: nn.Module, example: torch.Tensor,
                  context: Callable[[], contextlib.AbstractContextManager]
                  ) -> Callable[[torch.Tensor], Any]:
    """Return ``model`` compiled by ``torch.compile``, compiled now on ``example``.

    Args:
        model: the eval-mode model to compile (the localizer's inference copy).
        example: an input of the shape it will run (on its device).
        context: the context the calls run in besides inference mode (autocast), entered for
            the compile too: autocast changes the graph.

    Raises:
        CompileError: the compile failed; the cause is chained.
    """
    started = time.perf_counter()
    with torch.inference_mode(), context():
        model(example)     # fills the lazy caches before tracing (module docstring)
    compiled = torch.compile(model, dynamic=False)
    try:
        with torch.inference_mode(), context():
            compiled(example)
    except Exception as error:   # whatever the compiler raised, with its cause
        raise CompileError(f'torch.compile could not compile the model: '
                           f'{type(error).__name__}: {error}') from error
    LOGGER.info('torch.compile compiled the model in %.1f s', time.perf_counter() - started)
    return compiled
