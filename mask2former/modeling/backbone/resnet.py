"""ResNet backbones (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

Module and parameter names are Detectron2's (``stem.conv1``, ``res2.0.conv1.norm``,
``res2.0.shortcut``, ...), so Detectron2 model-zoo and Mask2Former checkpoints load unchanged.
Two builders are registered in :data:`BACKBONE_REGISTRY`, each under Detectron2's name and only if
that name is free (with Detectron2 installed its own builders win; both build the same network):

* ``build_resnet_backbone``: Detectron2's standard ResNet (7x7 stem). All published Mask2Former
  ResNet configs (R50 and R101) use it; it ignores ``MODEL.RESNETS.STEM_TYPE`` and
  ``RES5_MULTI_GRID`` (the configs mark them "not used").
* ``build_resnet_deeplab_backbone``: the DeepLab variant of Detectron2's DeepLab project
  (Chen et al., "Rethinking Atrous Convolution", 2017): 3-conv stem when ``STEM_TYPE == "deeplab"``,
  ``RES4_DILATION``, and per-block res5 dilations ``RES5_DILATION * RES5_MULTI_GRID``. With
  Detectron2 installed, ``detectron2.projects.deeplab`` (when importable) is imported first so
  that its builder is the registered one.
"""
import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ...layers import Conv2d, FrozenBatchNorm2d, ShapeSpec, c2_msra_fill, get_norm
from ...utils.registry import BACKBONE_REGISTRY, DETECTRON2_AVAILABLE, register_once
from .backbone import Backbone

__all__ = [
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "CNNBlockBase",
    "DeepLabStem",
    "ResNet",
    "build_resnet_backbone",
    "build_resnet_deeplab_backbone",
    "make_resnet_stages",
]

BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


class CNNBlockBase(nn.Module):
    """A block mapping [N, in_channels, H, W] to [N, out_channels, H / stride, W / stride]."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def freeze(self) -> "CNNBlockBase":
        """Stop gradients to all parameters and turn every BatchNorm into FrozenBatchNorm2d."""
        for p in self.parameters():
            p.requires_grad_(False)
        return FrozenBatchNorm2d.convert_frozen_batchnorm(self)


def _conv(in_channels, out_channels, kernel_size, *, norm, stride=1, dilation=1, groups=1):
    """Bias-free conv with 'same' padding for odd kernels, a ``norm`` child and MSRA init."""
    norm_layer = get_norm(norm, out_channels)
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=dilation * (kernel_size // 2),
        dilation=dilation,
        groups=groups,
        bias=False,
        norm=norm_layer,
    )
    c2_msra_fill(conv)
    return conv


class BasicBlock(CNNBlockBase):
    """Two 3x3 convs plus an identity or 1x1 projection shortcut (ResNet-18/34)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, norm="BN"):
        super().__init__(in_channels, out_channels, stride=stride)
        self.shortcut = (
            _conv(in_channels, out_channels, 1, stride=stride, norm=norm)
            if in_channels != out_channels
            else None
        )
        self.conv1 = _conv(in_channels, out_channels, 3, stride=stride, norm=norm)
        self.conv2 = _conv(out_channels, out_channels, 3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu_(self.conv1(x)))
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class BottleneckBlock(CNNBlockBase):
    """1x1 -> 3x3 (grouped, dilated) -> 1x1 convs plus a shortcut (ResNet-50/101/152, ResNeXt).

    ``stride_in_1x1`` puts the stride in the first 1x1 conv (MSRA/Caffe2 models) instead of the 3x3
    conv (torchvision models).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm="BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ):
        super().__init__(in_channels, out_channels, stride=stride)
        self.shortcut = (
            _conv(in_channels, out_channels, 1, stride=stride, norm=norm)
            if in_channels != out_channels
            else None
        )
        # The stride sits in exactly one of the first two convs.
        conv1_stride = stride if stride_in_1x1 else 1
        self.conv1 = _conv(in_channels, bottleneck_channels, 1, stride=conv1_stride, norm=norm)
        self.conv2 = _conv(
            bottleneck_channels,
            bottleneck_channels,
            3,
            stride=stride // conv1_stride,
            dilation=dilation,
            groups=num_groups,
            norm=norm,
        )
        self.conv3 = _conv(bottleneck_channels, out_channels, 1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class BasicStem(CNNBlockBase):
    """7x7 stride-2 conv, ReLU, 3x3 stride-2 max-pool: [N, C, H, W] -> [N, out, H/4, W/4]."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm="BN"):
        super().__init__(in_channels, out_channels, stride=4)
        self.conv1 = _conv(in_channels, out_channels, 7, stride=2, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class DeepLabStem(CNNBlockBase):
    """Three 3x3 convs (strides 2, 1, 1; widths out/2, out/2, out) with ReLU, 3x3/2 max-pool."""

    def __init__(self, in_channels: int = 3, out_channels: int = 128, norm="BN"):
        super().__init__(in_channels, out_channels, stride=4)
        self.conv1 = _conv(in_channels, out_channels // 2, 3, stride=2, norm=norm)
        self.conv2 = _conv(out_channels // 2, out_channels // 2, 3, norm=norm)
        self.conv3 = _conv(out_channels // 2, out_channels, 3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        x = F.relu_(self.conv2(x))
        x = F.relu_(self.conv3(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def _num_stages(out_features: Sequence[str]) -> int:
    """Number of stages needed to produce ``out_features`` ("res5" -> 4, "stem" -> 0)."""
    return max({"res2": 1, "res3": 2, "res4": 3, "res5": 4}.get(f, 0) for f in out_features)


class ResNet(Backbone):
    """A stem followed by stages ``res2``, ``res3``, ... of residual blocks.

    Args:
        stem: a :class:`CNNBlockBase` (output stride 4).
        stages: per stage, its list of blocks; stages after the last requested output are dropped
            (no unused parameters).
        out_features: names among ``"stem"``, ``"res2"``... to return; default: the last stage.
        freeze_at: see :meth:`freeze`.

    Raises:
        ValueError: if ``out_features`` names a feature the network does not produce.
    """

    def __init__(
        self,
        stem: CNNBlockBase,
        stages: Sequence[Sequence[CNNBlockBase]],
        *,
        out_features: Optional[Sequence[str]] = None,
        freeze_at: int = 0,
    ):
        super().__init__()
        self.stem = stem
        if out_features is not None:
            stages = stages[: _num_stages(out_features)]
        self.stage_names = tuple(f"res{i + 2}" for i in range(len(stages)))
        strides, channels = {"stem": stem.stride}, {"stem": stem.out_channels}
        total_stride = stem.stride
        for name, blocks in zip(self.stage_names, stages):
            self.add_module(name, nn.Sequential(*blocks))
            total_stride *= math.prod(block.stride for block in blocks)
            strides[name], channels[name] = total_stride, blocks[-1].out_channels
        self._out_feature_strides, self._out_feature_channels = strides, channels
        self._out_features = list(out_features or [self.stage_names[-1]])
        unknown = [f for f in self._out_features if f not in self._out_feature_strides]
        if unknown:
            raise ValueError(
                f"ResNet out_features {unknown} not available; choose from "
                f"{list(self._out_feature_strides)}"
            )
        self.freeze(freeze_at)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Images [N, C, H, W] float -> {name: [N, C_name, H / stride_name, W / stride_name]}.

        Strides are rounded up per conv/pool (odd sizes give ceil-divided maps).
        """
        if x.dim() != 4:
            raise ValueError(f"ResNet takes an input of shape (N, C, H, W); got {tuple(x.shape)}")
        wanted = set(self._out_features)
        outputs = {}
        for name in ("stem",) + self.stage_names:
            x = getattr(self, name)(x)
            if name in wanted:
                outputs[name] = x
        return outputs

    def freeze(self, freeze_at: int = 0) -> "ResNet":
        """Freeze the first ``freeze_at`` stages: 1 = the stem, 2 = stem + res2, and so on.

        Frozen parameters get ``requires_grad=False`` and their BatchNorms become FrozenBatchNorm2d.
        """
        if freeze_at >= 1:
            self.stem.freeze()
        for idx, name in enumerate(self.stage_names, start=2):
            if freeze_at >= idx:
                for block in getattr(self, name).children():
                    block.freeze()
        return self


def make_resnet_stages(
    depth: int,
    *,
    in_channels: int,
    res2_out_channels: int = 256,
    num_groups: int = 1,
    width_per_group: int = 64,
    stride_in_1x1: bool = False,
    norm="FrozenBN",
    res4_dilation: int = 1,
    res5_dilation: int = 1,
    res5_multi_grid: Optional[Sequence[int]] = None,
    num_stages: int = 4,
) -> List[List[CNNBlockBase]]:
    """Blocks of stages res2.. for ResNet-``depth`` (18/34: BasicBlock, 50/101/152: Bottleneck).

    Channels double and the resolution halves at every stage after res2, except that a dilated
    stage (``res4_dilation``/``res5_dilation`` > 1) keeps its input resolution. The 3x3 convs of
    res5's blocks use dilations ``res5_dilation * res5_multi_grid[i]`` (default multi-grid: all 1).

    Args:
        in_channels: channels of the stem output.
        res2_out_channels: output channels of res2 (256 for R50; must be 64 for R18/34).
        num_groups, width_per_group: res2 bottleneck width is ``num_groups * width_per_group``.

    Raises:
        ValueError: for an unsupported depth or an option the block type does not support.
    """
    if depth not in BLOCKS_PER_STAGE:
        raise ValueError(
            f"MODEL.RESNETS.DEPTH={depth} not supported; use one of {list(BLOCKS_PER_STAGE)}"
        )
    num_blocks = BLOCKS_PER_STAGE[depth]
    multi_grid = list(res5_multi_grid or [1] * num_blocks[3])
    if len(multi_grid) != num_blocks[3]:
        raise ValueError(
            f"RES5_MULTI_GRID={multi_grid} needs {num_blocks[3]} entries (one per res5 block)"
        )
    if res4_dilation not in (1, 2) or res5_dilation not in (1, 2, 4):
        raise ValueError(
            f"RES4_DILATION={res4_dilation} must be 1 or 2, RES5_DILATION={res5_dilation} 1, 2 or 4"
        )
    if res4_dilation == 2 and res5_dilation != 4:
        raise ValueError("RES4_DILATION=2 requires RES5_DILATION=4")
    basic = depth < 50
    if basic and (res2_out_channels, num_groups, res4_dilation, res5_dilation) != (64, 1, 1, 1):
        raise ValueError(
            f"ResNet-{depth} requires RES2_OUT_CHANNELS=64, NUM_GROUPS=1 and no dilation"
        )
    if basic and set(multi_grid) != {1}:
        raise ValueError(
            f"ResNet-{depth} (BasicBlock) does not support RES5_MULTI_GRID={multi_grid}"
        )
    out_channels = res2_out_channels
    width = num_groups * width_per_group  # bottleneck channels of res2, doubled per stage
    stages = []
    for idx in range(num_stages):
        dilation = {2: res4_dilation, 3: res5_dilation}.get(idx, 1)
        first_stride = 2 if idx > 0 and dilation == 1 else 1
        dilations = [dilation * m for m in multi_grid] if idx == 3 else [dilation] * num_blocks[idx]
        blocks = []
        for i in range(num_blocks[idx]):
            stride = first_stride if i == 0 else 1
            if basic:
                block = BasicBlock(in_channels, out_channels, stride=stride, norm=norm)
            else:
                block = BottleneckBlock(
                    in_channels,
                    out_channels,
                    bottleneck_channels=width,
                    stride=stride,
                    num_groups=num_groups,
                    norm=norm,
                    stride_in_1x1=stride_in_1x1,
                    dilation=dilations[i],
                )
            blocks.append(block)
            in_channels = out_channels
        stages.append(blocks)
        out_channels *= 2
        width *= 2
    return stages


def _resnet_from_cfg(cfg, input_shape: ShapeSpec, stem_type: str, **dilations) -> ResNet:
    """ResNet from ``MODEL.RESNETS.*`` and ``MODEL.BACKBONE.FREEZE_AT`` with the given stem."""
    res = cfg.MODEL.RESNETS
    if any(res.DEFORM_ON_PER_STAGE):
        raise NotImplementedError(
            f"MODEL.RESNETS.DEFORM_ON_PER_STAGE={list(res.DEFORM_ON_PER_STAGE)}: deformable "
            "convolutions are not implemented; set all entries to False"
        )
    stems = {"basic": BasicStem, "deeplab": DeepLabStem}
    if stem_type not in stems:
        raise ValueError(
            f"MODEL.RESNETS.STEM_TYPE={stem_type!r} unknown; expected one of {list(stems)}"
        )
    stem = stems[stem_type](input_shape.channels, res.STEM_OUT_CHANNELS, norm=res.NORM)
    stages = make_resnet_stages(
        res.DEPTH,
        in_channels=res.STEM_OUT_CHANNELS,
        res2_out_channels=res.RES2_OUT_CHANNELS,
        num_groups=res.NUM_GROUPS,
        width_per_group=res.WIDTH_PER_GROUP,
        stride_in_1x1=res.STRIDE_IN_1X1,
        norm=res.NORM,
        num_stages=_num_stages(res.OUT_FEATURES),
        **dilations,
    )
    return ResNet(stem, stages, out_features=res.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@register_once(BACKBONE_REGISTRY)
def build_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """Detectron2's standard ResNet from ``MODEL.RESNETS.*`` (basic 7x7 stem; res5 dilation 1 or 2).

    Raises:
        NotImplementedError: if ``MODEL.RESNETS.DEFORM_ON_PER_STAGE`` enables deformable convs.
        ValueError: for unsupported depth/dilation settings.
    """
    if cfg.MODEL.RESNETS.RES5_DILATION not in (1, 2):
        raise ValueError(
            f"MODEL.RESNETS.RES5_DILATION={cfg.MODEL.RESNETS.RES5_DILATION} must be 1 or 2"
        )
    return _resnet_from_cfg(
        cfg, input_shape, "basic", res5_dilation=cfg.MODEL.RESNETS.RES5_DILATION
    )


if DETECTRON2_AVAILABLE:
    # Detectron2's DeepLab project registers its own ``build_resnet_deeplab_backbone`` when imported
    # and fails if the name is already taken: import it first, so that its builder (same parameter
    # names) is the registered one and importing it later (e.g. for ``add_deeplab_config``) works.
    try:
        import detectron2.projects.deeplab  # noqa: F401
    except ImportError:
        pass


@register_once(BACKBONE_REGISTRY)
def build_resnet_deeplab_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """DeepLab ResNet: ``STEM_TYPE`` stem, ``RES4_DILATION``, ``RES5_DILATION * RES5_MULTI_GRID``.

    Raises:
        NotImplementedError: if ``MODEL.RESNETS.DEFORM_ON_PER_STAGE`` enables deformable convs.
        ValueError: for an unknown stem type or unsupported depth/dilation settings.
    """
    res = cfg.MODEL.RESNETS
    return _resnet_from_cfg(
        cfg,
        input_shape,
        res.STEM_TYPE,
        res4_dilation=res.RES4_DILATION,
        res5_dilation=res.RES5_DILATION,
        res5_multi_grid=res.RES5_MULTI_GRID,
    )
