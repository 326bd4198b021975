"""Exact multi-head self-attention that never holds a whole ``B*H x N x N`` tensor.

The plain formulation (``nn.MultiheadAttention`` in training, where CPU
``scaled_dot_product_attention`` falls back to its math path because of the attention dropout)
materialises scores, softmax, dropout mask and the masked weights for all N queries at once:
at the paper size (batch 8, 8 heads, the 784 tokens of the orientation branch) each is 157 MB,
several per layer, plus the same again in the backward pass. glibc maps and unmaps blocks that
large on every step, and they stream through memory at least twice.

:func:`chunked_attention` computes the same thing in blocks of query rows: each block's scores,
softmax (through its log-sum-exp), dropout and output are done before the next block starts. The
backward pass recomputes each block's softmax instead of keeping the weights (the FlashAttention
recomputation, done with PyTorch's fused kernels); only the dropout mask is kept, one byte per
weight, so the dropped weights in the backward pass are exactly those of the forward pass.
Attention dropout is the paper's (``nn.MultiheadAttention(dropout=p)``): weights zeroed with
probability p and the rest scaled by 1/(1-p).

Without active dropout (eval mode, or p = 0) ``scaled_dot_product_attention`` already has a
memory-efficient CPU kernel (and CUDA kernels with dropout), so :class:`MemoryEfficientAttention`
uses it there.
"""
import math
from typing import Optional

import torch
from torch import nn
from torch.autograd.function import once_differentiable
import torch.nn.functional as F

# Bytes of one block's score matrix: large enough for efficient matmuls, small enough to stay
# far below glibc's mmap threshold and close to the caches.
BLOCK_BYTES = 8 << 20


def rows_per_block(batch_heads: int, keys: int, element_size: int = 4,
                   block_bytes: int = BLOCK_BYTES) -> int:
    """Return how many query rows one block holds (at least 1)."""
    return max(1, block_bytes // (batch_heads * keys * element_size))


class _ChunkedAttention(torch.autograd.Function):
    """``softmax(q k^T) v`` with attention dropout, one block of query rows at a time."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float,
                generator: Optional[torch.Generator], rows: int) -> torch.Tensor:
        """Return the attention output ``BH x N x hd`` (``q`` already scaled)."""
        out = torch.empty(q.shape[:-1] + v.shape[-1:], dtype=q.dtype, device=q.device)
        drop_masks = []
        keys_t = k.transpose(-1, -2)
        for start in range(0, q.shape[-2], rows):
            block = slice(start, start + rows)
            weights = torch.softmax(torch.matmul(q[..., block, :], keys_t), dim=-1)
            if dropout_p > 0.0:
                drop = torch.rand(weights.shape, generator=generator, dtype=weights.dtype,
                                  device=weights.device) < dropout_p
                weights.masked_fill_(drop, 0.0)
                drop_masks.append(drop)
            out[..., block, :] = torch.matmul(weights, v)
        if dropout_p > 0.0:
            out.mul_(1.0 / (1.0 - dropout_p))
        ctx.save_for_backward(q, k, v)
        ctx.drop_masks = drop_masks
        ctx.dropout_p = dropout_p
        ctx.rows = rows
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        """Recompute each block's softmax (cheaper than keeping it); return dq, dk, dv."""
        q, k, v = ctx.saved_tensors
        dropout_p = ctx.dropout_p
        scale = 1.0 / (1.0 - dropout_p)
        grad_out = grad_out.contiguous()
        grad_q = torch.empty_like(q)
        grad_k = torch.zeros_like(k)
        grad_v = torch.zeros_like(v)
        keys_t, values_t = k.transpose(-1, -2), v.transpose(-1, -2)
        for index, start in enumerate(range(0, q.shape[-2], ctx.rows)):
            block = slice(start, start + ctx.rows)
            q_block, grad_block = q[..., block, :], grad_out[..., block, :]
            weights = torch.softmax(torch.matmul(q_block, keys_t), dim=-1)
            grad_weights = torch.matmul(grad_block, values_t)
            if dropout_p > 0.0:
                drop = ctx.drop_masks[index]
                grad_weights.masked_fill_(drop, 0.0).mul_(scale)
            # P * (dP - rowsum(dP * P)): the fused softmax backward kernel.
            grad_scores = torch.ops.aten._softmax_backward_data(grad_weights, weights, -1,
                                                                weights.dtype)
            if dropout_p > 0.0:
                weights.masked_fill_(drop, 0.0)
            grad_v.baddbmm_(weights.transpose(-1, -2), grad_block,
                            alpha=scale if dropout_p > 0.0 else 1.0)
            grad_q[..., block, :] = torch.matmul(grad_scores, k)
            grad_k.baddbmm_(grad_scores.transpose(-1, -2), q_block)
        return grad_q, grad_k, grad_v, None, None, None


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                      generator: Optional[torch.Generator] = None,
                      rows: Optional[int] = None) -> torch.Tensor:
    """Return ``dropout(softmax(q k^T / sqrt(hd))) v`` for ``... x N x hd`` inputs, exactly.

    Args:
        q, k, v: queries ``... x N x hd``, keys and values ``... x M x hd`` (leading dims alike).
        dropout_p: attention dropout probability (weights zeroed, the rest scaled by 1/(1-p)).
        generator: random generator of the dropout masks (torch's default one when None).
        rows: query rows per block; by default blocks of about :data:`BLOCK_BYTES`.
    """
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f'dropout_p must be in [0, 1), got {dropout_p}')
    batch_heads = math.prod(q.shape[:-2])
    rows = rows or rows_per_block(batch_heads, k.shape[-2], q.element_size())
    # Row-major blocks: the heads split out of N x B x d tokens are strided, and batched
    # matmuls over strided blocks copy or take slow paths.
    scaled = (q * (1.0 / math.sqrt(q.shape[-1]))).contiguous()
    return _ChunkedAttention.apply(scaled, k.contiguous(), v.contiguous(), float(dropout_p),
                                   generator, int(rows))


class MemoryEfficientAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` (same parameters and math) computed without ``N x N`` tensors.

    Only what the encoder uses is supported: sequence-first inputs, no masks, no weights
    returned. Training with attention dropout on the CPU runs :func:`chunked_attention`; every
    other case runs ``scaled_dot_product_attention``, whose kernels there are memory-efficient.
    ``memory_efficient = False`` runs the plain ``nn.MultiheadAttention`` (the benchmarks'
    baseline). ``block_rows`` fixes the query rows per block (None: about :data:`BLOCK_BYTES`).
    Forward pre-hooks see ``(query, key, value)`` as for the plain module.
    """

    memory_efficient = True
    block_rows: Optional[int] = None

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        """Return ``(output N x B x d, None)`` for ``N x B x d`` inputs."""
        if not self.memory_efficient:
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                   average_attn_weights, is_causal)
        if need_weights or key_padding_mask is not None or attn_mask is not None or is_causal:
            raise ValueError('MemoryEfficientAttention supports need_weights=False without masks')
        d_model, heads, head_dim = self.embed_dim, self.num_heads, self.head_dim
        weight, bias = self.in_proj_weight, self.in_proj_bias
        if query is key:  # self-attention with positions: one projection for q and k
            q, k = F.linear(query, weight[:2 * d_model], bias[:2 * d_model]).chunk(2, dim=-1)
        else:
            q = F.linear(query, weight[:d_model], bias[:d_model])
            k = F.linear(key, weight[d_model:2 * d_model], bias[d_model:2 * d_model])
        v = F.linear(value, weight[2 * d_model:], bias[2 * d_model:])
        tokens, batch = query.shape[:2]

        def split_heads(x: torch.Tensor) -> torch.Tensor:  # N x B x d -> B*H x N x hd
            return x.reshape(x.shape[0], batch * heads, head_dim).transpose(0, 1)

        q, k, v = split_heads(q), split_heads(k), split_heads(v)
        dropout_p = self.dropout if self.training else 0.0
        if dropout_p > 0.0 and q.device.type == 'cpu':
            attended = chunked_attention(q, k, v, dropout_p, rows=self.block_rows)
        else:
            attended = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        attended = attended.transpose(0, 1).reshape(tokens, batch, d_model)
        return self.out_proj(attended), None
