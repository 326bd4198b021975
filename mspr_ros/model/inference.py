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
- **Keys and values of the decoder's cross-attention.** A handful of scene queries attend to
  the image's N tokens, and each layer projected all N tokens to keys and values (``2 N d^2``
  multiply-adds per layer: 103 M for the paper model's 784 orientation tokens, where its queries
  need 5 M). :class:`FewQueryCrossAttention` moves the key projection onto the queries
  (``q . W_k t = (W_k^T q) . t``; the key bias adds one constant to every score of a query, which
  the softmax removes) and applies the value projection after the attention-weighted sum of the
  tokens (the weights sum to one, so the value bias passes through unchanged). Taken only while
  queries x heads is below the model width, where it is the cheaper order.
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
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from mspr_ros.model.chunked_attention import MemoryEfficientAttention
from mspr_ros.model.transformer import DecoderLayer


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


class FewQueryCrossAttention(MemoryEfficientAttention):
    """Cross-attention of few queries to many tokens, without projecting the tokens.

    Same parameters and, to float rounding, the same outputs as the module it replaces, in eval
    mode; in training, or with as many queries x heads as the model is wide, it runs the
    parent's forward. See the module docstring for the algebra.
    """

    def reassociates(self, queries: int) -> bool:
        """Return whether ``queries`` queries take this class's order (eval, fewer than width)."""
        return not self.training and queries * self.num_heads < self.embed_dim

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                average_attn_weights: bool = True, is_causal: bool = False):
        """Return ``(output S x B x d, None)`` for queries ``S x B x d``, tokens ``N x B x d``."""
        queries, batch, d_model = query.shape
        heads, head_dim = self.num_heads, self.head_dim
        if (not self.reassociates(queries) or need_weights or key_padding_mask is not None
                or attn_mask is not None or is_causal):
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                   average_attn_weights, is_causal)
        weight, bias = self.in_proj_weight, self.in_proj_bias
        q = F.linear(query, weight[:d_model], bias[:d_model]) * head_dim ** -0.5
        w_key = weight[d_model:2 * d_model].view(heads, head_dim, d_model)
        w_value = weight[2 * d_model:].view(heads, head_dim, d_model)
        # Each query and head as a vector in token space: B x H*S x d.
        probe = torch.einsum('sbhe,hed->bhsd', q.view(queries, batch, heads, head_dim), w_key)
        scores = torch.matmul(probe.reshape(batch, heads * queries, d_model),
                              key.permute(1, 2, 0))  # B x H*S x N
        mixed = torch.matmul(torch.softmax(scores, dim=-1), value.transpose(0, 1))
        attended = torch.einsum('bhsd,hed->sbhe', mixed.view(batch, heads, queries, d_model),
                                w_value)
        attended = attended.reshape(queries, batch, d_model) + bias[2 * d_model:]
        return self.out_proj(attended), None


def use_few_query_cross_attention(module: nn.Module) -> int:
    """Run the cross-attention of every decoder layer as FewQueryCrossAttention; return how many.

    Decoder attention modules must already be MemoryEfficientAttention (or plain sequence-first
    ``nn.MultiheadAttention`` with one in-projection); the class changes, the parameters stay.
    """
    changed = 0
    for layer in module.modules():
        if not isinstance(layer, DecoderLayer):
            continue
        attention = layer.cross_attn
        if isinstance(attention, nn.MultiheadAttention) and not attention.batch_first \
                and attention._qkv_same_embed_dim:
            attention.__class__ = FewQueryCrossAttention
            changed += 1
    return changed


def inference_model(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy of ``model`` rewritten for inference (see the module docstring).

    Its outputs equal the model's in eval mode to float rounding; it holds no gradients.
    """
    fast = copy.deepcopy(model).eval().requires_grad_(False)
    fold_batch_norms(fast)
    use_memory_efficient_attention(fast)
    use_few_query_cross_attention(fast)
    return fast.to(memory_format=torch.channels_last)
