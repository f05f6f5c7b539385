"""Abstract backbone: an image-to-multi-scale-features network with a declared output contract.

When Detectron2 is importable this *is* ``detectron2.modeling.Backbone``, so the backbones defined
here are accepted by Detectron2's own ``build_backbone`` and model builders.
"""
from abc import ABCMeta, abstractmethod
from typing import Dict

from torch import nn

from ...layers import ShapeSpec

try:
    from detectron2.modeling import Backbone
except ImportError:

    class Backbone(nn.Module, metaclass=ABCMeta):
        """Base class of backbones (Detectron2's interface).

        Subclasses set ``_out_features`` (list of names, e.g. ``["res2", ..., "res5"]``),
        ``_out_feature_channels`` and ``_out_feature_strides`` (dicts name -> int), or override
        :meth:`output_shape`.
        """

        @abstractmethod
        def forward(self, x):
            """Map images [N, C, H, W] (float) to a dict of feature maps name -> [N, C_i, H_i, W_i].

            H and W must be multiples of :attr:`size_divisibility` when it is non-zero.
            """

        @property
        def size_divisibility(self) -> int:
            """Integer the input height and width must be divisible by; 0 means no constraint."""
            return 0

        @property
        def padding_constraints(self) -> Dict[str, int]:
            """Optional padding rules, e.g. ``{"size_divisibility": 32, "square_size": 1024}``.

            ``size_divisibility`` here takes precedence over :attr:`size_divisibility`;
            ``square_size`` > 0 asks for padding to a square of that size. Empty by default.
            """
            return {}

        def output_shape(self) -> Dict[str, ShapeSpec]:
            """Channels and stride (input pixels per feature pixel) of each output feature map."""
            channels, strides = self._out_feature_channels, self._out_feature_strides
            return {f: ShapeSpec(channels=channels[f], stride=strides[f]) for f in self._out_features}


__all__ = ["Backbone"]
