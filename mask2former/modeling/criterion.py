"""Training losses of Mask2Former (Sec. 3.3 and 4.1 of the paper).

For every decoder layer (deep supervision) and for the predictions made from the learnable
queries alone, queries are matched one-to-one to ground-truth segments (:class:`HungarianMatcher`);
matched queries get a cross-entropy class loss and binary cross-entropy + dice mask losses computed
on importance-sampled points, unmatched ones are pushed to "no object" (weight ``eos_coef``).
"""
from typing import Dict, List

import torch
from torch import nn
from torch.nn import functional as F

from ..config import configurable
from ..utils import comm
from .matcher import HungarianMatcher
from .point_sampling import get_uncertain_point_coords_with_randomness, point_sample, uncertainty


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Dice loss ``1 - (2|p∩t| + 1) / (|p| + |t| + 1)`` summed over masks, divided by ``num_masks``.

    Args:
        inputs: [M, P] mask logits. targets: [M, P] binary targets (float).
    """
    probs = inputs.sigmoid()
    overlap = (probs * targets).sum(-1)
    sizes = probs.sum(-1) + targets.sum(-1)
    dice = (2 * overlap + 1) / (sizes + 1)
    return (1 - dice).sum() / num_masks


def sigmoid_ce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Binary cross-entropy of mask logits [M, P] vs targets [M, P], mean over points, summed over
    masks and divided by ``num_masks``."""
    per_point = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return per_point.mean(dim=1).sum() / num_masks


class SetCriterion(nn.Module):
    """Hungarian-matched set loss with deep supervision.

    Loss names: ``loss_ce``, ``loss_mask``, ``loss_dice`` for the final layer and ``<name>_<i>``
    for the i-th auxiliary prediction. ``forward`` returns the unweighted losses; ``weight_dict``
    holds their weights (the trainer sums ``loss * weight_dict[name]``).
    """

    @configurable
    def __init__(self, *, num_classes: int, matcher: nn.Module, weight_dict: Dict[str, float],
                 eos_coef: float, num_points: int, oversample_ratio: float,
                 importance_sample_ratio: float):
        """
        Args:
            num_classes: K, number of categories (the no-object class is index K).
            matcher: module returning per-image (query indices, target indices).
            weight_dict: loss name -> weight.
            eos_coef: class-loss weight of the no-object class (0.1 in the paper).
            num_points: points per mask for the mask losses (112 * 112 = 12544).
            oversample_ratio, importance_sample_ratio: PointRend importance-sampling parameters
                (3.0 and 0.75 in the paper).
        """
        super().__init__()
        self.matcher = matcher
        self.num_classes, self.eos_coef, self.weight_dict = num_classes, eos_coef, weight_dict
        self.num_points = num_points
        self.oversample_ratio, self.importance_sample_ratio = oversample_ratio, importance_sample_ratio
        class_weights = torch.ones(num_classes + 1)
        class_weights[num_classes] = eos_coef
        # ``criterion.empty_weight`` is a key of the published checkpoints.
        self.register_buffer("empty_weight", class_weights)

    @classmethod
    def from_config(cls, cfg):
        mf = cfg.MODEL.MASK_FORMER
        matcher = HungarianMatcher(
            cost_class=mf.CLASS_WEIGHT,
            cost_mask=mf.MASK_WEIGHT,
            cost_dice=mf.DICE_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
        )
        final = {"loss_ce": mf.CLASS_WEIGHT, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
        weight_dict = dict(final)
        if mf.DEEP_SUPERVISION:
            for i in range(mf.DEC_LAYERS - 1):
                weight_dict.update({f"{k}_{i}": v for k, v in final.items()})
        return dict(
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            matcher=matcher,
            weight_dict=weight_dict,
            eos_coef=mf.NO_OBJECT_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
            oversample_ratio=mf.OVERSAMPLE_RATIO,
            importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
        )

    def loss_labels(self, outputs, targets, indices) -> Dict[str, torch.Tensor]:
        """Cross-entropy over K+1 classes for every query; unmatched queries target "no object"."""
        logits = outputs["pred_logits"].float()
        batch_idx, query_idx = _prediction_index(indices)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[batch_idx, query_idx] = torch.cat(
            [t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)]
        ).to(logits.device)
        return {"loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)}

    def loss_masks(self, outputs, targets, indices, num_masks: float) -> Dict[str, torch.Tensor]:
        """BCE + dice on ``num_points`` importance-sampled points of each matched mask pair."""
        batch_idx, query_idx = _prediction_index(indices)
        pred_masks = outputs["pred_masks"].float()[batch_idx, query_idx][:, None]
        target_masks = torch.cat(
            [t["masks"][tgt] for t, (_, tgt) in zip(targets, indices)]
        ).to(pred_masks)[:, None]
        with torch.no_grad():
            coords = get_uncertain_point_coords_with_randomness(
                pred_masks, uncertainty, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )
            point_labels = point_sample(target_masks, coords, align_corners=False)[:, 0]
        point_logits = point_sample(pred_masks, coords, align_corners=False)[:, 0]
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    def _layer_losses(self, outputs, targets, num_masks: float) -> Dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        losses = self.loss_labels(outputs, targets, indices)
        if sum(len(src) for src, _ in indices) == 0:
            zero = outputs["pred_masks"].sum() * 0.0
            losses.update({"loss_mask": zero, "loss_dice": zero})
        else:
            losses.update(self.loss_masks(outputs, targets, indices, num_masks))
        return losses

    def forward(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """Compute all losses.

        Args:
            outputs: ``pred_logits`` [B, Q, K+1], ``pred_masks`` [B, Q, h, w] and optionally
                ``aux_outputs``, a list of dicts with the same two keys (earlier layers).
            targets: B dicts with ``labels`` int64 [T_b] and ``masks`` [T_b, H, W] (same H, W for
                every image: the padded batch size).

        Returns:
            Unweighted losses by name. The mask losses are normalised by the number of target
            masks averaged over all workers (at least 1), so an empty batch gives finite losses.
        """
        local_count = float(sum(t["labels"].numel() for t in targets))
        count = torch.tensor([local_count], device=outputs["pred_logits"].device)
        world = comm.get_world_size()
        if world > 1:
            torch.distributed.all_reduce(count)
        num_masks = max((count / world).item(), 1.0)

        losses = self._layer_losses(outputs, targets, num_masks)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v for k, v in self._layer_losses(aux, targets, num_masks).items()})
        return losses


def _prediction_index(indices):
    """(image index, query index) int64 [M] of every matched query, image by image."""
    queries = torch.cat([src for src, _ in indices])
    per_image = torch.tensor([len(src) for src, _ in indices], device=queries.device)
    images = torch.repeat_interleave(torch.arange(len(indices), device=queries.device), per_image)
    return images, queries
