"""Bipartite matching of predicted and ground-truth mask tubes (Mask2Former for video instance
segmentation)."""
import torch

from ..modeling.matcher import HungarianMatcher

__all__ = ["VideoHungarianMatcher"]


class VideoHungarianMatcher(HungarianMatcher):
    """:class:`HungarianMatcher` on mask tubes: ``pred_masks`` [B, Q, T, h, w] and target
    ``masks`` [G, T, H, W]. The same ``num_points`` random (x, y) points are sampled in every frame,
    and the BCE and dice costs compare the T * num_points values of each tube, so one query is
    matched to one instance over the whole clip."""

    @staticmethod
    def as_sample_maps(masks: torch.Tensor) -> torch.Tensor:
        """[N, T, H, W] tubes, frames as channels."""
        return masks
