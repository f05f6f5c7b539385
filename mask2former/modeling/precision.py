"""Low-precision inference (config key ``TEST.PRECISION``): the whole image network (backbone,
pixel decoder with its deformable-attention encoder, transformer decoder) runs in bfloat16 or
float16 by holding its parameters in that dtype, so that activations stay 16-bit end to end
(unlike ``torch.autocast``, whose float32 constants and float32-only regions cast back and forth).

Kept in float32, for accuracy:

- input normalisation (``pixel_mean`` / ``pixel_std``, ``(x - mean) / std`` on the 0-255 image,
  cast to the network dtype afterwards): the 0-255 means are not exact in bfloat16 (123.675 ->
  123.5);
- batch-norm statistics: frozen batch norms (``FrozenBatchNorm2d``, the published backbones') are
  folded into their convolutions in float32 before the cast (one rounding of ``W * scale``, see
  :func:`~mask2former.layers.fold_frozen_batchnorm`); trainable ``BatchNorm2d`` layers keep float32
  parameters, which their kernels read with 16-bit inputs (running variances can leave float16's
  range: below 6e-5, above 65504);
- the deformable-attention sampling locations (reference point + offset / level size) and the
  attention-weight softmax (see :class:`~mask2former.layers.MSDeformAttn`): a normalised
  coordinate in [0.5, 1) has a bfloat16 spacing of 2^-8, 0.6 pixel on a 152-pixel level;
- the head outputs handed to post-processing (``pred_logits``, ``pred_masks`` cast to float32 at
  the boundary of the network, :func:`float32_head_outputs`): score products, argmax and the
  sigmoid >= 0.5 thresholds run in float32, and outputs are float32. One exception: for a bfloat16
  network the semantic class product (K x Q x H*W multiply-adds at the output resolution, the
  largest matrix product of post-processing) takes bfloat16 probabilities and rounds its float32
  sums to bfloat16 once (``product_dtype`` of
  :func:`~mask2former.modeling.postprocessing.semantic_inference`): scores move by less than one
  bfloat16 step (2^-8 of the largest), well within the network's own bfloat16 error.

In every precision, :func:`prepare_for_inference` folds the frozen batch norms (one pass over each
convolution's output instead of two) and, on the CPU, stores the convolution weights channels-last
(NHWC), so that oneDNN's convolutions read and write NHWC activations without reordering them on
every call (measured about 25% faster for the ResNet-50 backbone in float32, 35% in bfloat16).
Results equal the unprepared model's to float rounding (another summation order), not bit for bit.

Training keeps float32 parameters and ``SOLVER.AMP`` (autocast); so does the periodic evaluation
during training, which evaluates the training model as it is.
"""
from typing import Dict

import torch
from torch import nn

from ..layers.fusion import fold_frozen_batchnorm
from ..layers.norm import FrozenBatchNorm2d

__all__ = [
    "PRECISIONS",
    "float32_head_outputs",
    "parameter_dtype",
    "precision_dtype",
    "prepare_for_inference",
]

# TEST.PRECISION value -> dtype of the network's parameters and activations
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# modules whose parameters and buffers stay float32 (batch-norm statistics, see the module docstring)
_FLOAT32_MODULES = (FrozenBatchNorm2d, nn.modules.batchnorm._BatchNorm)
# buffers that stay float32 wherever they are: the input normalisation
_FLOAT32_BUFFERS = ("pixel_mean", "pixel_std")


def precision_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a ``TEST.PRECISION`` value.

    Args:
        precision: ``"float32"``, ``"bfloat16"`` or ``"float16"``.

    Raises:
        ValueError: naming ``TEST.PRECISION``, the value and the allowed values.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"TEST.PRECISION={precision!r}; expected one of {list(PRECISIONS)}")
    return PRECISIONS[precision]


def prepare_for_inference(model: nn.Module, precision: str) -> nn.Module:
    """Put ``model`` in eval mode, fold its frozen batch norms into their convolutions, on the CPU
    store its 4-D weights channels-last, and cast, in place, its floating-point parameters and
    buffers to the ``TEST.PRECISION`` dtype, except the float32 ones listed in the module docstring
    (trainable batch norms, ``pixel_mean`` / ``pixel_std``). The model is then for inference only:
    its state dict no longer has the published layout (see
    :func:`~mask2former.layers.fold_frozen_batchnorm`).

    Args:
        model: e.g. a :class:`~mask2former.modeling.meta_arch.MaskFormer`, on its device.
        precision: a ``TEST.PRECISION`` value; ``"float32"`` leaves the dtypes as they are.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: for an unknown ``precision`` (see :func:`precision_dtype`), or naming the first
            parameter with values beyond the dtype's range (float16: above 65504); nothing is cast
            then (the model stays float32, folded).
    """
    dtype = precision_dtype(precision)
    model.eval()
    fold_frozen_batchnorm(model)
    if all(p.device.type == "cpu" for p in model.parameters()):
        model.to(memory_format=torch.channels_last)
    if dtype == torch.float32:
        return model
    with torch.no_grad():
        low = [(prefix, m) for prefix, m in model.named_modules() if not isinstance(m, _FLOAT32_MODULES)]
        cast = []  # every parameter is cast and checked before any is replaced
        for prefix, module in low:
            for name, param in module.named_parameters(recurse=False):
                if param.is_floating_point():
                    value = param.data.to(dtype)
                    if not bool(value.isfinite().all()) and bool(param.isfinite().all()):
                        raise ValueError(
                            f"TEST.PRECISION={precision}: parameter {prefix}.{name} has values beyond "
                            f"{dtype}'s range (largest finite {torch.finfo(dtype).max:g})"
                        )
                    cast.append((param, value))
        for param, value in cast:
            param.data = value
        for _, module in low:
            for name, buffer in module.named_buffers(recurse=False):
                if buffer.is_floating_point() and name not in _FLOAT32_BUFFERS:
                    setattr(module, name, buffer.to(dtype))
    return model


def parameter_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first floating-point parameter (float32 without one): the dtype
    its inputs are cast to."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def float32_head_outputs(outputs: Dict) -> Dict:
    """``outputs`` of a segmentation head with ``pred_logits`` [N, Q, K+1] and ``pred_masks``
    [N, Q, ...] in float32 (no copy when they already are); other entries are kept as they are."""
    cast = {k: outputs[k].float() for k in ("pred_logits", "pred_masks") if k in outputs}
    return {**outputs, **cast}
