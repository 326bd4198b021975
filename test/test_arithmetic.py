"""benchmarks/common/arithmetic.py: the FLOPs a forward does, attention kernels included."""
import copy

import pytest
import torch
from torch import nn

from mspr_ros.model.inference import FewQueryCrossAttention


@pytest.fixture(scope='module')
def arithmetic(benchmarks_on_path):
    """Return benchmarks/common/arithmetic.py."""
    from common import arithmetic as module
    return module


class CrossAttention(nn.Module):
    """One attention call of ``queries`` queries to ``tokens`` tokens, as the decoder makes it."""

    def __init__(self, attention: nn.MultiheadAttention, queries: int, tokens: int):
        """Keep the module and fixed inputs."""
        super().__init__()
        self.attention = attention
        self.queries = torch.randn(queries, 1, attention.embed_dim)
        self.tokens = torch.randn(tokens, 1, attention.embed_dim)

    def forward(self, scale: torch.Tensor) -> torch.Tensor:
        """Attend; ``scale`` (one number) gives the call an input the counter can follow."""
        return self.attention(self.queries * scale, self.tokens, self.tokens,
                              need_weights=False)[0]


def test_the_count_holds_the_projections_and_the_attention_products(arithmetic):
    d, heads, queries, tokens = 8, 2, 2, 5
    plain = nn.MultiheadAttention(d, heads).eval()
    projections = 2 * d * d * (queries + tokens + tokens + queries)  # q, k, v, out
    products = 4 * queries * tokens * d  # Q K^T and the weighted sum of V
    scale = torch.ones(1)
    # Element-wise work (the scaling by ``scale``, the softmax) is not counted.
    assert arithmetic.forward_flops(CrossAttention(plain, queries, tokens), scale) == (
        projections + products)

    few = copy.deepcopy(plain)
    few.__class__ = FewQueryCrossAttention
    assert few.reassociates(queries)
    head_dim = d // heads
    # q and out projections; each query and head mapped into token space and back; the scores
    # and the weighted sum of the tokens, now plain matrix products over the model width.
    expected = (2 * d * d * 2 * queries + 2 * 2 * queries * heads * head_dim * d
                + 4 * heads * queries * tokens * d)
    assert arithmetic.forward_flops(CrossAttention(few, queries, tokens), scale) == expected


def test_the_matmul_rate_is_a_rate(arithmetic):
    assert arithmetic.matmul_gflops(size=64, calls=3) > 0.0
