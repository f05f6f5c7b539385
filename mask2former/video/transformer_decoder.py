"""Masked-attention Transformer decoder over space-time features (Cheng et al., "Mask2Former for
Video Instance Segmentation", 2021).

The image decoder (:class:`MultiScaleMaskedTransformerDecoder`) applied to a clip: per level, the
memory is the T x h x w tokens of all frames (flattened t-major, then y, x) with a 3-D position
embedding; each query predicts one mask tube [T, H, W], and its masked cross-attention only sees
the tokens where the previous prediction has probability >= 0.5 in any frame's own location.
The parameters (and state-dict names) are exactly the image decoder's.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch.nn import functional as F

from ..config import configurable
from ..modeling.transformer_decoder import MultiScaleMaskedTransformerDecoder
from ..modeling.transformer_decoder.mask2former_transformer_decoder import attended_pixels
from ..utils.registry import TRANSFORMER_DECODER_REGISTRY
from .position_encoding import PositionEmbeddingSine3D

__all__ = ["VideoMultiScaleMaskedTransformerDecoder"]


@TRANSFORMER_DECODER_REGISTRY.register()
class VideoMultiScaleMaskedTransformerDecoder(MultiScaleMaskedTransformerDecoder):
    """Video version of Mask2Former's decoder (``sem_seg_head.predictor`` of the published video
    models).

    Inputs are the per-frame features of B clips stacked frame-major per clip ([B*T, ...], clip 0's
    T frames first). In training every clip has ``num_frames`` frames; in inference the whole
    input is one clip of any length T.
    """

    @configurable
    def __init__(self, in_channels: int, mask_classification: bool = True, *, num_frames: int, **kwargs):
        """
        Args:
            in_channels, mask_classification, **kwargs: as :class:`MultiScaleMaskedTransformerDecoder`.
            num_frames: frames per clip in training (``INPUT.SAMPLING_FRAME_NUM``).
        """
        super().__init__(in_channels, mask_classification, **kwargs)
        self.num_frames = num_frames
        self.pe_layer = PositionEmbeddingSine3D(self.query_feat.embedding_dim // 2, normalize=True)

    @classmethod
    def from_config(cls, cfg, in_channels: int, mask_classification: bool):
        ret = super().from_config(cfg, in_channels, mask_classification)
        ret["num_frames"] = cfg.INPUT.SAMPLING_FRAME_NUM
        return ret

    def forward(self, x: Sequence[torch.Tensor], mask_features: torch.Tensor) -> Dict[str, object]:
        """
        Args:
            x: three feature maps [B*T, C_in, H_l, W_l], coarsest first.
            mask_features: per-pixel embeddings [B*T, mask_dim, H, W] (stride 4).

        Returns:
            dict with ``pred_logits`` [B, Q, K+1] and ``pred_masks`` [B, Q, T, H, W] (logits) of the
            last layer, and ``aux_outputs``: a list of L dicts with the same keys for the
            learnable queries and the first L-1 layers.

        Raises:
            ValueError: not three feature maps, or (training) B*T not a multiple of ``num_frames``.
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(f"Expected {self.num_feature_levels} feature maps, got {len(x)}")
        bt, c_m, h_m, w_m = mask_features.shape
        if self.training and bt % self.num_frames:
            raise ValueError(f"{bt} frames are not clips of num_frames={self.num_frames}")
        batch = bt // self.num_frames if self.training else 1
        t = bt // batch
        mask_features = mask_features.view(batch, t, c_m, h_m, w_m)

        src, pos, sizes = [], [], []
        for i, feature in enumerate(x):
            h, w = feature.shape[-2:]
            sizes.append((h, w))
            level_pos = self.pe_layer(feature.view(batch, t, -1, h, w)).flatten(3)
            level = self.input_proj[i](feature).flatten(2) + self.level_embed.weight[i][None, :, None]
            # [B, T, C, hw] -> [T*hw, B, C]
            pos.append(level_pos.permute(1, 3, 0, 2).flatten(0, 1))
            src.append(level.view(batch, t, -1, h * w).permute(1, 3, 0, 2).flatten(0, 1))
        return self.decode(src, pos, sizes, mask_features)

    def forward_prediction_heads(
        self, output: torch.Tensor, mask_features: torch.Tensor, attn_mask_target_size: Optional[Tuple[int, int]]
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Class logits, mask-tube logits and the next layer's attention mask.

        Args:
            output: query features [Q, B, C].
            mask_features: [B, T, mask_dim, H, W].
            attn_mask_target_size: (h, w) of the level the next layer attends to; None after the
                last layer (no attention mask).

        Returns:
            class logits [B, Q, K+1]; mask logits [B, Q, T, H, W]; attention mask bool
            [B*heads, Q, T*h*w] (t-major) of :meth:`attention_mask` (True = not attended) from the
            masks resized per frame (None without a target size).
        """
        class_logits, mask_embedding = self.query_heads(output)
        mask_logits = torch.einsum("bqc,btchw->bqthw", mask_embedding, mask_features)
        if attn_mask_target_size is None:
            return class_logits, mask_logits, None
        return class_logits, mask_logits, self.attention_mask(_resized_per_frame(mask_logits, attn_mask_target_size))

    def resized_mask_logits(
        self, output: torch.Tensor, mask_features: torch.Tensor, size: Tuple[int, int]
    ) -> torch.Tensor:
        """Mask-tube logits [B, Q, T*h*w] resized per frame to ``size`` = (h, w), as
        :meth:`forward_prediction_heads` resizes them, computed on the pixels the resize reads
        (see :func:`attended_pixels`); ``mask_features`` [B, T, mask_dim, H, W]."""
        _, mask_embedding = self.query_heads(output)
        mask_logits = torch.einsum("bqc,btchw->bqthw", mask_embedding, attended_pixels(mask_features, size))
        return _resized_per_frame(mask_logits, size)


def _resized_per_frame(mask_logits: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """[B, Q, T, H, W] logits bilinearly resized frame by frame to ``size``, as [B, Q, T*h*w]."""
    clips, queries = mask_logits.shape[:2]
    # Frames as channels: each frame's mask is resized on its own grid.
    resized = F.interpolate(mask_logits.flatten(0, 1), size=size, mode="bilinear", align_corners=False)
    return resized.view(clips, queries, -1)
