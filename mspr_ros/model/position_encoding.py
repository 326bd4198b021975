"""2-D positional encodings added to attention queries and keys.

Both encodings map a feature map ``B x C x H x W`` to a positional map ``B x 2F x H x W`` with
``F = hidden_dim // 2`` channels per image axis. One module instance serves both branches.
"""
import torch
from torch import nn

from mspr_ros.model.config import ModelConfig

LEARNED_TABLE_SIZE = 50


class PositionEncodingSine(nn.Module):
    """Fixed sinusoidal encoding (DETR sine, unnormalised), as in the NeurIPS 2024 fix.

    Channel ``c < F`` encodes the row ``y = 1..H`` and channel ``F + c`` the column
    ``x = 1..W`` (y channels first). For axis channel ``i`` the frequency divisor is
    ``temperature ** (2 * (i // 2) / F)``; even channels hold ``sin``, odd ones ``cos``.
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0) -> None:
        """Create the encoding with ``num_pos_feats`` (even) channels per axis."""
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f'num_pos_feats must be even (sin/cos pairs), got {num_pos_feats}')
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        # The map depends only on (H, W), so it is computed once per shape/device/dtype.
        self._cache: dict[tuple, torch.Tensor] = {}

    def _build(self, height: int, width: int, device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
        """Return the ``2F x H x W`` map (float64 maths, cast to ``dtype``)."""
        feats = torch.arange(self.num_pos_feats, dtype=torch.float64, device=device)
        divisor = self.temperature ** (2 * torch.div(feats, 2, rounding_mode='floor')
                                       / self.num_pos_feats)
        even = (torch.arange(self.num_pos_feats, device=device) % 2 == 0)[:, None]

        def axis_encoding(length: int) -> torch.Tensor:
            angles = torch.arange(1, length + 1, dtype=torch.float64, device=device)
            angles = angles[None, :] / divisor[:, None]  # F x length
            return torch.where(even, angles.sin(), angles.cos())

        pe_y = axis_encoding(height)[:, :, None].expand(-1, -1, width)
        pe_x = axis_encoding(width)[:, None, :].expand(-1, height, -1)
        return torch.cat([pe_y, pe_x], dim=0).to(dtype).contiguous()

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Return the encoding ``B x 2F x H x W`` for a feature map ``B x C x H x W``."""
        batch, _, height, width = feature_map.shape
        key = (height, width, feature_map.device, feature_map.dtype)
        pe = self._cache.get(key)
        if pe is None:
            # A map created under inference_mode could not be reused by a later training step.
            with torch.inference_mode(False), torch.no_grad():
                pe = self._build(height, width, feature_map.device, feature_map.dtype)
            self._cache[key] = pe
        return pe.unsqueeze(0).expand(batch, -1, -1, -1)


class PositionEncodingLearned(nn.Module):
    """Learned row/column tables (MS-Transformer baseline): ``concat(col[x], row[y])``."""

    def __init__(self, num_pos_feats: int = 128, table_size: int = LEARNED_TABLE_SIZE) -> None:
        """Create two ``table_size x num_pos_feats`` tables initialised U[0, 1)."""
        super().__init__()
        self.row_embed = nn.Embedding(table_size, num_pos_feats)
        self.col_embed = nn.Embedding(table_size, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Return the encoding ``B x 2F x H x W`` for a feature map ``B x C x H x W``."""
        batch, _, height, width = feature_map.shape
        size = self.row_embed.num_embeddings
        if height > size or width > size:
            raise ValueError(f'learned position encoding covers at most {size}x{size} positions, '
                             f'got a {height}x{width} feature map')
        device = feature_map.device
        col = self.col_embed(torch.arange(width, device=device))  # W x F
        row = self.row_embed(torch.arange(height, device=device))  # H x F
        pe = torch.cat([col[None, :, :].expand(height, -1, -1),
                        row[:, None, :].expand(-1, width, -1)], dim=-1)  # H x W x 2F
        return pe.permute(2, 0, 1).unsqueeze(0).expand(batch, -1, -1, -1).to(feature_map.dtype)


def build_position_encoding(cfg: ModelConfig) -> nn.Module:
    """Return the positional encoding selected by ``cfg.position_encoding``."""
    num_pos_feats = cfg.hidden_dim // 2
    if cfg.position_encoding == 'sine':
        return PositionEncodingSine(num_pos_feats)
    if cfg.position_encoding == 'learned':
        return PositionEncodingLearned(num_pos_feats)
    raise ValueError(f'unknown position encoding {cfg.position_encoding!r}')
