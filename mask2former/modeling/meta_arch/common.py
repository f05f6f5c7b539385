"""Pieces shared by the image (:class:`MaskFormer`) and video (``VideoMaskFormer``) meta-architectures."""
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from ...structures import ImageList

__all__ = ["normalized_batch", "register_pixel_normalization", "weighted_losses"]


def register_pixel_normalization(module: nn.Module, pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> None:
    """Give ``module`` the buffers ``pixel_mean`` and ``pixel_std``, float32 [C, 1, 1] (0-255 scale,
    ``INPUT.FORMAT`` channel order); non-persistent, as they are not in the published state dict."""
    for name, values in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
        module.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(-1, 1, 1), persistent=False)


def normalized_batch(images: Sequence[torch.Tensor], pixel_mean: torch.Tensor, pixel_std: torch.Tensor,
                     size_divisibility: int) -> ImageList:
    """Images [C, H_i, W_i] (any dtype) moved to the device of ``pixel_mean``, normalised as
    ``(x - mean) / std`` and padded bottom/right with 0 into one [N, C, H_pad, W_pad] batch whose sides
    are multiples of ``size_divisibility``."""
    device = pixel_mean.device
    return ImageList.from_tensors([(image.to(device) - pixel_mean) / pixel_std for image in images],
                                  size_divisibility)


def weighted_losses(criterion: Optional[nn.Module], outputs: Dict, targets, owner: str) -> Dict[str, torch.Tensor]:
    """The losses of ``criterion(outputs, targets)`` that appear in ``criterion.weight_dict``, each
    multiplied by its weight.

    Raises:
        RuntimeError: ``criterion`` is None (``owner`` was built for inference only).
    """
    if criterion is None:
        raise RuntimeError(f"{owner} was built without a criterion; pass `criterion=` to train it")
    weights = criterion.weight_dict
    return {name: loss * weights[name] for name, loss in criterion(outputs, targets).items() if name in weights}
