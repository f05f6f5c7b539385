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
        lateral_convs, output_convs = [], []
        for idx, (_, spec) in enumerate(shapes):
            coarsest = idx == len(shapes) - 1
            lateral_conv = None
            if not coarsest:
                lateral_conv = Conv2d(
                    spec.channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim)
                )
            output_conv = Conv2d(
                spec.channels if coarsest else conv_dim,
                conv_dim,
                kernel_size=3,
                stride=1,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            if lateral_conv is not None:
                c2_xavier_fill(lateral_conv)
                self.add_module(f"adapter_{idx + 1}", lateral_conv)
            c2_xavier_fill(output_conv)
            self.add_module(f"layer_{idx + 1}", output_conv)
            lateral_convs.append(lateral_conv)
            output_convs.append(output_conv)
        # top-down order (coarse to fine); plain lists, the modules are registered above
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=3, stride=1, padding=1)
        c2_xavier_fill(self.mask_features)
        self.maskformer_num_feature_levels = 3

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        """Reads MODEL.SEM_SEG_HEAD.{IN_FEATURES, CONVS_DIM, MASK_DIM, NORM}."""
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
        }

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
        outputs = []
        top_down = zip(self.lateral_convs, self.output_convs, self.in_features[::-1])
        for lateral_conv, output_conv, name in top_down:
            x = features[name]
            if lateral_conv is None:
                y = output_conv(x)
            else:
                cur_fpn = lateral_conv(x)
                y = output_conv(cur_fpn + F.interpolate(y, size=cur_fpn.shape[-2:], mode="nearest"))
            outputs.append(y)
        return self.mask_features(y), None, outputs[: self.maskformer_num_feature_levels]

    def forward(self, features: Dict[str, torch.Tensor]):
        """Same as :meth:`forward_features`."""
        return self.forward_features(features)
