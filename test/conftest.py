"""Shared fixtures: a tiny model configuration and a bundle saved from it.

Other packages' tests (node, training) rely on ``tiny_bundle_path``: keep names and semantics.
"""
from pathlib import Path

import pytest
import torch

from mspr_ros.bundle import save_bundle
from mspr_ros.model.config import ModelConfig
from mspr_ros.model.ms_transformer import build_model

TINY_SCENE_NAMES = ['atrium', 'corridor', 'lab']


@pytest.fixture(scope='session')
def tiny_model_config() -> ModelConfig:
    """Return a small, fast config: Lite0 ImageNet backbone, d=32, 1/1 layers, 3 scenes."""
    return ModelConfig(num_scenes=3, backbone='efficientnet_lite0', backbone_weights='imagenet',
                       hidden_dim=32, nheads=4, dim_feedforward=32, enc_layers_t=1,
                       dec_layers_t=1, enc_layers_rot=1, dec_layers_rot=1, feature_pool=2)


@pytest.fixture(scope='session')
def tiny_bundle_path(tiny_model_config: ModelConfig, tmp_path_factory) -> Path:
    """Save a seeded tiny model with scenes atrium, corridor, lab; return the bundle path."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config)
    path = tmp_path_factory.mktemp('bundle') / 'tiny.safetensors'
    return save_bundle(path, model, tiny_model_config, TINY_SCENE_NAMES,
                       provenance={'source': 'test/conftest.py tiny random heads'})
