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
    flat = point_coords.dim() == 3
    grid = point_coords[:, :, None] if flat else point_coords
    sampled = F.grid_sample(features, grid * 2 - 1, **kwargs)
    return sampled[..., 0] if flat else sampled


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
    rois, device = coarse_logits.shape[0], coarse_logits.device
    kept = int(importance_sample_ratio * num_points)
    # Random draws in this order (candidates, then fill-up points): seeded runs depend on it.
    candidates = _uniform_points(rois, int(num_points * oversample_ratio), device)
    scores = uncertainty_func(point_sample(coarse_logits, candidates, align_corners=False))
    most_uncertain = scores[:, 0].topk(kept, dim=1).indices
    chosen = candidates.gather(1, most_uncertain[..., None].expand(-1, -1, 2))
    if kept == num_points:
        return chosen
    return torch.cat((chosen, _uniform_points(rois, num_points - kept, device)), dim=1)


def _uniform_points(rois: int, count: int, device: torch.device) -> torch.Tensor:
    """[rois, count, 2] points drawn uniformly from [0, 1]^2."""
    return torch.rand(rois, count, 2, device=device)
