"""How much arithmetic a forward pass is, and how fast this CPU does the best kind of it.

``forward_flops`` counts the floating-point operations of one forward: PyTorch's
``FlopCounterMode`` counts the convolutions and matrix products, and a hook on each attention
module adds the two products inside the attention kernel (``Q K^T`` and the weighted sum of
``V``: 4 x queries x keys x width per image), which that counter does not see. Element-wise work
(softmax, normalisation, activations) is not counted, so the floor below is a lower bound.
``matmul_gflops`` times a large square float32 matrix product, the operation CPUs run closest to
their peak: a forward's FLOPs over that rate is the least time any float32 implementation of the
same arithmetic can take on this machine.
"""
import time
from typing import List

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mspr_ros.model.inference import FewQueryCrossAttention


def _attention_products(module: nn.MultiheadAttention, inputs, _output) -> float:
    """Return the FLOPs of the attention kernel of one call (0 when plain matmuls did them)."""
    query, key = inputs[0], inputs[1]
    if isinstance(module, FewQueryCrossAttention) and module.reassociates(query.shape[0]):
        return 0.0  # its products are torch.matmul calls, which FlopCounterMode counts
    queries, batch, width = query.shape
    return 4.0 * queries * key.shape[0] * batch * width


def forward_flops(model: nn.Module, images: torch.Tensor) -> float:
    """Return the floating-point operations of ``model(images)`` (see the module docstring)."""
    attention: List[float] = []
    hooks = [module.register_forward_hook(
        lambda m, i, o: attention.append(_attention_products(m, i, o)))
        for module in model.modules() if isinstance(module, nn.MultiheadAttention)]
    try:
        # The counter's module tracker needs autograd on: an input that asks for gradients.
        counter = FlopCounterMode(display=False)
        with counter, torch.enable_grad():
            model(images.detach().clone().requires_grad_(True))
    finally:
        for hook in hooks:
            hook.remove()
    return float(counter.get_total_flops()) + sum(attention)


def matmul_gflops(size: int = 1024, calls: int = 20) -> float:
    """Return the median rate (GFLOP/s) of ``size`` x ``size`` float32 products (torch threads)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    rates = []
    with torch.inference_mode():
        for _ in range(3):
            a @ b
        for _ in range(calls):
            started = time.perf_counter()
            a @ b
            rates.append(2.0 * size ** 3 / (time.perf_counter() - started) / 1e9)
    return sorted(rates)[len(rates) // 2]
