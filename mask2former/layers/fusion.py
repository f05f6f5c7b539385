"""Folding frozen batch norms into the convolutions before them, for inference."""
import torch
from torch import nn

from .conv import Conv2d
from .norm import FrozenBatchNorm2d

__all__ = ["fold_frozen_batchnorm"]


@torch.no_grad()
def fold_frozen_batchnorm(model: nn.Module) -> int:
    """Fold every :class:`FrozenBatchNorm2d` that is the ``norm`` of a :class:`Conv2d` into that
    convolution, in place: with ``scale = weight / sqrt(running_var + eps)`` and
    ``shift = bias - running_mean * scale`` (per output channel, float32), the convolution gets
    weights ``W * scale`` and bias ``shift`` (plus ``scale`` times its own bias) and no norm, so
    each layer makes one pass over its output instead of two. Equal to convolution then norm up
    to float rounding.

    The model is then for inference only: its state dict no longer has the published layout
    (``<conv>.norm.*`` buffers are gone, ``<conv>.bias`` appears), so checkpoints neither load into
    it nor should be saved from it.

    Args:
        model: any module; convolutions with another norm (GroupNorm, trainable BatchNorm) or
            none are left as they are.

    Returns:
        The number of folded convolutions.
    """
    folded = 0
    for conv in model.modules():
        if not (isinstance(conv, Conv2d) and isinstance(conv.norm, FrozenBatchNorm2d)):
            continue
        norm = conv.norm
        scale = torch.rsqrt(norm.running_var.float() + norm.eps) * norm.weight.float()
        shift = norm.bias.float() - norm.running_mean.float() * scale
        if conv.bias is not None:
            shift = shift + conv.bias.float() * scale
        weight = conv.weight.float() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
        conv.weight.data = weight.to(conv.weight.dtype)
        conv.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
        conv.norm = None
        folded += 1
    return folded
