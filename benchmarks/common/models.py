"""The models the benchmarks time: sizes, configurations, parameter counts, seeded bundles."""
from dataclasses import replace
from pathlib import Path

import torch

from mspr_ros.bundle import save_bundle
from mspr_ros.model.config import ModelConfig
from mspr_ros.model.ms_transformer import build_model
from mspr_training.config import load_config

SCENE_NAMES = ('atrium', 'corridor', 'lab')
MODEL_SIZES = ('tiny', 'demo', 'paper')


def model_config(size: str, num_scenes: int = len(SCENE_NAMES)) -> ModelConfig:
    """Return the model configuration of a benchmark size.

    - 'tiny': the test suite's model (Lite0 ImageNet trunk, d=32, 1+1 layers, maps pooled 2x).
    - 'demo': the model of the ``synth_demo`` training config (d=64, 2+2 layers, pooled 2x).
    - 'paper': the paper's transformer (d=256, 8 heads, 6+6 layers per branch, 224x224, no
      pooling) on the Lite0 ImageNet trunk (same stage widths as B0). B0's ImageNet weights
      are not available offline, and a randomly initialised B0 produces denormal activations
      that slow CPUs down ~10x, which trained weights do not (see benchmarks/model_speed.py).
    """
    if size == 'tiny':
        return ModelConfig(num_scenes=num_scenes, backbone='efficientnet_lite0',
                           backbone_weights='imagenet', hidden_dim=32, nheads=4,
                           dim_feedforward=32, enc_layers_t=1, dec_layers_t=1,
                           enc_layers_rot=1, dec_layers_rot=1, feature_pool=2)
    if size == 'demo':
        return replace(load_config('synth_demo').model, num_scenes=num_scenes)
    if size == 'paper':
        return ModelConfig(num_scenes=num_scenes, backbone='efficientnet_lite0',
                           backbone_weights='imagenet')
    raise ValueError(f'unknown model size {size!r}; choose from {MODEL_SIZES}')


def parameter_count(model: torch.nn.Module) -> int:
    """Return the number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def save_random_bundle(path: Path, cfg: ModelConfig, seed: int = 0) -> tuple:
    """Save a seeded model of ``cfg`` (random heads) as a bundle; return (path, parameters).

    Timing does not depend on the head weights; the backbone keeps its ImageNet weights.
    """
    torch.manual_seed(seed)
    model = build_model(cfg)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_bundle(path, model, cfg, list(SCENE_NAMES)[:cfg.num_scenes],
                provenance={'source': 'benchmarks/common/models.py random heads for timing'})
    return path, parameter_count(model)
