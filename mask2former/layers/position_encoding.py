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
            [N, 2 * num_pos_feats, H, W], y-embedding channels first, then x: computed in float32
            and returned in x's dtype when x is floating point (so that a bfloat16 / float16
            network keeps 16-bit activations), float32 otherwise.
        """
        batch, _, height, width = x.shape
        valid = (
            torch.ones((batch, height, width), dtype=torch.bool, device=x.device) if mask is None else ~mask
        )
        wavelengths = self._wavelengths(x.device)
        per_axis = [self._embed_axis(self._positions(valid, axis), wavelengths) for axis in (1, 2)]
        return torch.cat(per_axis, dim=1).to(x.dtype if x.is_floating_point() else torch.float32)

    def _positions(self, valid: torch.Tensor, axis: int) -> torch.Tensor:
        """float32 [N, H, W] 1-based positions of valid pixels along ``axis`` (1: y, 2: x)."""
        positions = valid.cumsum(axis, dtype=torch.float32)
        if not self.normalize:
            return positions
        extent = positions.narrow(axis, positions.size(axis) - 1, 1)
        return positions / (extent + 1e-6) * self.scale

    def _wavelengths(self, device: torch.device) -> torch.Tensor:
        """float32 [num_pos_feats]: temperature^(2 * floor(c / 2) / num_pos_feats) for channel c."""
        channel = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        exponent = channel.div(2, rounding_mode="floor") * 2 / self.num_pos_feats
        return torch.pow(self.temperature, exponent)

    @staticmethod
    def _embed_axis(positions: torch.Tensor, wavelengths: torch.Tensor) -> torch.Tensor:
        """[N, H, W] positions -> [N, F, H, W]: sin on even channels, cos on odd ones."""
        angles = positions.unsqueeze(-1) / wavelengths
        pairs = torch.stack((angles[..., ::2].sin(), angles[..., 1::2].cos()), dim=-1)
        return pairs.flatten(-2).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
            f"normalize={self.normalize}, scale={self.scale}"
        )
