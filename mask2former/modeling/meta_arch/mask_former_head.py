"""Mask2Former's segmentation head: pixel decoder + masked-attention Transformer decoder."""
from typing import Dict

import torch
from torch import nn

from ...config import configurable
from ...layers import ShapeSpec
from ...utils.registry import SEM_SEG_HEADS_REGISTRY
from ..pixel_decoder.build import build_pixel_decoder
from ..transformer_decoder.build import build_transformer_decoder

__all__ = ["MaskFormerHead", "build_sem_seg_head"]


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(nn.Module):
    """Module ``sem_seg_head`` of the published model: submodules ``pixel_decoder`` and
    ``predictor`` (the Transformer decoder).

    The pixel decoder turns backbone features into per-pixel embeddings (stride 4) and three
    multi-scale features; the predictor attends to the multi-scale features and predicts class and
    mask logits per query.
    """

    # Version 2 is the current key layout (pixel-decoder weights under ``pixel_decoder.``); saving it
    # into ``_metadata`` tells the original implementation not to rename keys.
    _version = 2

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
        transformer_predictor: nn.Module,
        transformer_in_feature: str = "multi_scale_pixel_decoder",
    ):
        """
        Args:
            input_shape: backbone features the head uses (name -> channels/stride).
            num_classes: number of classes K.
            pixel_decoder: module with ``forward_features(features) -> (mask_features,
                transformer_encoder_features, multi_scale_features)``.
            loss_weight: weight of the head's losses.
            ignore_value: label ignored in training.
            transformer_predictor: the Transformer decoder ``predictor(multi_scale_features,
                mask_features) -> dict``.
            transformer_in_feature: which pixel-decoder output the predictor reads; only
                ``"multi_scale_pixel_decoder"`` (the three multi-scale features) is supported.

        Raises:
            ValueError: any other ``transformer_in_feature``.
        """
        super().__init__()
        if transformer_in_feature != "multi_scale_pixel_decoder":
            raise ValueError(
                "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE must be 'multi_scale_pixel_decoder', got "
                f"{transformer_in_feature!r}"
            )
        # Submodule names (and their order) are the published checkpoints' ``sem_seg_head.*`` keys.
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor
        self.in_features = sorted(input_shape, key=lambda name: input_shape[name].stride)
        self.num_classes, self.ignore_value, self.loss_weight = num_classes, ignore_value, loss_weight
        self.transformer_in_feature = transformer_in_feature
        self.common_stride = 4  # stride of the per-pixel mask embeddings

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        used = {name: spec for name, spec in input_shape.items() if name in head.IN_FEATURES}
        return dict(
            input_shape=used,
            num_classes=head.NUM_CLASSES,
            ignore_value=head.IGNORE_VALUE,
            loss_weight=head.LOSS_WEIGHT,
            pixel_decoder=build_pixel_decoder(cfg, input_shape),
            transformer_predictor=build_transformer_decoder(cfg, head.CONVS_DIM, mask_classification=True),
            transformer_in_feature=cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE,
        )

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, object]:
        """
        Args:
            features: backbone outputs, name -> [N, C, H, W].

        Returns:
            the predictor's dict: ``pred_logits`` [N, Q, K+1], ``pred_masks`` [N, Q, H/4, W/4]
            (H, W = padded input size) and ``aux_outputs``.
        """
        mask_features, _, multi_scale_features = self.pixel_decoder.forward_features(features)
        return self.predictor(multi_scale_features, mask_features)


def build_sem_seg_head(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """The head named by ``MODEL.SEM_SEG_HEAD.NAME`` (``SEM_SEG_HEADS_REGISTRY``) for backbone
    features of ``input_shape``.

    Raises:
        KeyError: the name is not registered (the message lists the registered ones).
    """
    name = cfg.MODEL.SEM_SEG_HEAD.NAME
    if name not in SEM_SEG_HEADS_REGISTRY:
        registered = sorted(k for k, _ in SEM_SEG_HEADS_REGISTRY)
        raise KeyError(f"MODEL.SEM_SEG_HEAD.NAME={name!r} is not registered; known: {registered}")
    return SEM_SEG_HEADS_REGISTRY.get(name)(cfg, input_shape)
