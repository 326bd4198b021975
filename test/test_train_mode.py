"""Train mode during the optimizer step: dropout and stochastic depth run where parts train.

Every shipped recipe is built as configured (random backbone weights, so no ImageNet file is
needed, and small images, so it stays fast) and one training step is taken with forward
pre-hooks recording ``module.training`` of every Dropout and stochastic-depth module as the
step runs them.
"""
from dataclasses import replace

import pytest
from timm.layers import DropPath
import torch
from torch import nn
from torchvision.ops import StochasticDepth

from mspr_ros.model.ms_transformer import build_model
from mspr_training.config import CONFIG_DIR, load_config
from mspr_training.engine import TrainStep
from mspr_training.train import build_criterion, freeze_parameters, set_train_mode

RECIPES = sorted(path.stem for path in CONFIG_DIR.glob('*.yaml'))
STOCHASTIC = (nn.Dropout, DropPath, StochasticDepth)
IMAGE_SIZE = 64


def recipe_step(name: str):
    """Return (config, model, step module, batch) of a shipped recipe, in its training mode."""
    cfg = load_config(name)
    torch.manual_seed(0)
    model = build_model(replace(cfg.model, backbone_weights='none'))
    freeze_parameters(model, cfg.freeze.trainable)
    criterion = build_criterion(cfg)
    step = TrainStep(model, criterion, need_qka=cfg.loss.lambda_aux > 0)
    set_train_mode(model, cfg.freeze.frozen_eval)
    criterion.train()
    generator = torch.Generator().manual_seed(1)
    batch = {'image': torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
             'position': torch.randn(2, 3, generator=generator),
             'orientation': torch.nn.functional.normalize(
                 torch.randn(2, 4, generator=generator), dim=1),
             'scene': torch.tensor([0, cfg.model.num_scenes - 1])}
    return cfg, model, step, batch


def trained_top_level(model: nn.Module) -> set[str]:
    """Return the top-level parts of ``model`` with at least one trainable parameter."""
    return {name.split('.')[0] for name, p in model.named_parameters() if p.requires_grad}


def record_modes(model: nn.Module) -> tuple[dict[str, list[bool]], list]:
    """Register pre-hooks storing ``training`` of every stochastic module each time it runs."""
    seen: dict[str, list[bool]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, STOCHASTIC):
            handles.append(module.register_forward_pre_hook(
                lambda m, _args, name=name: seen.setdefault(name, []).append(m.training)))
    return seen, handles


@pytest.mark.parametrize('name', RECIPES)
def test_dropout_runs_in_every_trained_part_during_the_step(name):
    """Inside the step, every Dropout/stochastic depth of a trained part is in train mode."""
    cfg, model, step, batch = recipe_step(name)
    seen, handles = record_modes(model)
    try:
        losses = step(batch)
        losses['loss'].backward()
    finally:
        for handle in handles:
            handle.remove()
    trained = trained_top_level(model)
    in_trained = {n: modes for n, modes in seen.items() if n.split('.')[0] in trained}
    off = sorted(n for n, modes in in_trained.items() if not all(modes))
    assert not off, f'{name}: dropout off during the step in trained parts: {off[:5]}'
    # The encoders' dropouts are among them whenever the transformers train (all but the
    # fine-tune, which trains the position head only: it has no dropout).
    if 'transformer_t' in trained:
        assert any(n.startswith('transformer_t.encoder') for n in in_trained)
        assert any(n.startswith('transformer_rot.encoder') for n in in_trained)
    if not cfg.model.freeze_backbone and 'backbone' in trained:
        assert any(n.startswith('backbone') for n in in_trained), 'no stochastic depth ran'


@pytest.mark.parametrize('name', [n for n in RECIPES if n != 'cambridge_finetune'])
def test_two_forward_passes_in_train_mode_differ(name):
    """Dropout makes two passes over the same batch differ; in eval mode they are equal.

    The attention-weight dropout inside ``nn.MultiheadAttention`` is switched off here: it
    belongs to a module with parameters and was never the problem, so only the Dropout and
    stochastic-depth modules can make the passes differ.
    """
    _, model, step, batch = recipe_step(name)
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            module.dropout = 0.0
    with torch.no_grad():
        first = model(batch['image'], scene=batch['scene'])['position']
        second = model(batch['image'], scene=batch['scene'])['position']
        assert not torch.equal(first, second), f'{name}: train-mode passes are identical'
        model.eval()
        assert torch.equal(model(batch['image'], scene=batch['scene'])['position'],
                           model(batch['image'], scene=batch['scene'])['position'])


def test_finetune_runs_its_frozen_branches_in_eval_mode():
    """The Cambridge fine-tune trains the position head; every other part stays in eval."""
    cfg, model, step, batch = recipe_step('cambridge_finetune')
    assert trained_top_level(model) == {'regressor_head_t'}
    seen, handles = record_modes(model)
    try:
        step(batch)['loss'].backward()
    finally:
        for handle in handles:
            handle.remove()
    assert seen and not any(any(modes) for modes in seen.values()), \
        'a dropout of a frozen branch ran in train mode'
    for name, module in model.named_modules():
        frozen_part = name and not name.startswith('regressor_head_t')
        has_parameters = next(module.parameters(), None) is not None
        if frozen_part and (isinstance(module, STOCHASTIC) or has_parameters):
            assert not module.training, f'{name} of a frozen branch is in train mode'
    assert model.regressor_head_t.training
    # Frozen BatchNorm statistics do not move during the step.
    assert all(not m.training for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d))


def test_frozen_backbone_keeps_its_batchnorm_in_eval_while_the_rest_trains():
    """The CPU recipe's frozen backbone is eval; its transformers' dropouts are on."""
    _, model, _, _ = recipe_step('synth_demo')
    assert not model.backbone.training
    assert all(not m.training for m in model.backbone.modules())
    assert model.transformer_t.training and model.transformer_rot.training
