"""The model rewritten for inference (mspr_ros.model.inference): same outputs, original kept."""
import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from mspr_ros.model.chunked_attention import MemoryEfficientAttention
from mspr_ros.model.inference import FewQueryCrossAttention, fold_batch_norms, inference_model
from mspr_ros.model.ms_transformer import build_model


def _model(config, seed=0):
    """Return a random model whose BatchNorms are far from the identity (folding must matter)."""
    torch.manual_seed(seed)
    model = build_model(config).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model


@pytest.fixture(params=['efficientnet_lite0', 'efficientnet_b0'])
def config(request, tiny_model_config):
    """Both trunks: timm's Lite0 (BatchNormAct2d, Conv2dSame) and torchvision's B0."""
    return replace(tiny_model_config, backbone=request.param, backbone_weights=None)


def test_the_rewritten_model_gives_the_models_outputs_for_a_batch_and_at_batch_one(config):
    model = _model(config)
    fast = inference_model(model)
    images = torch.randn(3, 3, 96, 96)
    with torch.inference_mode():
        for batch in (images, images[:1]):
            expected, actual = model(batch), fast(batch)
            for key in ('position', 'orientation', 'scene_log_probs'):
                torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-5)
            assert torch.equal(actual['scene'], expected['scene'])


def test_every_batch_norm_is_folded_and_the_decoder_attention_runs_without_copies(config):
    model = _model(config)
    fast = inference_model(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert not any(type(m) is nn.MultiheadAttention for m in fast.modules())
    assert all(isinstance(layer.cross_attn, MemoryEfficientAttention)
               for branch in (fast.transformer_t, fast.transformer_rot)
               for layer in branch.decoder.layers)
    convolutions = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convolutions and all(
        m.weight.is_contiguous(memory_format=torch.channels_last) for m in convolutions)
    assert not any(p.requires_grad for p in fast.parameters())


def test_the_original_model_is_untouched_and_still_trains(config):
    """The rewrite is a copy: training, export and checkpoints never see it."""
    model = _model(config)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    inference_model(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(type(m) is nn.MultiheadAttention for m in model.modules())
    model.train()
    outputs = model(torch.randn(2, 3, 96, 96))
    (outputs['position'].sum() + outputs['orientation'].sum()).backward()
    assert model.regressor_head_t[0].weight.grad is not None


def test_folding_needs_running_statistics():
    trunk = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match='eval mode'):
        fold_batch_norms(trunk)
    assert fold_batch_norms(trunk.eval()) == 1
    assert isinstance(trunk[1], nn.Identity)


def _attention_pair(d_model=32, heads=4, seed=0):
    """Return a plain nn.MultiheadAttention with non-zero biases and its FewQuery copy."""
    torch.manual_seed(seed)
    plain = nn.MultiheadAttention(d_model, heads, dropout=0.1).eval()
    with torch.no_grad():
        plain.in_proj_bias.uniform_(-0.5, 0.5)
        plain.out_proj.bias.uniform_(-0.5, 0.5)
    few = copy.deepcopy(plain)
    few.__class__ = FewQueryCrossAttention
    return plain, few


@pytest.mark.parametrize('batch', [1, 2])
def test_cross_attention_of_few_queries_equals_the_projected_tokens(batch):
    plain, few = _attention_pair()
    queries = torch.randn(3, batch, 32)
    tokens = torch.randn(50, batch, 32)
    keys = tokens + torch.randn(50, batch, 32)  # positions added to keys only, as the decoder
    assert few.reassociates(queries.shape[0])  # 3 queries x 4 heads < 32: the cheaper order
    with torch.inference_mode():
        expected = plain(queries, keys, tokens, need_weights=False)[0]
        actual, weights = few(queries, keys, tokens, need_weights=False)
    assert weights is None
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_many_queries_or_training_take_the_projected_order():
    plain, few = _attention_pair()
    assert not few.reassociates(8)  # 8 x 4 heads = 32: projecting the tokens is no dearer
    queries, tokens = torch.randn(8, 1, 32), torch.randn(20, 1, 32)
    with torch.inference_mode():
        torch.testing.assert_close(few(queries, tokens, tokens, need_weights=False)[0],
                                   plain(queries, tokens, tokens, need_weights=False)[0])
    few.train()
    assert not few.reassociates(3)


def test_every_decoder_cross_attention_runs_with_few_queries(config):
    fast = inference_model(_model(config))
    layers = [layer for branch in (fast.transformer_t, fast.transformer_rot)
              for layer in branch.decoder.layers]
    assert layers and all(isinstance(layer.cross_attn, FewQueryCrossAttention)
                          and layer.cross_attn.reassociates(config.num_scenes)
                          for layer in layers)
    # Self-attention (encoder and among the queries) keeps the projected order.
    assert not any(isinstance(layer.self_attn, FewQueryCrossAttention) for layer in layers)
