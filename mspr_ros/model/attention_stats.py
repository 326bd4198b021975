"""Encoder self-attention diagnostics of the NeurIPS 2024 analysis (docs/paper.md section 3.4).

Per branch and encoder layer:
- attention entropy ``E = -(1/N) sum_i sum_j A_ij log A_ij`` averaged over heads and images;
- query/key centroid distance ``|| mean_i q_i - mean_j k_j ||`` (the QKA quantity);
- query-region purity: per image, layer and head, pool the N queries and N keys; for each
  query take its k nearest neighbours (Euclidean, itself excluded) in the pooled set and
  count the fraction that are queries. Reported as the mean and a histogram.

Hooks are registered only inside :func:`collect_attention_stats` and :func:`encoder_head_stats`
(the cheap per-head variant the trainer logs for every model, QKA or not); a model costs nothing
extra otherwise. Both measure in eval mode without gradients and give every module its own
train/eval flag back afterwards (a fine-tune keeps its frozen branches in eval mode).
"""
from contextlib import contextmanager
from dataclasses import asdict, dataclass
import math
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from mspr_ros.model.ms_transformer import MSTransformer

DEFAULT_NEIGHBOURS = 10


@dataclass
class LayerAttentionStats:
    """Diagnostics of one encoder layer (averaged over images and heads).

    ``purity_histogram[i]`` counts queries whose purity falls in
    ``[purity_bin_edges[i], purity_bin_edges[i + 1])``; each possible value m/k has its own bin.
    """

    entropy: float
    centroid_distance: float
    purity_mean: float
    purity_histogram: list[int]
    purity_bin_edges: list[float]


@dataclass
class AttentionStats:
    """Per-layer diagnostics of the position (``t``) and orientation (``rot``) encoders."""

    position: list[LayerAttentionStats]
    orientation: list[LayerAttentionStats]
    neighbours: int

    def to_dict(self) -> dict:
        """Return a JSON-serialisable dict."""
        return asdict(self)


def project_queries_keys(attention: nn.MultiheadAttention,
                         query_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return per-head queries and keys ``B x H x N x head_dim`` of an ``N x B x d`` input.

    In-projection with bias, before the 1/sqrt(head_dim) scaling.
    """
    d_model, heads, head_dim = attention.embed_dim, attention.num_heads, attention.head_dim
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    tokens, batch = query_key.shape[:2]

    def split_heads(projected: torch.Tensor) -> torch.Tensor:
        return projected.reshape(tokens, batch, heads, head_dim).permute(1, 2, 0, 3)

    queries = nn.functional.linear(query_key, weight[:d_model], bias[:d_model])
    keys = nn.functional.linear(query_key, weight[d_model:2 * d_model],
                                bias[d_model:2 * d_model])
    return split_heads(queries), split_heads(keys)


def attention_entropy(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Return ``-(1/N) sum_ij A_ij log A_ij`` per image and head (``B x H``)."""
    scores = queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])
    log_attention = torch.log_softmax(scores, dim=-1)
    return -(log_attention.exp() * log_attention).sum(dim=-1).mean(dim=-1)


def query_purity(queries: torch.Tensor, keys: torch.Tensor, neighbours: int) -> torch.Tensor:
    """Return the purity of every query, ``B x H x N``.

    Purity = fraction of the ``neighbours`` nearest points of the pooled queries and keys
    (the query itself excluded) that are queries.
    """
    tokens = queries.shape[-2]
    if neighbours >= 2 * tokens:
        raise ValueError(f'{neighbours} neighbours need more than {2 * tokens - 1} other points')
    pooled = torch.cat([queries, keys], dim=-2)  # B x H x 2N x hd
    distances = torch.cdist(queries, pooled)  # B x H x N x 2N
    self_index = torch.arange(tokens, device=queries.device)
    distances[..., self_index, self_index] = math.inf
    nearest = distances.topk(neighbours, dim=-1, largest=False).indices
    return (nearest < tokens).to(queries.dtype).mean(dim=-1)


class _EncoderRecorder:
    """Collects per-layer statistics from forward pre-hooks on encoder self-attentions."""

    def __init__(self, neighbours: int) -> None:
        """Start empty; ``neighbours`` is the k of the purity."""
        self.neighbours = neighbours
        self.entropy: list[list[torch.Tensor]] = []
        self.centroid: list[list[torch.Tensor]] = []
        self.purity: list[list[torch.Tensor]] = []

    def hook(self, layer_index: int):
        """Return a pre-hook recording layer ``layer_index``'s (query, key) input."""
        while len(self.entropy) <= layer_index:
            self.entropy.append([])
            self.centroid.append([])
            self.purity.append([])

        def record(module: nn.MultiheadAttention, args: tuple) -> None:
            queries, keys = project_queries_keys(module, args[0])
            self.entropy[layer_index].append(attention_entropy(queries, keys).flatten())
            distance = (queries.mean(dim=-2) - keys.mean(dim=-2)).norm(dim=-1)
            self.centroid[layer_index].append(distance.flatten())
            self.purity[layer_index].append(
                query_purity(queries, keys, self.neighbours).flatten())
        return record

    def summarise(self) -> list[LayerAttentionStats]:
        """Average the recorded values per layer."""
        edges = np.linspace(-0.5, self.neighbours + 0.5, self.neighbours + 2) / self.neighbours
        layers = []
        for entropy, centroid, purity in zip(self.entropy, self.centroid, self.purity):
            purity_values = torch.cat(purity).cpu().numpy()
            histogram, _ = np.histogram(purity_values, bins=edges)
            layers.append(LayerAttentionStats(
                entropy=torch.cat(entropy).mean().item(),
                centroid_distance=torch.cat(centroid).mean().item(),
                purity_mean=float(purity_values.mean()),
                purity_histogram=histogram.tolist(),
                purity_bin_edges=edges.tolist()))
        return layers


@contextmanager
def measuring(model: nn.Module) -> Iterator[None]:
    """Run the block in eval mode without gradients; restore every module's own mode after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def _recording(model: MSTransformer, neighbours: int) -> Iterator[tuple[_EncoderRecorder, ...]]:
    """Register the pre-hooks for the duration of the block, then remove them."""
    recorders = (_EncoderRecorder(neighbours), _EncoderRecorder(neighbours))
    handles = []
    try:
        for recorder, branch in zip(recorders, (model.transformer_t, model.transformer_rot)):
            for index, layer in enumerate(branch.encoder.layers):
                handles.append(layer.self_attn.register_forward_pre_hook(recorder.hook(index)))
        yield recorders
    finally:
        for handle in handles:
            handle.remove()


def collect_attention_stats(model: MSTransformer, images: torch.Tensor,
                            neighbours: int = DEFAULT_NEIGHBOURS) -> AttentionStats:
    """Run ``model`` in eval mode on ``images`` (``B x 3 x H x W``) and return its diagnostics.

    Every module's train/eval mode is restored afterwards.
    """
    with _recording(model, neighbours) as (position, orientation), measuring(model):
        model(images)
    return AttentionStats(position=position.summarise(), orientation=orientation.summarise(),
                          neighbours=neighbours)


@dataclass
class HeadAttentionStats:
    """Per encoder layer and head of one branch, means over the images.

    Attributes:
        centroid_distance: layers x heads ``|| mean q - mean k ||`` (the QKA quantity).
        entropy: layers x heads attention entropy (nats).
    """

    centroid_distance: list[list[float]]
    entropy: list[list[float]]


class _HeadRecorder:
    """Per-layer, per-head centroid distance and entropy from encoder self-attention inputs."""

    def __init__(self) -> None:
        """Start empty."""
        self.distance: dict[int, torch.Tensor] = {}
        self.entropy: dict[int, torch.Tensor] = {}

    def hook(self, layer_index: int):
        """Return a pre-hook recording layer ``layer_index``."""
        def record(module: nn.MultiheadAttention, args: tuple) -> None:
            queries, keys = project_queries_keys(module, args[0])
            self.distance[layer_index] = (queries.mean(dim=-2) - keys.mean(dim=-2)).norm(
                dim=-1).mean(dim=0)
            self.entropy[layer_index] = attention_entropy(queries, keys).mean(dim=0)
        return record

    def summarise(self) -> HeadAttentionStats:
        """Return the recorded layers in order."""
        layers = sorted(self.distance)
        return HeadAttentionStats(
            centroid_distance=[self.distance[i].tolist() for i in layers],
            entropy=[self.entropy[i].tolist() for i in layers])


def encoder_head_stats(model: MSTransformer, forward: Callable[[], Any]
                       ) -> dict[str, HeadAttentionStats]:
    """Return per-layer, per-head diagnostics of both encoders while ``forward()`` runs.

    ``forward`` runs ``model`` once (on images or cached maps); it runs in eval mode without
    gradients, and every module's mode is restored after. Returns ``{'position': ...,
    'orientation': ...}``. Works for any model, trained with the QKA loss or not: the
    baseline's collapse shows up as a large centroid distance and a low entropy.
    """
    recorders = {'position': _HeadRecorder(), 'orientation': _HeadRecorder()}
    handles = []
    try:
        for recorder, branch in zip(recorders.values(),
                                    (model.transformer_t, model.transformer_rot)):
            for index, layer in enumerate(branch.encoder.layers):
                handles.append(layer.self_attn.register_forward_pre_hook(recorder.hook(index)))
        with measuring(model):
            forward()
    finally:
        for handle in handles:
            handle.remove()
    return {name: recorder.summarise() for name, recorder in recorders.items()}
