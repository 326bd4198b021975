"""The model rewritten for inference: the same outputs, to rounding, in less time (issue 27).

A profile of the paper-size model's batch-1 forward on the CPU (benchmarks/README.md, "Torch
eager at batch 1") spent its time in the linear layers and attention kernels, which are already
the libraries' best, and in work around them that inference does not need:

- **BatchNorm.** Every convolution of the EfficientNet trunk is followed by a BatchNorm that, in
  eval mode, is a fixed per-channel affine map: it is folded into the convolution's weights and
  bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``), one pass over each feature map fewer. A
  BatchNorm that carries its activation (timm's ``BatchNormAct2d`` of the Lite0 trunk) leaves the
  activation in its place.
- **Copies in the decoder's attention.** ``nn.MultiheadAttention`` on sequence-first inputs takes
  PyTorch's general path, which copies each projection into a head-major layout before the
  attention kernel and back after it. The decoder's attention modules run as
  :class:`~mspr_ros.model.chunked_attention.MemoryEfficientAttention` (a subclass with the same
  parameters and math, whose inference path hands strided views to
  ``scaled_dot_product_attention``).
- **Memory format.** The convolutions' weights are stored channels-last (NHWC), so oneDNN (and
  cuDNN) run the trunk in that layout without reordering each map, and a projected map read as
  tokens (``flatten(2).permute(2, 0, 1)``) is already token-major.

Each change is kept only as far as it is measured to help (``benchmarks/torch_latency.py``
times this model against the unchanged one side by side). The rewritten model is a copy, in eval
mode and without gradients: the original, its parameters and its state dict are untouched, so
training, export and checkpoints never see it.
"""
import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from mspr_ros.model.chunked_attention import MemoryEfficientAttention


# Convolutions whose forward is the plain convolution with their weight and bias (timm's
# Conv2dSame pads the input first, which the fold does not touch); a subclass that transforms its
# weight (timm's weight-standardised convolutions) must not be folded.
_FOLDABLE_CONVOLUTIONS = ('Conv2d', 'Conv2dSame')


def _without_batch_norm(batch_norm: nn.BatchNorm2d) -> nn.Module:
    """Return what stays of a folded BatchNorm: nothing, or the activation it carries."""
    if type(batch_norm) is nn.BatchNorm2d:
        return nn.Identity()
    # timm's BatchNormAct2d: batch norm, then its dropout and activation.
    return nn.Sequential(batch_norm.drop, batch_norm.act)


def _foldable(batch_norm: nn.Module) -> bool:
    """Return whether a module is a BatchNorm2d this module knows how to remove."""
    if not isinstance(batch_norm, nn.BatchNorm2d) or not batch_norm.track_running_stats:
        return False
    return type(batch_norm) is nn.BatchNorm2d or (
        hasattr(batch_norm, 'act') and hasattr(batch_norm, 'drop'))


def fold_batch_norms(module: nn.Module) -> int:
    """Fold each BatchNorm2d into the convolution run right before it, in place; return how many.

    A convolution and a BatchNorm are paired when they are consecutive children of one parent
    (``nn.Sequential`` blocks, and the attribute order of torchvision's and timm's EfficientNet
    blocks, which is their order of execution). The module must be in eval mode: the folded
    weights use the running statistics.
    """
    if module.training:
        raise ValueError('fold_batch_norms needs a module in eval mode (running statistics)')
    folded = 0
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (norm_name, norm) in zip(children, children[1:]):
            if (isinstance(conv, nn.Conv2d) and type(conv).__name__ in _FOLDABLE_CONVOLUTIONS
                    and _foldable(norm) and norm.num_features == conv.out_channels):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, norm))
                setattr(parent, norm_name, _without_batch_norm(norm))
                folded += 1
    return folded


def use_memory_efficient_attention(module: nn.Module) -> int:
    """Run every plain ``nn.MultiheadAttention`` of ``module`` as MemoryEfficientAttention.

    The subclass holds the same parameters under the same names; only its forward differs.
    Returns how many modules changed.
    """
    changed = 0
    for child in module.modules():
        if type(child) is nn.MultiheadAttention and not child.batch_first \
                and child._qkv_same_embed_dim:
            child.__class__ = MemoryEfficientAttention
            changed += 1
    return changed


def inference_model(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy of ``model`` rewritten for inference (see the module docstring).

    Its outputs equal the model's in eval mode to float rounding; it holds no gradients.
    """
    fast = copy.deepcopy(model).eval().requires_grad_(False)
    fold_batch_norms(fast)
    use_memory_efficient_attention(fast)
    return fast.to(memory_format=torch.channels_last)
