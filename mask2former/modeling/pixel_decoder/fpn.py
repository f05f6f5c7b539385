"""Simple FPN pixel decoder of MaskFormer (Cheng et al., NeurIPS 2021, Sec. 3.3; after Lin et al.,
"Feature Pyramid Networks", CVPR 2017)."""
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from ...config import configurable
from ...layers import Conv2d, ShapeSpec, c2_xavier_fill, get_norm
from ...utils.registry import PIXEL_DECODER_REGISTRY


@PIXEL_DECODER_REGISTRY.register()
class BasePixelDecoder(nn.Module):
    """Top-down FPN: the coarsest map goes through a 3x3 conv + ReLU; every finer map i gets a
    lateral 1x1 conv (``adapter_i``) added to the nearest-upsampled coarser output, then a 3x3 conv
    + ReLU (``layer_i``). Index i counts from the finest input (1) to the coarsest (``layer_n``, no
    adapter). A 3x3 conv (``mask_features``) maps the finest output to ``mask_dim`` channels.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        conv_dim: int,
        mask_dim: int,
        norm: Optional[Union[str, Callable]] = None,
    ):
        """
        Args:
            input_shape: backbone features the decoder reads, name -> ShapeSpec(channels, stride).
            conv_dim: channels of the FPN levels.
            mask_dim: channels of the mask features.
            norm: norm of the lateral/output convs (:func:`get_norm` name); these convs have a bias
                only when ``norm == ""``.

        Raises:
            ValueError: if ``input_shape`` is empty.
        """
        super().__init__()
        if not input_shape:
            raise ValueError("BasePixelDecoder: input_shape must not be empty")
        # finest first ("res2" ... "res5")
        shapes = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [name for name, _ in shapes]

        use_bias = norm == ""

        def fpn_conv(in_channels: int, kernel_size: int, **kwargs) -> Conv2d:
            return Conv2d(
                in_channels, conv_dim, kernel_size=kernel_size, bias=use_bias,
                norm=get_norm(norm, conv_dim), **kwargs,
            )

        # Module names (``adapter_i``, ``layer_i``, ``mask_features``) and their creation order are
        # those of the published checkpoints; the lists below hold the same modules top-down.
        self.lateral_convs: List[Optional[nn.Module]] = []
        self.output_convs: List[nn.Module] = []
        for level, (_, spec) in enumerate(shapes, start=1):
            top = level == len(shapes)
            adapter = None if top else fpn_conv(spec.channels, 1)
            layer = fpn_conv(spec.channels if top else conv_dim, 3, padding=1, activation=F.relu)
            for prefix, module in (("adapter", adapter), ("layer", layer)):
                if module is not None:
                    c2_xavier_fill(module)
                    self.add_module(f"{prefix}_{level}", module)
            self.lateral_convs.insert(0, adapter)
            self.output_convs.insert(0, layer)

        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=3, padding=1)
        c2_xavier_fill(self.mask_features)
        self.maskformer_num_feature_levels = 3

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        """Reads MODEL.SEM_SEG_HEAD.{IN_FEATURES, CONVS_DIM, MASK_DIM, NORM}."""
        head = cfg.MODEL.SEM_SEG_HEAD
        used = {name: spec for name, spec in input_shape.items() if name in head.IN_FEATURES}
        return dict(input_shape=used, conv_dim=head.CONVS_DIM, mask_dim=head.MASK_DIM, norm=head.NORM)

    def forward_features(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, None, List[torch.Tensor]]:
        """
        Args:
            features: backbone maps [N, C_f, H/stride_f, W/stride_f] for every name in
                ``in_features``.

        Returns:
            mask_features: [N, mask_dim, h, w] at the finest input's resolution;
            None (this decoder has no transformer encoder);
            multi_scale_features: the first 3 top-down outputs, coarsest first, each
                [N, conv_dim, h, w].

        Raises:
            KeyError: naming the missing entries of ``features``.
        """
        missing = [f for f in self.in_features if f not in features]
        if missing:
            raise KeyError(f"BasePixelDecoder: features {missing} missing; got {sorted(features)}")
        (top, _, top_layer), *finer = zip(self.in_features[::-1], self.lateral_convs, self.output_convs)
        y = top_layer(features[top])
        outputs = [y]
        for name, adapter, layer in finer:
            lateral = adapter(features[name])
            y = layer(lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest"))
            outputs.append(y)
        return self.mask_features(y), None, outputs[: self.maskformer_num_feature_levels]

    def forward(self, features: Dict[str, torch.Tensor]):
        """Same as :meth:`forward_features`."""
        return self.forward_features(features)
