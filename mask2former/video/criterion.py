"""Training loss of Mask2Former for video instance segmentation: the image set loss with
clip-level matching."""
from typing import Dict

import torch

from ..modeling.criterion import SetCriterion
from .matcher import VideoHungarianMatcher

__all__ = ["VideoSetCriterion"]


class VideoSetCriterion(SetCriterion):
    """:class:`SetCriterion` for mask tubes.

    Queries are matched to instances once per clip (:class:`VideoHungarianMatcher`); the class loss
    is the image one; the BCE and dice mask losses are computed on every frame of a matched tube
    (importance-sampled points drawn per frame) and summed over frames, normalised by the number of
    instances (not instance-frames).

    Outputs: ``pred_logits`` [B, Q, K+1], ``pred_masks`` [B, Q, T, h, w]; targets: B dicts with
    ``labels`` int64 [G] and ``masks`` [G, T, H, W].
    """

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        image_matcher = ret["matcher"]
        ret["matcher"] = VideoHungarianMatcher(
            cost_class=image_matcher.cost_class,
            cost_mask=image_matcher.cost_mask,
            cost_dice=image_matcher.cost_dice,
            num_points=image_matcher.num_points,
        )
        return ret

    def loss_masks(self, outputs, targets, indices, num_masks: float) -> Dict[str, torch.Tensor]:
        """The image mask losses on the frames of the matched tubes: query q, frame t becomes
        query q*T + t of a [B, Q*T, h, w] prediction, and likewise for the targets."""
        pred_masks = outputs["pred_masks"]
        t = pred_masks.shape[2]
        frames = torch.arange(t)
        per_frame_indices = [
            ((src[:, None] * t + frames).flatten(), (tgt[:, None] * t + frames).flatten())
            for src, tgt in indices
        ]
        per_frame_outputs = {"pred_masks": pred_masks.flatten(1, 2)}
        per_frame_targets = [{"masks": target["masks"].flatten(0, 1)} for target in targets]
        return super().loss_masks(per_frame_outputs, per_frame_targets, per_frame_indices, num_masks)
