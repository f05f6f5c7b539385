"""Sinusoidal 2-D position embedding (Vaswani et al. 2017, extended to images as in DETR,
Carion et al., ECCV 2020)."""
import math
from typing import Optional

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine embedding of each pixel's (y, x) position, ``num_pos_feats`` channels per axis.

    A pixel's position along an axis is its 1-based index among the non-padding pixels (cumulative
    sum of the not-mask); with ``normalize`` it is divided by the axis' total (+1e-6) and multiplied
    by ``scale``. Channel pair (2i, 2i+1) holds sin/cos of position / temperature^(2i/num_pos_feats).

    Args:
        num_pos_feats: channels per axis (output has ``2 * num_pos_feats`` channels).
        temperature: wavelength base.
        normalize: normalise positions to (0, scale].
        scale: normalisation scale; default 2*pi. Only allowed with ``normalize=True``.

    Raises:
        ValueError: if ``scale`` is given without ``normalize``.
    """

    def __init__(
        self,
        num_pos_feats: int = 64,
        temperature: float = 10000,
        normalize: bool = False,
        scale: Optional[float] = None,
    ):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: scale is only used with normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x: [N, C, H, W]; only its batch size, spatial size and device are used.
            mask: optional bool [N, H, W], True at padding pixels.

        Returns:
            float32 [N, 2 * num_pos_feats, H, W]: y-embedding channels first, then x.
        """
        if mask is None:
            mask = torch.zeros((x.size(0), x.size(2), x.size(3)), device=x.device, dtype=torch.bool)
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale

        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)

        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
            f"normalize={self.normalize}, scale={self.scale}"
        )
