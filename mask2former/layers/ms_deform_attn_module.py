"""Multi-scale deformable attention module (Zhu et al., "Deformable DETR", ICLR 2021, Eq. 3).

Each query attends to ``n_points`` locations per head and level, placed at learned offsets
around its reference point, with attention weights predicted from the query (softmax over levels
and points together) instead of query-key dot products.

In a bfloat16 / float16 network (``TEST.PRECISION``) the projections run in that dtype, while the
sampling locations (float32 reference point + offset / level size) and the attention softmax are
computed in float32: in bfloat16 a normalised coordinate in [0.5, 1) is spaced 2^-8 apart, 0.6
pixel on a 152-pixel level. The op samples the 16-bit values at these float32 locations.

Inference on the CPU with the compiled op (``MASK2FORMER_MSDA_IMPL`` unset, ``auto`` or
``compiled``; no gradient needed; not traced, scripted, compiled or exported) runs the fused
kernel :func:`~mask2former.layers.ms_deform_attn_compiled.ms_deform_attn_fused_inference`, which
computes the locations and the softmax itself (see
:func:`~mask2former.layers.ms_deform_attn_compiled.fused_forward_applies`); everywhere else the
locations and weights are computed here and passed to :func:`ms_deform_attn`.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .ms_deform_attn_compiled import fused_forward_applies, ms_deform_attn_fused_inference
from .ms_deform_attn_op import ms_deform_attn
from .token_linear import TokenLinear


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with the published parameter names.

    Submodules, all :class:`~mask2former.layers.TokenLinear`: ``sampling_offsets`` (d_model ->
    heads*levels*points*2), ``attention_weights`` (d_model -> heads*levels*points), ``value_proj``
    and ``output_proj`` (d_model -> d_model).

    Args:
        d_model: embedding dimension; must be divisible by ``n_heads``.
        n_levels: number of feature levels L.
        n_heads: number of attention heads.
        n_points: sampling points per head and level P.

    Raises:
        ValueError: if ``d_model`` is not divisible by ``n_heads``.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"MSDeformAttn: d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points

        self.sampling_offsets = TokenLinear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = TokenLinear(d_model, n_heads * n_levels * n_points)
        self.value_proj = TokenLinear(d_model, d_model)
        self.output_proj = TokenLinear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Deformable DETR's initialisation: zero offset weights, with biases that put head h's
        k-th point (k = 1..P) at k pixels from the reference point along direction 2*pi*h/heads
        (scaled so the larger coordinate is k); uniform attention; Xavier projections."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid_init = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid_init = grid_init / grid_init.abs().max(-1, keepdim=True)[0]
        grid_init = grid_init.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid_init = grid_init * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid_init.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        input_spatial_shapes: torch.Tensor,
        input_level_start_index: torch.Tensor,
        input_padding_mask: Optional[torch.Tensor] = None,
        spatial_shapes_list: Optional[Sequence[Tuple[int, int]]] = None,
    ) -> torch.Tensor:
        """
        Args:
            query: [N, Lq, d_model] (query features, positional embedding included).
            reference_points: [N, Lq, L, 2], normalised (x, y) in [0, 1] per level, (0, 0) the
                top-left corner; offsets are measured in pixels of each level. float32 (or the
                query's dtype); the sampling locations are computed in float32 at least.
            input_flatten: [N, S, d_model], the L feature maps flattened and concatenated.
            input_spatial_shapes: int64 [L, 2], (H_l, W_l) of each level.
            input_level_start_index: int64 [L], start of each level in S.
            input_padding_mask: optional bool [N, S], True at padding positions (their values
                are zeroed).
            spatial_shapes_list: optional, ``input_spatial_shapes`` as (H_l, W_l) pairs (see
                :func:`ms_deform_attn`), for traced or exported graphs that stay shape-generic.

        Returns:
            [N, Lq, d_model] in the query's dtype. The sampling runs in the fused CPU kernel when
            ``fused_forward_applies`` (inference on the CPU with the compiled op), otherwise in
            :func:`ms_deform_attn`; both give the same locations, and weights equal up to float32
            rounding of the softmax's exponential.

        Raises:
            ValueError: if ``reference_points`` is not [N, Lq, L, 2], or as :func:`ms_deform_attn`.
        """
        n, len_q, _ = query.shape
        _, len_in, _ = input_flatten.shape
        if reference_points.shape != (n, len_q, self.n_levels, 2):
            raise ValueError(
                f"MSDeformAttn: reference_points must be [N={n}, Lq={len_q}, L={self.n_levels}, 2], "
                f"got {tuple(reference_points.shape)}"
            )

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, len_in, self.n_heads, self.d_model // self.n_heads)

        grid_shape = (n, len_q, self.n_heads, self.n_levels, self.n_points)
        # float32 from here on for 16-bit queries (no-ops for float32): see the module docstring
        sampling_offsets = self.sampling_offsets(query).view(*grid_shape, 2).float()
        attention_logits = self.attention_weights(query).view(*grid_shape[:3], self.n_levels * self.n_points).float()
        if fused_forward_applies(value, reference_points, sampling_offsets, attention_logits):
            output = ms_deform_attn_fused_inference(
                value, input_spatial_shapes, input_level_start_index, reference_points.float(),
                sampling_offsets, attention_logits,
            )
            return self.output_proj(output)
        # softmax over levels and points together
        attention_weights = F.softmax(attention_logits, -1).view(grid_shape)
        # pixel offsets -> normalised units of each level: divide by (W_l, H_l)
        offset_normalizer = torch.stack([input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]], -1)
        reference = reference_points[:, :, None, :, None, :].float()
        normalizer = offset_normalizer[None, None, None, :, None, :].to(sampling_offsets.dtype)
        if torch.onnx.is_in_onnx_export():  # ONNX has no fused addcdiv
            sampling_locations = reference + sampling_offsets / normalizer
        else:  # one fused pass, bitwise the same as the two operations
            sampling_locations = torch.addcdiv(reference, sampling_offsets, normalizer)
        output = ms_deform_attn(
            value,
            input_spatial_shapes,
            input_level_start_index,
            sampling_locations,
            attention_weights,
            spatial_shapes_list=spatial_shapes_list,
        )
        return self.output_proj(output)
