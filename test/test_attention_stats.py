"""Tests of the encoder attention diagnostics against brute-force definitions."""
import csv
import json
import math

import numpy as np
import pytest
import torch

from mspr_ros.model.attention_stats import (attention_entropy, collect_attention_stats,
                                            encoder_head_stats, query_purity)
from mspr_ros.model.config import ModelConfig
from mspr_ros.model.ms_transformer import build_model
from mspr_training.config import load_config
from mspr_training.train import train


def small_model():
    """Return a seeded tiny model with two position and one orientation encoder layers."""
    torch.manual_seed(0)
    cfg = ModelConfig(num_scenes=2, backbone='efficientnet_lite0', backbone_weights=None,
                      hidden_dim=16, nheads=2, dim_feedforward=16, enc_layers_t=2,
                      dec_layers_t=1, enc_layers_rot=1, dec_layers_rot=1, head_hidden=8)
    return build_model(cfg)


def brute_force_purity(queries: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """Purity of each query of one head by explicit sorting (queries, keys: N x hd)."""
    pooled = np.concatenate([queries, keys])
    purity = []
    for i, query in enumerate(queries):
        distances = np.linalg.norm(pooled - query, axis=1)
        distances[i] = np.inf
        nearest = np.argsort(distances, kind='stable')[:k]
        purity.append(np.mean(nearest < len(queries)))
    return np.array(purity)


def test_entropy_and_purity_match_brute_force():
    """Both primitives agree with direct numpy implementations on random data."""
    generator = torch.Generator().manual_seed(1)
    queries = torch.randn(2, 3, 20, 4, generator=generator, dtype=torch.float64)
    keys = torch.randn(2, 3, 20, 4, generator=generator, dtype=torch.float64) + 0.7
    entropy = attention_entropy(queries, keys)
    purity = query_purity(queries, keys, neighbours=5)
    for b in range(2):
        for h in range(3):
            q, k = queries[b, h].numpy(), keys[b, h].numpy()
            scores = q @ k.T / math.sqrt(4)
            attention = np.exp(scores - scores.max(axis=1, keepdims=True))
            attention /= attention.sum(axis=1, keepdims=True)
            expected = -(attention * np.log(attention)).sum() / 20
            assert entropy[b, h].item() == pytest.approx(expected, rel=1e-9)
            np.testing.assert_array_equal(purity[b, h].numpy(), brute_force_purity(q, k, 5))


def test_purity_extremes():
    """Far-apart regions give purity 1; identical queries and keys give at most one half."""
    queries = torch.randn(1, 1, 30, 8)
    assert query_purity(queries, queries + 100.0, 10).min().item() == 1.0
    identical = query_purity(queries, queries.clone(), 10)
    # Each query's own key is at distance 0; the other 9 neighbours come in (q, k) ties.
    assert 0.4 <= identical.min().item() and identical.max().item() <= 0.5


def test_uniform_attention_has_maximal_entropy_and_zero_distance():
    """Zero query/key projections make attention uniform: entropy log N, distance 0."""
    model = small_model()
    with torch.no_grad():
        for branch in (model.transformer_t, model.transformer_rot):
            for layer in branch.encoder.layers:
                layer.self_attn.in_proj_weight[:32].zero_()
                layer.self_attn.in_proj_bias[:32].zero_()
    stats = collect_attention_stats(model, torch.randn(2, 3, 64, 64), neighbours=3)
    tokens = {'position': 4 * 4, 'orientation': 8 * 8}
    for branch, layers in (('position', stats.position), ('orientation', stats.orientation)):
        for layer in layers:
            assert layer.entropy == pytest.approx(math.log(tokens[branch]), rel=1e-5)
            assert layer.centroid_distance == pytest.approx(0.0, abs=1e-6)


def test_collect_matches_qka_and_leaves_no_hooks():
    """Mean per-layer centroid distance equals the model's QKA; hooks and mode are restored."""
    model = small_model()
    model.train()
    images = torch.randn(3, 3, 64, 64)
    stats = collect_attention_stats(model, images, neighbours=4)
    assert model.training
    for branch in (model.transformer_t, model.transformer_rot):
        assert all(not layer.self_attn._forward_pre_hooks for layer in branch.encoder.layers)
    assert [len(stats.position), len(stats.orientation)] == [2, 1]
    model.eval()
    with torch.no_grad():
        out = model(images, need_qka=True)
    position_distance = np.mean([layer.centroid_distance for layer in stats.position])
    assert position_distance == pytest.approx(out['qka_t'].item(), rel=1e-5)
    rot_distance = stats.orientation[0].centroid_distance
    assert rot_distance == pytest.approx(out['qka_rot'].item(), rel=1e-5)
    layer = stats.orientation[0]
    assert sum(layer.purity_histogram) == 3 * 2 * 64  # images x heads x queries
    assert len(layer.purity_bin_edges) == len(layer.purity_histogram) + 1 == 6
    assert 0.0 <= layer.purity_mean <= 1.0
    assert json.loads(json.dumps(stats.to_dict()))['neighbours'] == 4


def test_head_stats_work_for_the_baseline_and_match_the_layer_stats():
    """Per-head diagnostics of a learned-PE model (λ = 0) average to the per-layer ones."""
    torch.manual_seed(0)
    cfg = ModelConfig(num_scenes=2, backbone='efficientnet_lite0', backbone_weights=None,
                      hidden_dim=16, nheads=2, dim_feedforward=16, enc_layers_t=2,
                      dec_layers_t=1, enc_layers_rot=1, dec_layers_rot=1, head_hidden=8,
                      position_encoding='learned')
    model = build_model(cfg)
    images = torch.randn(3, 3, 64, 64)
    stats = encoder_head_stats(model, lambda: model(images))
    layers = collect_attention_stats(model, images, neighbours=3)
    for branch, reference in (('position', layers.position),
                              ('orientation', layers.orientation)):
        heads = stats[branch]
        assert np.array(heads.centroid_distance).shape == (len(reference), 2)
        for per_head_distance, per_head_entropy, layer in zip(
                heads.centroid_distance, heads.entropy, reference):
            assert np.mean(per_head_distance) == pytest.approx(layer.centroid_distance,
                                                               rel=1e-5)
            assert np.mean(per_head_entropy) == pytest.approx(layer.entropy, rel=1e-5)
    for branch in (model.transformer_t, model.transformer_rot):
        assert all(not layer.self_attn._forward_pre_hooks for layer in branch.encoder.layers)


def test_measuring_gives_every_module_its_own_mode_back():
    """A fine-tune's frozen branch stays in eval and the trained head in train after a measure."""
    model = small_model()
    model.train()
    model.transformer_t.eval()
    encoder_head_stats(model, lambda: model(torch.randn(1, 3, 64, 64)))
    collect_attention_stats(model, torch.randn(1, 3, 64, 64), neighbours=3)
    assert all(not m.training for m in model.transformer_t.modules())
    assert model.regressor_head_t.training and model.transformer_rot.training


def test_training_logs_collapse_diagnostics_for_the_baseline(tiny_world, tmp_path,
                                                             isolated_torch):
    """A λ = 0 run writes per-layer, per-head centroid distance and entropy at the log interval."""
    cfg = load_config('tiny_test', ['loss.lambda_aux=0.0', 'model.position_encoding=learned',
                                    'schedule.epochs=1', 'logging.every_iters=2'])
    result = train(cfg, tmp_path / 'run', tiny_world)
    with (tmp_path / 'run' / 'attention_log.csv').open(newline='') as stream:
        rows = list(csv.DictReader(stream))
    steps = sorted({int(row['step']) for row in rows})
    assert steps == list(range(2, result.global_step + 1, 2))
    heads = {(row['branch'], row['layer'], row['head']) for row in rows}
    assert heads == {(branch, '1', str(h)) for branch in ('position', 'orientation')
                     for h in range(1, 5)}
    assert all(float(row['centroid_distance']) >= 0 and float(row['entropy']) > 0
               for row in rows)
