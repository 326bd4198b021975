"""Tests of ModelConfig and MSTransformer: sizes, gradients, scene selection, feature split."""
import pytest
import torch
import torchvision

from mspr_ros.model.config import ModelConfig
from mspr_ros.model.ms_transformer import build_model

IMAGE_SIZE = 64


def small_config(**overrides) -> ModelConfig:
    """Return a tiny random-init config (no weight files read)."""
    values = dict(num_scenes=3, backbone='efficientnet_lite0', backbone_weights=None,
                  hidden_dim=16, nheads=2, dim_feedforward=16, enc_layers_t=1, dec_layers_t=1,
                  enc_layers_rot=2, dec_layers_rot=1, head_hidden=8)
    values.update(overrides)
    return ModelConfig(**values)


def count(module: torch.nn.Module) -> int:
    """Return the number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_follow_the_paper_arithmetic():
    """Per-piece sizes of the paper config equal the layer arithmetic of paper.md 1.7."""
    d, ff, hidden, scenes = 256, 256, 1024, 7
    mha = (3 * d * d + 3 * d) + (d * d + d)  # packed in-projection + out-projection
    ffn = (d * ff + ff) + (ff * d + d)
    layer_norm = 2 * d
    encoder_layer = mha + ffn + 2 * layer_norm
    decoder_layer = 2 * mha + ffn + 3 * layer_norm
    transformer = 6 * encoder_layer + 6 * decoder_layer + 2 * layer_norm
    heads = (d * hidden + hidden + hidden * 3 + 3) + (d * hidden + hidden + hidden * 4 + 4)
    projections = (112 * d + d) + (40 * d + d)
    # The arithmetic reproduces the figures printed in paper.md section 1.7.
    assert (encoder_layer, decoder_layer, transformer, heads, projections) == (
        395_776, 659_456, 6_332_416, 533_511, 39_424)

    with torch.device('meta'):
        model = build_model(ModelConfig(num_scenes=scenes, backbone_weights=None))
    branch = model.transformer_t
    assert count(branch.encoder.layers[0]) == encoder_layer
    assert count(branch.decoder.layers[0]) == decoder_layer
    for branch in (model.transformer_t, model.transformer_rot):
        assert count(branch.encoder) + count(branch.decoder) == transformer
        assert count(branch.scene_queries) == scenes * d
    assert count(model.regressor_head_t) + count(model.regressor_head_rot) == heads
    assert count(model.input_proj_t) + count(model.input_proj_rot) == projections
    assert count(model.position_encoding) == 0
    assert count(model.scene_embed) == 2 * d + 1

    # paper.md's whole-model total (17,249,412 without the classifier) minus the B0 layers
    # after the 112-channel stage, which our truncated backbone never builds.
    full_b0 = torchvision.models.efficientnet_b0(weights=None)
    unused_b0 = sum(count(full_b0.features[i]) for i in range(6, 9))
    assert count(model) == 17_249_412 - unused_b0


def test_output_contract_and_qka_only_on_request():
    """Shapes and dtypes of the output dict; QKA keys exist only with need_qka=True."""
    torch.manual_seed(0)
    model = build_model(small_config()).eval()
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    out = model(images)
    assert set(out) == {'position', 'orientation', 'scene_log_probs', 'scene'}
    assert out['position'].shape == (2, 3) and out['orientation'].shape == (2, 4)
    assert out['scene_log_probs'].shape == (2, 3) and out['scene'].dtype == torch.long
    assert torch.allclose(out['scene_log_probs'].exp().sum(dim=1), torch.ones(2))
    out = model(images, need_qka=True)
    assert out['qka_t'].shape == () and out['qka_rot'].shape == ()
    assert out['qka_t'] > 0 and out['qka_rot'] > 0


def test_gradients_reach_every_trainable_parameter():
    """A loss summing every output (QKA included) gives every parameter a non-zero gradient.

    At initialisation all biases are zero and the decoder target is zero, so the first decoder
    layer's value path carries no signal; non-zero biases (any trained state) open it. The
    first decoder LayerNorm sees the all-zero target, so its weight never gets a gradient.
    """
    torch.manual_seed(0)
    model = build_model(small_config())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith('bias'):
                param.normal_(0.0, 0.1)
    # Eval mode: drop-path must not zero a whole block's gradient at random.
    model.eval()
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    out = model(images, scene=torch.tensor([0, 2]), need_qka=True)
    loss = sum(out[k].sum() for k in ('position', 'orientation', 'qka_t', 'qka_rot'))
    loss = loss + (out['scene_log_probs'] * torch.arange(1.0, 4.0)).sum()
    loss.backward()
    without = [name for name, p in model.named_parameters()
               if p.grad is None or not p.grad.abs().sum() > 0]
    # scene_embed's bias adds one constant to every scene's logit, which log_softmax removes: its
    # gradient is zero in exact arithmetic, and rounding leaves it zero or not by the CPU.
    assert [name for name in without if name != 'scene_embed.bias'] == [
        f'transformer_{b}.decoder.layers.0.norm1.weight' for b in ('t', 'rot')]


def test_ground_truth_scene_selects_the_row_and_default_is_argmax():
    """scene=None picks the argmax row; a given scene uses that scene's latents."""
    torch.manual_seed(1)
    model = build_model(small_config()).eval()
    images = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        predicted = model(images)
        per_scene = [model(images, scene=torch.full((4,), s, dtype=torch.long))
                     for s in range(3)]
    assert torch.equal(predicted['scene'], predicted['scene_log_probs'].argmax(dim=1))
    for s, out in enumerate(per_scene):
        assert torch.equal(out['scene'], torch.full((4,), s))
        assert torch.allclose(out['scene_log_probs'], predicted['scene_log_probs'])
    for b, s in enumerate(predicted['scene'].tolist()):
        assert torch.allclose(predicted['position'][b], per_scene[s]['position'][b])
        assert torch.allclose(predicted['orientation'][b], per_scene[s]['orientation'][b])
    # Different scene rows give different poses, so the selection is observable.
    assert not torch.allclose(per_scene[0]['position'], per_scene[1]['position'])


def test_bad_ground_truth_scene_is_rejected():
    """Out-of-range, wrongly shaped or float scene indices raise ValueError."""
    model = build_model(small_config()).eval()
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    for scene in (torch.tensor([0, 3]), torch.tensor([-1, 0]), torch.tensor([0]),
                  torch.tensor([0.0, 1.0])):
        with pytest.raises(ValueError, match='scene'):
            model(images, scene=scene)


def test_feature_split_equals_full_forward():
    """forward_from_features(forward_features(x)) reproduces forward(x)."""
    torch.manual_seed(2)
    model = build_model(small_config(feature_pool=2)).eval()
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        full = model(images, need_qka=True)
        feat_t, feat_rot = model.forward_features(images)
        split = model.forward_from_features(feat_t, feat_rot, need_qka=True)
    assert feat_t.shape == (2, 112, 4, 4) and feat_rot.shape == (2, 40, 8, 8)
    for key, value in full.items():
        assert torch.equal(value, split[key]), key


def test_frozen_backbone_has_no_gradients_and_stays_in_eval_mode():
    """freeze_backbone: no trainable backbone parameter, BatchNorm stays in eval mode."""
    model = build_model(small_config(freeze_backbone=True))
    model.train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert not any(m.training for m in model.backbone.modules())
    assert model.transformer_t.training and model.regressor_head_t.training
    assert all(p.requires_grad for n, p in model.named_parameters()
               if not n.startswith('backbone.'))
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model(images)  # a train-mode BatchNorm would update running statistics here
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())


def test_config_round_trip_and_validation():
    """to_dict/from_dict round trip; unknown keys and bad values raise clear errors."""
    cfg = small_config(position_encoding='learned', feature_pool=2)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match='unknown ModelConfig keys'):
        ModelConfig.from_dict({**cfg.to_dict(), 'nhead': 8})
    with pytest.raises(ValueError, match='num_scenes'):
        ModelConfig.from_dict({'backbone': 'efficientnet_b0'})
    bad_values = [dict(num_scenes=0), dict(backbone='resnet50'), dict(position_encoding='rope'),
                  dict(hidden_dim=30, nheads=3), dict(dropout=1.5), dict(feature_pool=True),
                  dict(backbone_weights='')]
    for overrides in bad_values:
        with pytest.raises(ValueError, match='ModelConfig'):
            small_config(**overrides)
