"""Tests of the pre-norm encoder/decoder layers and the Query-Key Alignment distance."""
import math

import pytest
import torch
from torch import nn

from mspr_ros.model.transformer import DecoderLayer, EncoderLayer, SceneTransformer

D_MODEL, HEADS, FF = 16, 4, 24


def fresh_mha(trained: nn.MultiheadAttention) -> nn.MultiheadAttention:
    """Return a new standard MHA holding ``trained``'s state dict."""
    mha = nn.MultiheadAttention(D_MODEL, HEADS, dropout=0.0)
    mha.load_state_dict(trained.state_dict())
    return mha.eval()


def test_encoder_layer_equals_standard_multihead_attention():
    """The layer is x + MHA(LN1 x + pe, LN1 x + pe, LN1 x) then the pre-norm FFN, to 1e-6."""
    torch.manual_seed(0)
    layer = EncoderLayer(D_MODEL, HEADS, FF, dropout=0.1).eval()
    src, pos = torch.randn(12, 3, D_MODEL), torch.randn(12, 3, D_MODEL)
    with torch.no_grad():
        out, qka = layer(src, pos)
        normed = layer.norm1(src)
        attended = fresh_mha(layer.self_attn)(normed + pos, normed + pos, normed)[0]
        expected = src + attended
        linear1, linear2 = layer.feed_forward[0], layer.feed_forward[3]
        expected = expected + linear2(nn.functional.gelu(linear1(layer.norm2(expected))))
    assert qka is None
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_decoder_layer_equals_standard_multihead_attention():
    """Self-attention with query pos, cross-attention with memory pos, FFN; all pre-norm."""
    torch.manual_seed(1)
    layer = DecoderLayer(D_MODEL, HEADS, FF, dropout=0.1).eval()
    tgt, query_pos = torch.randn(3, 2, D_MODEL), torch.randn(3, 2, D_MODEL)
    memory, pos = torch.randn(10, 2, D_MODEL), torch.randn(10, 2, D_MODEL)
    with torch.no_grad():
        out = layer(tgt, memory, pos, query_pos)
        t = layer.norm1(tgt)
        x = tgt + fresh_mha(layer.self_attn)(t + query_pos, t + query_pos, t)[0]
        t = layer.norm2(x)
        x = x + fresh_mha(layer.cross_attn)(t + query_pos, memory + pos, memory)[0]
        linear1, linear2 = layer.feed_forward[0], layer.feed_forward[3]
        expected = x + linear2(nn.functional.gelu(linear1(layer.norm3(x))))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_qka_equals_per_token_projection_means():
    """QKA = mean over layers, images, heads of |mean_n Q - mean_n K| from full projections."""
    torch.manual_seed(2)
    branch = SceneTransformer(num_scenes=2, d_model=D_MODEL, nheads=HEADS, dim_feedforward=FF,
                              dropout=0.0, enc_layers=3, dec_layers=1).eval()
    with torch.no_grad():
        for layer in branch.encoder.layers:  # non-zero biases so they must be included
            layer.self_attn.in_proj_bias.normal_()
        src, pos = torch.randn(5, D_MODEL, 3, 4), torch.randn(5, D_MODEL, 3, 4)
        _, qka = branch(src, pos, need_qka=True)
        _, no_qka = branch(src, pos, need_qka=False)

        tokens = src.flatten(2).permute(2, 0, 1)
        pos_tokens = pos.flatten(2).permute(2, 0, 1)
        distances = []
        for layer in branch.encoder.layers:
            x = layer.norm1(tokens) + pos_tokens  # N x B x d
            weight, bias = layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias
            queries = x @ weight[:D_MODEL].T + bias[:D_MODEL]
            keys = x @ weight[D_MODEL:2 * D_MODEL].T + bias[D_MODEL:2 * D_MODEL]
            head_dim = D_MODEL // HEADS
            for b in range(tokens.shape[1]):
                for h in range(HEADS):
                    channels = slice(h * head_dim, (h + 1) * head_dim)
                    q_mean = queries[:, b, channels].mean(dim=0)
                    k_mean = keys[:, b, channels].mean(dim=0)
                    distances.append(math.sqrt(((q_mean - k_mean) ** 2).sum().item()))
            tokens = layer(tokens, pos_tokens)[0]
    assert no_qka is None
    assert len(distances) == 3 * 5 * HEADS
    assert qka.item() == pytest.approx(sum(distances) / len(distances), rel=1e-5)


def test_branch_shapes_and_xavier_init():
    """The branch returns B x S x d latents; matrices are xavier, scene queries N(0, 1)."""
    torch.manual_seed(3)
    branch = SceneTransformer(num_scenes=40, d_model=64, nheads=4, dim_feedforward=64,
                              dropout=0.1, enc_layers=1, dec_layers=2)
    latents, _ = branch(torch.randn(2, 64, 3, 3), torch.randn(2, 64, 3, 3))
    assert latents.shape == (2, 40, 64)
    ffn = branch.encoder.layers[0].feed_forward[0].weight
    # xavier bound sqrt(6 / 128) = 0.217 exceeds nn.Linear's default bound 1/sqrt(64) = 0.125.
    assert 0.125 < ffn.abs().max() <= math.sqrt(6 / 128)
    queries = branch.scene_queries.weight
    assert queries.abs().max() > math.sqrt(6 / (40 + 64))  # not xavier-initialised
