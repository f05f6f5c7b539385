"""Sinusoidal 2-D position embedding (DETR)."""
import math

import pytest
import torch

from mask2former.layers import PositionEmbeddingSine


def _expected(h, w, num_pos_feats, temperature, normalize, scale):
    """The embedding of an unpadded h x w map, channel by channel, in float64."""
    rows = torch.arange(1, h + 1, dtype=torch.float64)[:, None].expand(h, w)
    cols = torch.arange(1, w + 1, dtype=torch.float64)[None, :].expand(h, w)
    if normalize:
        rows = rows / (h + 1e-6) * scale
        cols = cols / (w + 1e-6) * scale
    channels = []
    for position in (rows, cols):
        for c in range(num_pos_feats):
            angle = position / temperature ** (2 * (c // 2) / num_pos_feats)
            channels.append(angle.sin() if c % 2 == 0 else angle.cos())
    return torch.stack(channels)


@pytest.mark.parametrize("normalize, scale", [(False, None), (True, None), (True, 1.0)])
def test_matches_formula(normalize, scale):
    layer = PositionEmbeddingSine(num_pos_feats=6, temperature=100, normalize=normalize, scale=scale)
    pos = layer(torch.zeros(2, 3, 4, 5))
    assert pos.shape == (2, 12, 4, 5) and pos.dtype == torch.float32
    expected = _expected(4, 5, 6, 100, normalize, 2 * math.pi if scale is None else scale)
    torch.testing.assert_close(pos[1].double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(pos[0], pos[1])


def test_padding_mask_counts_only_valid_pixels():
    """With normalisation, the valid region of a padded map is embedded like an unpadded map."""
    layer = PositionEmbeddingSine(num_pos_feats=8, normalize=True)
    mask = torch.zeros(1, 6, 7, dtype=torch.bool)
    mask[:, 4:, :] = True
    mask[:, :, 5:] = True
    padded = layer(torch.zeros(1, 1, 6, 7), mask)
    unpadded = layer(torch.zeros(1, 1, 4, 5))
    torch.testing.assert_close(padded[..., :4, :5], unpadded)


def test_scale_requires_normalize():
    with pytest.raises(ValueError, match="normalize"):
        PositionEmbeddingSine(16, scale=3.0)
