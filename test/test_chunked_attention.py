"""Chunked attention equals the plain formulation: values, gradients and the dropout law."""
import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mspr_ros.model.chunked_attention import chunked_attention, MemoryEfficientAttention

D_MODEL, HEADS = 16, 4


def plain_attention(q, k, v, dropout_p=0.0, keep=None):
    """Return the textbook ``dropout(softmax(q k^T / sqrt(hd))) v`` with a given keep mask."""
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    if keep is not None:
        weights = weights * keep / (1.0 - dropout_p)
    return weights @ v


def generator(seed):
    """Return a CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def inputs(seed, batch_heads=6, tokens=50, head_dim=8, dtype=torch.float32):
    """Return q, k, v with gradients enabled."""
    torch.manual_seed(seed)
    return [torch.randn(batch_heads, tokens, head_dim, dtype=dtype, requires_grad=True)
            for _ in range(3)]


def values_and_grads(function, tensors, seed=7):
    """Return the output and the gradients of a fixed random projection of it."""
    out = function(*tensors)
    weights = torch.randn(out.shape, generator=generator(seed))
    grads = torch.autograd.grad((out * weights).sum(), tensors)
    return out.detach(), grads


@pytest.mark.parametrize('rows', [1, 7, 16, 50, None])
def test_without_dropout_values_and_gradients_equal_the_plain_formulation(rows):
    """Any block size (dividing N or not) gives the plain values and gradients to 1e-5."""
    tensors = inputs(0)
    out, grads = values_and_grads(lambda q, k, v: chunked_attention(q, k, v, rows=rows),
                                  tensors)
    expected_out, expected_grads = values_and_grads(plain_attention, tensors)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=0)
    for grad, expected in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected, atol=1e-5, rtol=0)


def test_with_dropout_one_block_equals_the_plain_formulation_with_the_same_mask():
    """One block draws the same mask as ``rand >= p`` over all weights: values and gradients."""
    tensors, p = inputs(1), 0.3
    out, grads = values_and_grads(
        lambda q, k, v: chunked_attention(q, k, v, p, generator=generator(5), rows=50), tensors)
    keep = torch.rand(6, 50, 50, generator=generator(5)) >= p
    expected_out, expected_grads = values_and_grads(
        lambda q, k, v: plain_attention(q, k, v, p, keep), tensors)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=0)
    for grad, expected in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected, atol=1e-5, rtol=0)


def test_with_dropout_in_blocks_the_backward_pass_uses_the_forward_mask():
    """Finite differences agree with the backward pass when blocks draw their own masks."""
    tensors = inputs(2, batch_heads=2, tokens=9, head_dim=3, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda q, k, v: chunked_attention(q, k, v, 0.4, generator=generator(3), rows=4),
        tensors)


def test_with_dropout_the_expectation_and_spread_equal_multihead_attention():
    """Over many draws: mean = no-dropout output, per-element spread = nn.MultiheadAttention's."""
    torch.manual_seed(4)
    plain = nn.MultiheadAttention(D_MODEL, HEADS, dropout=0.25).train()
    chunked = MemoryEfficientAttention(D_MODEL, HEADS, dropout=0.25).train()
    chunked.load_state_dict(plain.state_dict())
    chunked.block_rows = 3
    x = torch.randn(12, 2, D_MODEL)
    draws = 3000
    with torch.no_grad():
        expected = plain.eval()(x, x, x, need_weights=False)[0]
        plain.train()
        samples = {name: torch.stack([module(x, x, x, need_weights=False)[0]
                                      for _ in range(draws)])
                   for name, module in (('plain', plain), ('chunked', chunked))}
    spread = samples['plain'].std(dim=0)
    standard_error = spread / math.sqrt(draws)
    assert ((samples['chunked'].mean(dim=0) - expected).abs() < 5 * standard_error + 1e-6).all()
    assert ((samples['plain'].mean(dim=0) - expected).abs() < 5 * standard_error + 1e-6).all()
    ratio = samples['chunked'].std(dim=0) / spread
    assert 0.95 < ratio.median() < 1.05
    assert spread.median() > 1e-3  # dropout really acts in both


def module_pair(dropout, seed=5):
    """Return a plain MHA and a MemoryEfficientAttention holding the same weights."""
    torch.manual_seed(seed)
    plain = nn.MultiheadAttention(D_MODEL, HEADS, dropout=dropout)
    with torch.no_grad():
        plain.in_proj_bias.normal_()
        plain.out_proj.bias.normal_()
    efficient = MemoryEfficientAttention(D_MODEL, HEADS, dropout=dropout)
    efficient.load_state_dict(plain.state_dict())
    return plain, efficient


@pytest.mark.parametrize('training', [False, True])
def test_module_equals_multihead_attention_without_dropout(training):
    """Eval mode (any dropout) and dropout 0: outputs and parameter gradients to 1e-5."""
    plain, efficient = module_pair(dropout=0.0 if training else 0.3)
    x, pos = torch.randn(20, 3, D_MODEL), torch.randn(20, 3, D_MODEL)
    results = []
    for module in (plain, efficient):
        module.train(training)
        out = module(x + pos, x + pos, x, need_weights=False)[0]
        out.pow(2).sum().backward()
        results.append((out.detach(), [p.grad for p in module.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=0)
    for grad, expected in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(grad, expected, atol=1e-5, rtol=0)


def test_module_with_dropout_equals_the_projected_plain_formulation():
    """Training with dropout: in/out projections around chunked attention, same mask, to 1e-5."""
    _, module = module_pair(dropout=0.2)
    module.train()
    x = torch.randn(20, 3, D_MODEL, requires_grad=True)
    torch.manual_seed(11)
    out = module(x, x, x, need_weights=False)[0]
    torch.manual_seed(11)  # one block at this size: the mask is rand(B*H x N x N) >= p
    keep = torch.rand(3 * HEADS, 20, 20) >= 0.2
    q, k, v = nn.functional.linear(x, module.in_proj_weight, module.in_proj_bias).chunk(3, -1)
    heads = [t.reshape(20, 3 * HEADS, D_MODEL // HEADS).transpose(0, 1) for t in (q, k, v)]
    attended = plain_attention(*heads, 0.2, keep).transpose(0, 1).reshape(20, 3, D_MODEL)
    expected = module.out_proj(attended)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    grad, expected_grad = (torch.autograd.grad(y.pow(2).sum(), x)[0] for y in (out, expected))
    torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=0)


class LargestTensor(TorchDispatchMode):
    """Record the element count of the largest tensor any operator produces."""

    def __init__(self):
        """Start at zero."""
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """Run ``func`` and look at its outputs."""
        out = func(*args, **(kwargs or {}))
        for item in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(item, torch.Tensor):
                self.largest = max(self.largest, item.numel())
        return out


def test_no_tensor_holds_all_the_weights():
    """Forward and backward with dropout make no B*H x N x N tensor (the plain one does)."""
    tokens, heads, batch = 64, HEADS, 2
    full = batch * heads * tokens * tokens
    plain, efficient = module_pair(dropout=0.1)
    efficient.block_rows = 8
    x = torch.randn(tokens, batch, D_MODEL)
    sizes = {}
    for name, module in (('plain', plain), ('efficient', efficient)):
        module.train()
        with LargestTensor() as mode:
            module(x, x, x, need_weights=False)[0].sum().backward()
        sizes[name] = mode.largest
    assert sizes['plain'] >= full
    assert sizes['efficient'] <= full // 4


def test_the_plain_module_is_one_switch_away():
    """``memory_efficient = False`` runs nn.MultiheadAttention itself (the baseline)."""
    plain, efficient = module_pair(dropout=0.0)
    efficient.memory_efficient = False
    x = torch.randn(5, 2, D_MODEL)
    out, weights = efficient(x, x, x)
    torch.testing.assert_close(out, plain(x, x, x)[0])
    assert weights.shape == (2, 5, 5)
    efficient.memory_efficient = True
    with pytest.raises(ValueError, match='need_weights=False'):
        efficient(x, x, x)
