"""Point sampling used by the matcher and the mask losses (PointRend, Kirillov et al. CVPR 2020).

Mask2Former computes mask losses on K sampled points instead of the full mask (Sec. 3.3 of the
paper): uniformly sampled points for matching, importance-sampled points for the final loss.
"""
from typing import Callable

import torch
from torch.nn import functional as F


def point_sample(features: torch.Tensor, point_coords: torch.Tensor, **kwargs) -> torch.Tensor:
    """Bilinearly sample ``features`` at normalised point coordinates.

    Args:
        features: [N, C, H, W] maps.
        point_coords: [N, P, 2] (or [N, Hp, Wp, 2]) (x, y) in [0, 1] x [0, 1], (0, 0) the top-left
            corner of the map; forwarded to ``F.grid_sample`` after mapping to [-1, 1].
        **kwargs: passed to ``F.grid_sample`` (e.g. ``align_corners=False``).

    Returns:
        [N, C, P] (or [N, C, Hp, Wp]) sampled values.
    """
    add_dim = point_coords.dim() == 3
    if add_dim:
        point_coords = point_coords.unsqueeze(2)
    output = F.grid_sample(features, 2.0 * point_coords - 1.0, **kwargs)
    return output.squeeze(3) if add_dim else output


def uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of class-agnostic mask logits [R, 1, ...]: ``-|logit|`` (highest at 0)."""
    return -logits.abs()


def get_uncertain_point_coords_with_randomness(
    coarse_logits: torch.Tensor,
    uncertainty_func: Callable[[torch.Tensor], torch.Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> torch.Tensor:
    """Importance sampling of points on uncertain regions (PointRend training strategy).

    Draws ``int(num_points * oversample_ratio)`` uniform points, keeps the
    ``int(importance_sample_ratio * num_points)`` most uncertain ones and fills the rest with fresh
    uniform points.

    Args:
        coarse_logits: [R, 1, H, W] mask logits.
        uncertainty_func: maps sampled logits [R, 1, P] to uncertainty scores [R, 1, P].

    Returns:
        [R, num_points, 2] point coordinates (x, y) in [0, 1].
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    num_boxes = coarse_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    point_coords = torch.rand(num_boxes, num_sampled, 2, device=coarse_logits.device)
    point_logits = point_sample(coarse_logits, point_coords, align_corners=False)
    point_uncertainties = uncertainty_func(point_logits)
    num_uncertain_points = int(importance_sample_ratio * num_points)
    num_random_points = num_points - num_uncertain_points
    idx = torch.topk(point_uncertainties[:, 0, :], k=num_uncertain_points, dim=1)[1]
    shift = num_sampled * torch.arange(num_boxes, dtype=torch.long, device=coarse_logits.device)
    idx = idx + shift[:, None]
    point_coords = point_coords.view(-1, 2)[idx.view(-1), :].view(num_boxes, num_uncertain_points, 2)
    if num_random_points > 0:
        random_coords = torch.rand(num_boxes, num_random_points, 2, device=coarse_logits.device)
        point_coords = torch.cat([point_coords, random_coords], dim=1)
    return point_coords
