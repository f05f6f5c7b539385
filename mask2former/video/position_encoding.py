"""Sinusoidal space-time position embedding of Mask2Former for video instance segmentation
(Cheng et al., "Mask2Former for Video Instance Segmentation", 2021, Sec. 2)."""
from typing import Optional

import torch

from ..layers.position_encoding import PositionEmbeddingSine

__all__ = ["PositionEmbeddingSine3D"]


class PositionEmbeddingSine3D(PositionEmbeddingSine):
    """Sine/cosine embedding of each token's (t, y, x) position in a clip.

    The (y, x) part is the image embedding of :class:`PositionEmbeddingSine` (``num_pos_feats``
    channels per axis, y first), computed per frame; the time part has ``2 * num_pos_feats``
    channels, pair (2i, 2i+1) = sin/cos of t / temperature^(2i / (2 * num_pos_feats)), and is
    *added* to it. With ``normalize`` the 1-based frame index t is divided by the clip length T
    (+1e-6) and multiplied by ``scale``, so the embedding depends on T. No parameters.

    Args: as :class:`PositionEmbeddingSine`.
    """

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x: [B, T, C, H, W]; only its sizes and device are used.
            mask: optional bool [B, T, H, W], True at padding pixels.

        Returns:
            [B, T, 2 * num_pos_feats, H, W], in x's dtype when it is floating point (computed in
            float32), else float32.

        Raises:
            ValueError: ``x`` is not 5-dimensional.
        """
        if x.dim() != 5:
            raise ValueError(f"PositionEmbeddingSine3D expects [B, T, C, H, W], got shape {tuple(x.shape)}")
        b, t, _, h, w = x.shape
        if mask is None:
            mask = torch.zeros((b, t, h, w), device=x.device, dtype=torch.bool)
        pos_yx = super().forward(x.flatten(0, 1), mask.flatten(0, 1)).view(b, t, -1, h, w)

        z_embed = (~mask).cumsum(1, dtype=torch.float32)
        if self.normalize:
            z_embed = z_embed / (z_embed[:, -1:] + 1e-6) * self.scale
        num_feats = 2 * self.num_pos_feats
        dim_t = torch.arange(num_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / num_feats)
        pos_z = z_embed[..., None] / dim_t
        pos_z = torch.stack((pos_z[..., 0::2].sin(), pos_z[..., 1::2].cos()), dim=5).flatten(4)
        return (pos_yx.float() + pos_z.permute(0, 1, 4, 2, 3)).to(pos_yx.dtype)
