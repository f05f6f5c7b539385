"""Backbones: ResNet (``build_resnet_backbone``, ``build_resnet_deeplab_backbone``) and Swin
(``D2SwinTransformer``), registered in :data:`mask2former.utils.registry.BACKBONE_REGISTRY`."""
from .backbone import Backbone
from .build import build_backbone
from .resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    DeepLabStem,
    ResNet,
    build_resnet_backbone,
    build_resnet_deeplab_backbone,
    make_resnet_stages,
)
from .swin import D2SwinTransformer

__all__ = [
    "Backbone",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "D2SwinTransformer",
    "DeepLabStem",
    "ResNet",
    "build_backbone",
    "build_resnet_backbone",
    "build_resnet_deeplab_backbone",
    "make_resnet_stages",
]
