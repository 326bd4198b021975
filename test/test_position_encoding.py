"""Tests of the positional encodings against their closed-form definitions."""
import math

import pytest
import torch

from mspr_ros.model.config import ModelConfig
from mspr_ros.model.position_encoding import (build_position_encoding, PositionEncodingLearned,
                                              PositionEncodingSine)


def closed_form_sine(channel: int, row: int, col: int, feats: int = 128,
                     temperature: float = 10000.0) -> float:
    """Return the DETR sine value (unnormalised, 1-based positions, y channels first)."""
    if channel < feats:
        position, index = row + 1, channel
    else:
        position, index = col + 1, channel - feats
    angle = position / temperature ** (2 * (index // 2) / feats)
    return math.sin(angle) if index % 2 == 0 else math.cos(angle)


@pytest.mark.parametrize('height, width', [(14, 14), (28, 28), (3, 5)])
def test_sine_matches_the_closed_form(height, width):
    """Values at many channels and cells equal the formula of paper.md section 3.2."""
    pe = PositionEncodingSine(128)(torch.zeros(2, 7, height, width))
    assert pe.shape == (2, 256, height, width)
    cells = [(0, 0), (height - 1, width - 1), (height // 2, width - 1), (1, 2 % width)]
    channels = [0, 1, 2, 3, 64, 65, 126, 127, 128, 129, 200, 201, 254, 255]
    for row, col in cells:
        for channel in channels:
            expected = closed_form_sine(channel, row, col)
            assert pe[1, channel, row, col].item() == pytest.approx(expected, abs=1e-6)


def test_sine_is_shared_across_map_sizes_and_cached():
    """The 14x14 map is the top-left corner of the 28x28 one; repeated calls reuse the map."""
    encoding = PositionEncodingSine(16)
    small = encoding(torch.zeros(1, 1, 14, 14))
    large = encoding(torch.zeros(1, 1, 28, 28))
    assert torch.equal(small, large[:, :, :14, :14])
    again = encoding(torch.zeros(3, 1, 14, 14))
    assert again.data_ptr() == small.data_ptr()
    with torch.inference_mode():
        in_inference = encoding(torch.zeros(1, 1, 5, 5))
    # A map first built under inference_mode must still be usable with autograd later.
    x = torch.zeros(1, 32, 5, 5, requires_grad=True)
    (x + encoding(x)).sum().backward()
    assert not in_inference.is_inference()


def test_learned_concatenates_column_then_row_embeddings():
    """PE[:, y, x] = concat(col_embed[x], row_embed[y]), tables initialised in [0, 1)."""
    encoding = PositionEncodingLearned(8)
    for table in (encoding.row_embed.weight, encoding.col_embed.weight):
        assert table.shape == (50, 8) and table.min() >= 0 and table.max() < 1
    pe = encoding(torch.zeros(2, 3, 4, 6))
    assert pe.shape == (2, 16, 4, 6)
    for y, x in [(0, 0), (3, 5), (2, 1)]:
        assert torch.equal(pe[1, :8, y, x], encoding.col_embed.weight[x])
        assert torch.equal(pe[1, 8:, y, x], encoding.row_embed.weight[y])
    with pytest.raises(ValueError, match='51x2'):
        encoding(torch.zeros(1, 1, 51, 2))


def test_builder_selects_by_config():
    """build_position_encoding follows cfg.position_encoding with hidden_dim/2 per axis."""
    sine = build_position_encoding(ModelConfig(num_scenes=1, hidden_dim=32, nheads=4))
    learned = build_position_encoding(ModelConfig(num_scenes=1, hidden_dim=32, nheads=4,
                                                  position_encoding='learned'))
    assert isinstance(sine, PositionEncodingSine) and sine.num_pos_feats == 16
    assert isinstance(learned, PositionEncodingLearned)
    assert learned.row_embed.embedding_dim == 16
