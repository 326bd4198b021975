"""Pre-norm DETR-style encoder-decoder with learned scene queries (one per branch).

Layout is sequence-first: tokens ``N x B x d``, scene queries ``S x B x d``. Positional encodings
are added to attention queries and keys only, at every layer (docs/paper.md section 1.4).
The encoder can also return the Query-Key Alignment (QKA) distance of docs/paper.md section 3.1.

Encoder self-attention is :class:`mspr_ros.model.chunked_attention.MemoryEfficientAttention`: the
same parameters, state-dict keys and math as ``nn.MultiheadAttention``, without the ``B*H x N x N``
tensors of the plain formulation (157 MB each for the orientation branch at batch 8).
"""
import torch
from torch import nn
import torch.nn.functional as F

from mspr_ros.model.chunked_attention import MemoryEfficientAttention


def _feed_forward(d_model: int, dim_feedforward: int, dropout: float) -> nn.Sequential:
    """Return Linear -> GELU -> Dropout -> Linear (the residual dropout lives in the layer)."""
    return nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(dim_feedforward, d_model))


class EncoderLayer(nn.Module):
    """Pre-norm self-attention layer: ``x + MHA(LN1(x)+pe, LN1(x)+pe, LN1(x))``, then FFN."""

    def __init__(self, d_model: int, nheads: int, dim_feedforward: int, dropout: float) -> None:
        """Create the layer; ``d_model`` must be divisible by ``nheads``."""
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = MemoryEfficientAttention(d_model, nheads, dropout=dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.feed_forward = _feed_forward(d_model, dim_feedforward, dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor,
                need_qka: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the layer.

        Args:
            src: tokens ``N x B x d``.
            pos: positional encoding ``N x B x d`` (added to queries and keys).
            need_qka: also return the per-image, per-head QKA distance.

        Returns:
            ``(out N x B x d, qka B x H or None)``.
        """
        normed = self.norm1(src)
        query_key = normed + pos
        # Positional arguments on purpose: attention_stats hooks read (query, key, value).
        attended = self.self_attn(query_key, query_key, normed, need_weights=False)[0]
        src = src + self.dropout1(attended)
        src = src + self.dropout2(self.feed_forward(self.norm2(src)))
        qka = self.query_key_centroid_distance(query_key) if need_qka else None
        return src, qka

    def query_key_centroid_distance(self, query_key: torch.Tensor) -> torch.Tensor:
        """Return ``|| mean_tokens(Q) - mean_tokens(K) ||_2`` per image and head, ``B x H``.

        ``query_key`` is the attention input ``N x B x d``. Q and K are its in-projections with
        bias, before the 1/sqrt(head_dim) scaling. The projection is affine, so projecting the
        token mean equals the mean of the projections: only ``B x d`` values are projected.
        """
        attn = self.self_attn
        d_model = attn.embed_dim
        token_mean = query_key.mean(dim=0)  # B x d
        weight, bias = attn.in_proj_weight, attn.in_proj_bias
        q_mean = F.linear(token_mean, weight[:d_model], bias[:d_model])
        k_mean = F.linear(token_mean, weight[d_model:2 * d_model], bias[d_model:2 * d_model])
        diff = (q_mean - k_mean).view(token_mean.shape[0], attn.num_heads, attn.head_dim)
        return diff.norm(dim=-1)


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: query self-attention, cross-attention to memory, FFN."""

    def __init__(self, d_model: int, nheads: int, dim_feedforward: int, dropout: float) -> None:
        """Create the layer; ``d_model`` must be divisible by ``nheads``."""
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.cross_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)
        self.feed_forward = _feed_forward(d_model, dim_feedforward, dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                query_pos: torch.Tensor) -> torch.Tensor:
        """Run the layer.

        Args:
            tgt: query states ``S x B x d``.
            memory: encoder output ``N x B x d``.
            pos: positional encoding of the memory ``N x B x d`` (added to keys).
            query_pos: scene query embeddings ``S x B x d`` (added to queries and keys).

        Returns:
            Updated query states ``S x B x d``.
        """
        normed = self.norm1(tgt)
        query_key = normed + query_pos
        tgt = tgt + self.dropout1(self.self_attn(query_key, query_key, normed,
                                                 need_weights=False)[0])
        normed = self.norm2(tgt)
        tgt = tgt + self.dropout2(self.cross_attn(normed + query_pos, memory + pos, memory,
                                                  need_weights=False)[0])
        return tgt + self.dropout3(self.feed_forward(self.norm3(tgt)))


class TransformerEncoder(nn.Module):
    """Stack of :class:`EncoderLayer` followed by a final LayerNorm."""

    def __init__(self, num_layers: int, d_model: int, nheads: int, dim_feedforward: int,
                 dropout: float) -> None:
        """Create ``num_layers`` layers."""
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, nheads, dim_feedforward, dropout)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, src: torch.Tensor, pos: torch.Tensor,
                need_qka: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode ``src`` ``N x B x d``; return ``(memory N x B x d, QKA scalar or None)``.

        The QKA loss is the mean over layers, images and heads of the per-layer distances.
        """
        distances = []
        for layer in self.layers:
            src, qka = layer(src, pos, need_qka)
            if qka is not None:
                distances.append(qka)
        qka_loss = torch.stack(distances).mean() if need_qka else None
        return self.norm(src), qka_loss


class TransformerDecoder(nn.Module):
    """Stack of :class:`DecoderLayer` followed by a final LayerNorm."""

    def __init__(self, num_layers: int, d_model: int, nheads: int, dim_feedforward: int,
                 dropout: float) -> None:
        """Create ``num_layers`` layers."""
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(d_model, nheads, dim_feedforward, dropout)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                query_pos: torch.Tensor) -> torch.Tensor:
        """Decode; shapes as in :meth:`DecoderLayer.forward`, returns ``S x B x d``."""
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos)
        return self.norm(tgt)


class SceneTransformer(nn.Module):
    """One branch: encoder over image tokens, decoder over S learned scene queries."""

    def __init__(self, num_scenes: int, d_model: int, nheads: int, dim_feedforward: int,
                 dropout: float, enc_layers: int, dec_layers: int) -> None:
        """Create the branch; xavier-uniform init of every encoder/decoder matrix."""
        super().__init__()
        self.encoder = TransformerEncoder(enc_layers, d_model, nheads, dim_feedforward, dropout)
        self.decoder = TransformerDecoder(dec_layers, d_model, nheads, dim_feedforward, dropout)
        # Scene queries keep nn.Embedding's N(0, 1) init, as in the reference models.
        self.scene_queries = nn.Embedding(num_scenes, d_model)
        for param in [*self.encoder.parameters(), *self.decoder.parameters()]:
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)

    def forward(self, src: torch.Tensor, pos: torch.Tensor,
                need_qka: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the branch.

        Args:
            src: projected feature map ``B x d x H x W``.
            pos: positional encoding ``B x d x H x W``.
            need_qka: also return the encoder QKA loss.

        Returns:
            ``(scene latents B x S x d, QKA scalar or None)``.
        """
        batch = src.shape[0]
        tokens = src.flatten(2).permute(2, 0, 1)  # N x B x d
        pos_tokens = pos.flatten(2).permute(2, 0, 1)
        memory, qka = self.encoder(tokens, pos_tokens, need_qka)
        query_pos = self.scene_queries.weight.unsqueeze(1).expand(-1, batch, -1)  # S x B x d
        tgt = torch.zeros_like(query_pos)
        decoded = self.decoder(tgt, memory, pos_tokens, query_pos)
        return decoded.transpose(0, 1), qka
