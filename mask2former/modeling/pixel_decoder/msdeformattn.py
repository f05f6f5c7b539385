"""Mask2Former's default pixel decoder (Cheng et al., CVPR 2022, Sec. 3.2 and 4.1): a Deformable
DETR encoder (Zhu et al., ICLR 2021) over the 1/32, 1/16 and 1/8 features, then FPN-style lateral
convolutions up to the 1/4 mask-feature resolution."""
import copy
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from ...config import configurable
from ...layers import (
    Conv2d, MSDeformAttn, PositionEmbeddingSine, ShapeSpec, TokenLinear, c2_xavier_fill, get_norm,
)
from ...layers.token_linear import pointwise_conv_applies
from ...utils.registry import PIXEL_DECODER_REGISTRY
from ..precision import parameter_dtype


def _sizes_to_tensor(shapes: Sequence[Tuple[int, int]], device: torch.device) -> torch.Tensor:
    """int64 [L, 2] tensor of (H_l, W_l) pairs that stay symbolic in traced and exported graphs:
    ``torch.jit.trace`` sees sizes as 0-dim tensors, ``torch.export`` as SymInts (which
    ``torch.as_tensor`` would specialise to constants)."""
    if torch.jit.is_tracing():
        return torch.stack([torch.stack(hw) for hw in shapes]).to(device)
    return torch.stack(
        [torch.stack([torch.scalar_tensor(v, dtype=torch.long, device=device) for v in hw]) for hw in shapes]
    )


# Tokens per chunk of the encoder's feed-forward network in CPU inference, so that its
# [N, chunk, d_ffn] activations stay in cache: on 19950 tokens (800x1216 input, 2-core AMD EPYC)
# 20% faster in float32 and 15% in bfloat16, with the same values (tokens are independent).
FFN_CHUNK_TOKENS = 4096


class MSDeformAttnTransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention, then a ReLU feed-forward network
    (``linear1``, ``linear2``: :class:`~mask2former.layers.TokenLinear`), each followed by a
    residual connection and LayerNorm (``norm1``, ``norm2``). In CPU inference the feed-forward
    network runs on chunks of :data:`FFN_CHUNK_TOKENS` tokens."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)

        self.linear1 = TokenLinear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = TokenLinear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        spatial_shapes_list: Optional[Sequence[Tuple[int, int]]] = None,
    ) -> torch.Tensor:
        """src, pos: [N, S, d_model]; reference_points: [N, S, L, 2]; spatial_shapes int64 [L, 2];
        level_start_index int64 [L]; optional spatial_shapes_list: the same (H_l, W_l) as sizes
        (see :func:`ms_deform_attn`). Returns [N, S, d_model]."""
        attn = self.self_attn(
            src + pos, reference_points, src, spatial_shapes, level_start_index,
            spatial_shapes_list=spatial_shapes_list,
        )
        src = self.norm1(src + self.dropout1(attn))
        if src.shape[1] <= FFN_CHUNK_TOKENS or not pointwise_conv_applies(src, self.linear1.weight):
            return self.feed_forward(src)
        out = torch.empty_like(src)
        for start in range(0, src.shape[1], FFN_CHUNK_TOKENS):
            out[:, start : start + FFN_CHUNK_TOKENS] = self.feed_forward(src[:, start : start + FFN_CHUNK_TOKENS])
        return out

    def feed_forward(self, src: torch.Tensor) -> torch.Tensor:
        """``norm2(src + FFN(src))`` for src [N, S, d_model]; every token on its own."""
        # in place: saves one [N, S, d_ffn] buffer (the linear's backward does not need its output)
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src), inplace=True)))
        return self.norm2(src + self.dropout3(ffn))


class MSDeformAttnTransformerEncoder(nn.Module):
    """A stack of ``num_layers`` copies of ``encoder_layer`` (``layers.0`` ... ``layers.{n-1}``)."""

    def __init__(self, encoder_layer: MSDeformAttnTransformerEncoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(encoder_layer) for _ in range(num_layers))
        self.num_layers = num_layers

    @staticmethod
    def get_reference_points(shapes: Sequence[Tuple[int, int]], device: torch.device) -> torch.Tensor:
        """Pixel centres of every level, normalised (x, y) in (0, 1): float32 [1, S, 2]."""
        points = []
        for h, w in shapes:
            # arange + 0.5 equals linspace(0.5, n - 0.5, n) exactly, and keeps n symbolic in exports
            ref_y, ref_x = torch.meshgrid(
                torch.arange(h, dtype=torch.float32, device=device) + 0.5,
                torch.arange(w, dtype=torch.float32, device=device) + 0.5,
                indexing="ij",
            )
            points.append(torch.stack((ref_x.reshape(-1) / w, ref_y.reshape(-1) / h), -1))
        return torch.cat(points, 0)[None]

    def forward(
        self,
        src: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        pos: torch.Tensor,
        spatial_shapes_list: Optional[Sequence[Tuple[int, int]]] = None,
    ) -> torch.Tensor:
        """src, pos: [N, S, d_model]; spatial_shapes int64 [L, 2]; level_start_index int64 [L];
        optional spatial_shapes_list: the same (H_l, W_l) as sizes, so that no tensor value is read
        back (traced or exported graphs stay shape-generic).
        Every query's reference point is its own pixel centre, the same on all levels (no padding).
        Returns [N, S, d_model]."""
        if spatial_shapes_list is None:
            shapes = [tuple(hw) for hw in spatial_shapes.tolist()]
        else:
            shapes = [tuple(hw) for hw in spatial_shapes_list]
        reference_points = self.get_reference_points(shapes, src.device)
        reference_points = reference_points[:, :, None].expand(src.shape[0], -1, len(shapes), -1)
        output = src
        for layer in self.layers:
            output = layer(
                output, pos, reference_points, spatial_shapes, level_start_index,
                spatial_shapes_list=spatial_shapes_list,
            )
        return output


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Deformable DETR's encoder over a list of feature maps, with a learned embedding per level
    (``level_embed``, [num_feature_levels, d_model]) added to the positional embedding."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_feature_levels: int = 4,
        enc_n_points: int = 4,
    ):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        encoder_layer = MSDeformAttnTransformerEncoderLayer(
            d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points
        )
        self.encoder = MSDeformAttnTransformerEncoder(encoder_layer, num_encoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """As published: Xavier-uniform for every matrix (level_embed included), then
        MSDeformAttn's own initialisation, then level_embed ~ N(0, 1)."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: List[torch.Tensor], pos_embeds: List[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            srcs: L maps [N, d_model, H_l, W_l].
            pos_embeds: L positional embeddings, same shapes as ``srcs``.

        Returns:
            [N, sum_l H_l * W_l, d_model]: the encoded maps, flattened row-major, level after level.
        """
        src_flatten = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        pos_flatten = torch.cat(
            [
                pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1)
                for lvl, pos in enumerate(pos_embeds)
            ],
            1,
        )
        shapes = [tuple(src.shape[-2:]) for src in srcs]
        spatial_shapes = _sizes_to_tensor(shapes, src_flatten.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        return self.encoder(
            src_flatten, spatial_shapes, level_start_index, pos_flatten, spatial_shapes_list=shapes
        )


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Multi-scale deformable-attention pixel decoder.

    The ``transformer_in_features`` maps (coarsest first) are projected to ``conv_dim`` channels
    (1x1 conv + GroupNorm(32), ``input_proj.i``) and refined jointly by the deformable encoder
    (``transformer``). Finer input maps down to ``common_stride`` are then merged top-down:
    lateral 1x1 conv (``adapter_i``) + bilinearly upsampled coarser output, then a 3x3 conv + ReLU
    (``layer_i``). A 1x1 conv (``mask_features``) maps the finest output to ``mask_dim`` channels.
    Runs with autocast disabled, as published: in float32, or in the dtype of its parameters when
    they were cast for low-precision inference (``TEST.PRECISION``).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        conv_dim: int,
        mask_dim: int,
        norm: Optional[Union[str, Callable]] = None,
        transformer_in_features: List[str],
        common_stride: int,
    ):
        """
        Args:
            input_shape: backbone features the decoder reads, name -> ShapeSpec(channels, stride).
            transformer_dropout: dropout in the encoder layers.
            transformer_nheads: attention heads of the encoder.
            transformer_dim_feedforward: hidden size of the encoder feed-forward networks.
            transformer_enc_layers: number of encoder layers.
            conv_dim: channels of the encoder and of the FPN levels (a multiple of 32, GroupNorm).
            mask_dim: channels of the mask features.
            norm: norm of the lateral/output convs (:func:`get_norm` name); these convs have a bias
                only when ``norm == ""``.
            transformer_in_features: names in ``input_shape`` refined by the encoder.
            common_stride: stride of the mask features (4).

        Raises:
            ValueError: if ``input_shape`` is empty, lacks a transformer feature, or the finest
                transformer feature is finer than ``common_stride``.
        """
        super().__init__()
        missing = [f for f in transformer_in_features if f not in input_shape]
        if not input_shape or missing or not transformer_in_features:
            raise ValueError(
                f"MSDeformAttnPixelDecoder: transformer_in_features {list(transformer_in_features)} "
                f"must be a non-empty subset of input_shape {sorted(input_shape)}"
            )
        # finest first ("res2" ... "res5")
        shapes = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [name for name, _ in shapes]
        self.feature_strides = [spec.stride for _, spec in shapes]
        self.feature_channels = [spec.channels for _, spec in shapes]
        transformer_shapes = [(name, spec) for name, spec in shapes if name in transformer_in_features]
        self.transformer_in_features = [name for name, _ in transformer_shapes]
        self.transformer_feature_strides = [spec.stride for _, spec in transformer_shapes]
        self.transformer_num_feature_levels = len(transformer_shapes)

        # coarsest first
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(spec.channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for _, spec in transformer_shapes[::-1]
        )
        for projection, _norm in self.input_proj:
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim, nhead=transformer_nheads, num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward, dropout=transformer_dropout,
            num_feature_levels=self.transformer_num_feature_levels,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        c2_xavier_fill(self.mask_features)

        self.maskformer_num_feature_levels = 3
        self.common_stride = common_stride
        self.num_fpn_levels = int(math.log2(min(self.transformer_feature_strides)) - math.log2(common_stride))
        if self.num_fpn_levels < 0:
            raise ValueError(
                f"MSDeformAttnPixelDecoder: common_stride={common_stride} is coarser than the finest "
                f"transformer feature (stride {min(self.transformer_feature_strides)})"
            )

        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for idx, in_channels in enumerate(self.feature_channels[: self.num_fpn_levels]):
            lateral_conv = Conv2d(
                in_channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim)
            )
            output_conv = Conv2d(
                conv_dim,
                conv_dim,
                kernel_size=3,
                stride=1,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            c2_xavier_fill(lateral_conv)
            c2_xavier_fill(output_conv)
            self.add_module(f"adapter_{idx + 1}", lateral_conv)
            self.add_module(f"layer_{idx + 1}", output_conv)
            lateral_convs.append(lateral_conv)
            output_convs.append(output_conv)
        # top-down order (coarse to fine); plain lists, the modules are registered above
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        """Reads MODEL.SEM_SEG_HEAD.{IN_FEATURES, CONVS_DIM, MASK_DIM, NORM, TRANSFORMER_ENC_LAYERS,
        DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES, COMMON_STRIDE} and MODEL.MASK_FORMER.{DROPOUT,
        NHEADS}. As published, the encoder feed-forward size is 1024 regardless of
        MASK_FORMER.DIM_FEEDFORWARD, and the DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS/N_POINTS keys are
        not read (8 heads from MASK_FORMER.NHEADS, 4 points)."""
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "transformer_nheads": cfg.MODEL.MASK_FORMER.NHEADS,
            "transformer_dim_feedforward": 1024,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_in_features": head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
            "common_stride": head.COMMON_STRIDE,
        }

    def forward_features(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """
        Args:
            features: backbone maps [N, C_f, H/stride_f, W/stride_f] for every name in
                ``in_features`` (any float dtype; computed in the parameters' dtype).

        Returns:
            mask_features: [N, mask_dim, H/common_stride, W/common_stride];
            the encoder output at the coarsest level, [N, conv_dim, H/32, W/32] for res5;
            multi_scale_features: the first 3 outputs, coarsest first, each [N, conv_dim, h, w].

        Raises:
            KeyError: naming the missing entries of ``features``.
        """
        missing = [f for f in self.in_features if f not in features]
        if missing:
            raise KeyError(f"MSDeformAttnPixelDecoder: features {missing} missing; got {sorted(features)}")
        with torch.autocast(features[self.in_features[0]].device.type, enabled=False):
            return self._forward(features)

    def _forward(self, features: Dict[str, torch.Tensor]):
        dtype = parameter_dtype(self)
        srcs, pos = [], []
        for proj, name in zip(self.input_proj, self.transformer_in_features[::-1]):
            x = features[name].to(dtype)
            srcs.append(proj(x))
            pos.append(self.pe_layer(x))
        memory = self.transformer(srcs, pos)

        n = memory.shape[0]
        sizes = [src.shape[2] * src.shape[3] for src in srcs]
        # [N, h*w, C] -> [N, C, h, w] channels-last: a view for one image, a copy for a batch (whose
        # level slices are strided), so that interpolate takes its channels-last kernel either way
        out = [
            z.reshape(n, src.shape[2], src.shape[3], memory.shape[2]).permute(0, 3, 1, 2)
            .contiguous(memory_format=torch.channels_last)
            for z, src in zip(memory.split(sizes, dim=1), srcs)
        ]
        for lateral_conv, output_conv, name in zip(
            self.lateral_convs, self.output_convs, self.in_features[: self.num_fpn_levels][::-1]
        ):
            cur_fpn = lateral_conv(features[name].to(dtype))
            upsampled = F.interpolate(out[-1], size=cur_fpn.shape[-2:], mode="bilinear", align_corners=False)
            out.append(output_conv(cur_fpn + upsampled))
        return self.mask_features(out[-1]), out[0], out[: self.maskformer_num_feature_levels]

    def forward(self, features: Dict[str, torch.Tensor]):
        """Same as :meth:`forward_features`."""
        return self.forward_features(features)
