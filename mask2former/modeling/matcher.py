"""Bipartite matching between predicted and ground-truth masks (Mask2Former Sec. 3.3)."""
from typing import Dict, List, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn import functional as F

from .point_sampling import point_sample


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise dice cost ``1 - (2|p∩t| + 1) / (|p| + |t| + 1)``.

    Args:
        inputs: [Q, P] mask logits at P points. targets: [T, P] binary targets at the same points.

    Returns:
        [Q, T] cost matrix.
    """
    inputs = inputs.sigmoid()
    numerator = 2 * torch.einsum("nc,mc->nm", inputs, targets)
    denominator = inputs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def batch_sigmoid_ce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise mean binary cross-entropy of mask logits [Q, P] against targets [T, P] -> [Q, T]."""
    num_points = inputs.shape[1]
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    cost = torch.einsum("nc,mc->nm", pos, targets) + torch.einsum("nc,mc->nm", neg, 1 - targets)
    return cost / num_points


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising
    ``cost_class * (-p(class)) + cost_mask * BCE + cost_dice * dice``.

    Mask costs are computed on ``num_points`` points drawn uniformly in the image (the same points
    for predictions and targets), and the assignment is solved with
    ``scipy.optimize.linear_sum_assignment``.
    """

    def __init__(self, cost_class: float = 1.0, cost_mask: float = 1.0, cost_dice: float = 1.0,
                 num_points: int = 12544):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def forward(self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
                ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Match predictions to targets.

        Args:
            outputs: ``pred_logits`` [B, Q, K+1] class logits (last = no object) and ``pred_masks``
                [B, Q, h, w] mask logits.
            targets: B dicts with ``labels`` int64 [T_b] (contiguous class ids) and ``masks``
                [T_b, H, W] binary masks (any resolution: points are normalised coordinates).

        Returns:
            B pairs ``(query_indices, target_indices)`` of int64 tensors of length min(Q, T_b).
        """
        indices = []
        for b, target in enumerate(targets):
            if len(target["labels"]) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            probs = outputs["pred_logits"][b].float().softmax(-1)
            cost_class = -probs[:, target["labels"]]
            pred_masks = self.as_sample_maps(outputs["pred_masks"][b]).float()
            tgt_masks = self.as_sample_maps(target["masks"]).to(pred_masks)
            point_coords = torch.rand(1, self.num_points, 2, device=pred_masks.device)
            tgt_points = point_sample(
                tgt_masks, point_coords.repeat(tgt_masks.shape[0], 1, 1), align_corners=False
            ).flatten(1)
            pred_points = point_sample(
                pred_masks, point_coords.repeat(pred_masks.shape[0], 1, 1), align_corners=False
            ).flatten(1)
            with torch.autocast(device_type=pred_masks.device.type, enabled=False):
                cost_mask = batch_sigmoid_ce_cost(pred_points, tgt_points)
                cost_dice = batch_dice_cost(pred_points, tgt_points)
            cost = self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices

    @staticmethod
    def as_sample_maps(masks: torch.Tensor) -> torch.Tensor:
        """[N, H, W] masks as the [N, C, H, W] maps the points are sampled from (C = 1); the costs
        compare the C * P sampled values of each mask."""
        return masks[:, None]
