"""The exportable part of Mask2Former: image in, raw per-query predictions out.

Everything data-dependent (which queries are kept, how many segments an image has) happens after
the network, in :mod:`mask2former.modeling.postprocessing`, which the runtimes of
:mod:`mask2former.export.runtime` run unchanged on the exported graph's outputs.
"""
import os
from typing import Tuple

import torch
from torch import nn

from ..layers.ms_deform_attn_op import IMPL_ENV_VAR
from ..modeling.meta_arch import MaskFormer

__all__ = ["ExportError", "MaskFormerExportWrapper", "check_exportable"]

# deformable-attention implementations whose ops export (the grid_sample formulation)
_EXPORTABLE_MSDA_IMPLS = ("auto", "pytorch")


class ExportError(ValueError):
    """A model or config that cannot be exported; the message names the option responsible."""


def check_exportable(cfg, model_format: str = "onnx") -> None:
    """Raise :class:`ExportError` naming the config option (or environment variable) that keeps
    the model of ``cfg`` from exporting to a self-contained graph.

    Checked: ``MODEL.META_ARCHITECTURE`` must be ``MaskFormer`` (the image model);
    ``TEST.AUG.ENABLED`` must be off (test-time augmentation merges several runs outside the
    network); ``INPUT.FORMAT`` must be RGB or BGR; ``$MASK2FORMER_MSDA_IMPL`` must be unset,
    ``auto`` or ``pytorch`` (the compiled deformable-attention op has no ONNX equivalent; the
    export always uses the ``grid_sample`` formulation). For ``model_format="exported-program"``,
    ``MODEL.BACKBONE.NAME`` must not be the Swin backbone: ``torch.export``'s symbolic sizes
    through its window padding grow without bound (it did not finish in minutes); ONNX works.
    """
    if cfg.MODEL.META_ARCHITECTURE != "MaskFormer":
        raise ExportError(
            f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r} cannot be exported: only the "
            "image model 'MaskFormer' is supported"
        )
    if cfg.TEST.AUG.ENABLED:
        raise ExportError(
            "TEST.AUG.ENABLED=True cannot be exported: test-time augmentation runs the network "
            "several times and merges outside it; export with TEST.AUG.ENABLED False"
        )
    if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
        raise ExportError(f"INPUT.FORMAT must be 'RGB' or 'BGR' to export, got {cfg.INPUT.FORMAT!r}")
    if model_format == "exported-program" and cfg.MODEL.BACKBONE.NAME == "D2SwinTransformer":
        raise ExportError(
            "MODEL.BACKBONE.NAME='D2SwinTransformer' cannot be exported with torch.export (its "
            "symbolic window-padding sizes do not simplify); use --format onnx"
        )
    impl = os.environ.get(IMPL_ENV_VAR, "auto")
    if impl not in _EXPORTABLE_MSDA_IMPLS:
        raise ExportError(
            f"{IMPL_ENV_VAR}={impl!r} cannot be exported: that multi-scale deformable attention "
            "op has no ONNX equivalent; unset it or set it to 'pytorch' (the grid_sample "
            "formulation, used by the export)"
        )


class MaskFormerExportWrapper(nn.Module):
    """``image -> (pred_logits, pred_masks)`` of a :class:`MaskFormer`, the graph that is exported.

    Normalisation by ``PIXEL_MEAN``/``PIXEL_STD`` is inside the graph; there is no padding (the
    caller passes sizes divisible by ``size_divisibility``: pad with ``pixel_mean``, which the
    graph turns into the zeros :meth:`MaskFormer.preprocess_image` pads with).

    Args:
        model: a MaskFormer in eval mode.

    Forward:
        image: float32 [N, 3, H, W], 0-255, channels in ``INPUT.FORMAT`` order.

    Returns:
        ``pred_logits`` float32 [N, Q, K+1] (last = "no object") and ``pred_masks`` float32
        [N, Q, H/4, W/4] mask logits of the last decoder layer.
    """

    def __init__(self, model: MaskFormer):
        super().__init__()
        self.backbone = model.backbone
        self.sem_seg_head = model.sem_seg_head
        self.register_buffer("pixel_mean", model.pixel_mean.clone(), False)
        self.register_buffer("pixel_std", model.pixel_std.clone(), False)

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = (image - self.pixel_mean) / self.pixel_std
        outputs = self.sem_seg_head(self.backbone(x))
        return outputs["pred_logits"], outputs["pred_masks"]
