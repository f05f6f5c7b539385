"""Compiled multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021, Eq. 2-3).

Autograd wrapper around the C++/CUDA kernels of the ``mask2former._C`` extension (operators
``torch.ops.mask2former.ms_deform_attn_forward`` / ``ms_deform_attn_backward``, sources in
``mask2former/layers/csrc``). Importing this module registers it with
:func:`~mask2former.layers.ms_deform_attn_op.register_ms_deform_attn_impl` as implementation
``"compiled"`` for the CPU and, when the extension was built with CUDA, for CUDA, so that
``impl="auto"`` prefers it there. It computes what
:func:`~mask2former.layers.ms_deform_attn.ms_deform_attn_pytorch` computes (bilinear sampling,
zero padding, ``align_corners=False``), up to the floating-point summation order.

For inference on the CPU, :func:`ms_deform_attn_fused_inference` (operator
``torch.ops.mask2former.ms_deform_attn_forward_fused``, no autograd) also computes the sampling
locations and the attention softmax inside the kernel; :class:`~mask2former.layers.MSDeformAttn`
uses it when :func:`fused_forward_applies`.

The CPU kernels exist in three builds, chosen at run time like ATen's own kernels (GCC builds on
x86-64): AVX-512 (F, BW, VL, DQ) + FMA when ATen's CPU capability is AVX512, AVX2 + FMA when it is
AVX2 (e.g. under ``ATEN_CPU_CAPABILITY=avx2``), the baseline instruction set otherwise or under
``ATEN_CPU_CAPABILITY=default``; ``mask2former._C.cpu_kernel_isa()`` names the one in use.

The extension is built by ``pip install --no-build-isolation -e .``. Without it (pure-Python
install, or an extension built for another torch) importing this module logs one warning and
registers nothing, and ``ms_deform_attn`` keeps using the PyTorch implementation.
"""
import logging
from types import ModuleType
from typing import Optional, Tuple

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

from ..utils.tracing import eager_inference
from .ms_deform_attn_op import register_ms_deform_attn_impl, selected_ms_deform_attn_impl

__all__ = [
    "EXTENSION_AVAILABLE",
    "IMPL_NAME",
    "MSDeformAttnFunction",
    "fused_forward_applies",
    "ms_deform_attn_compiled",
    "ms_deform_attn_fused_inference",
]

logger = logging.getLogger(__name__)

IMPL_NAME = "compiled"


def _load_extension() -> Optional[ModuleType]:
    """Import ``mask2former._C`` (which registers the operators), or warn and return None."""
    try:
        from .. import _C
    except (ImportError, OSError) as exc:
        logger.warning(
            "The compiled multi-scale deformable attention op is unavailable (%s); falling back to "
            "the PyTorch implementation. Build it with `pip install --no-build-isolation -e .`.",
            exc,
        )
        return None
    return _C


_C = _load_extension()
EXTENSION_AVAILABLE = _C is not None


class MSDeformAttnFunction(torch.autograd.Function):
    """Autograd function of the compiled operators; arguments as :func:`ms_deform_attn_compiled`
    after its conversions. Differentiable with respect to ``value``, ``sampling_locations`` and
    ``attention_weights`` (first order only)."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return torch.ops.mask2former.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_output: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        grad_value, grad_locations, grad_weights = torch.ops.mask2former.ms_deform_attn_backward(
            *ctx.saved_tensors, grad_output.contiguous()
        )
        needs = ctx.needs_input_grad
        return (
            grad_value if needs[0] else None,
            None,
            None,
            grad_locations if needs[3] else None,
            grad_weights if needs[4] else None,
        )


def ms_deform_attn_compiled(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention sampling with the compiled kernels.

    Args:
        value: [N, S, heads, C], float32 / float64 / bfloat16 / float16 (CPU and CUDA).
        spatial_shapes: integer [L, 2], (H_l, W_l) per level; converted to int64. On the CPU, and
            whenever it is a CPU tensor, the kernels check that the levels add up to ``S``; CUDA
            tensors are trusted so that the call does not synchronise with the host.
        level_start_index: integer [L], offset of each level in S; converted to int64.
        sampling_locations: [N, Lq, heads, L, P, 2] normalised (x, y) on value's device, in
            value's dtype or float32 for a 16-bit value; pixel coordinate ``x * W_l - 0.5``,
            samples outside the map read zeros.
        attention_weights: [N, Lq, heads, L, P] on value's device, in value's or
            sampling_locations' dtype (read in the latter).

    Returns:
        [N, Lq, heads * C] in value's dtype; accumulated in float32 for 16-bit inputs. The
        gradients of the locations and weights come in their own dtypes.

    Raises:
        RuntimeError: if the ``mask2former._C`` extension is not built.
        ValueError: for inconsistent shapes, dtypes or devices (from the kernels' checks).
    """
    if not EXTENSION_AVAILABLE:
        raise RuntimeError(
            "mask2former._C is not built; install with `pip install --no-build-isolation -e .`"
        )
    if value.device.type == "cpu":
        spatial_shapes = spatial_shapes.cpu()
        level_start_index = level_start_index.cpu()
    return MSDeformAttnFunction.apply(
        value, spatial_shapes.long(), level_start_index.long(), sampling_locations, attention_weights
    )


def ms_deform_attn_fused_inference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    reference_points: torch.Tensor,
    sampling_offsets: torch.Tensor,
    attention_logits: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention sampling with the locations and the attention softmax
    computed inside the CPU kernel (inference only: the result has no autograd history).

    It returns what :func:`ms_deform_attn_compiled` returns for ``sampling_locations =
    torch.addcdiv(reference_points[:, :, None, :, None], sampling_offsets, (W_l, H_l))`` (bitwise
    the same locations) and ``attention_weights = F.softmax(attention_logits, -1)`` reshaped to
    [N, Lq, heads, L, P]; the softmax is computed in the coordinates' dtype as ATen's CPU softmax
    over a short last dimension (maximum, exponentials, sequential sum, multiplication by its
    reciprocal), with SLEEF's float32 exp in the AVX2 / AVX-512 builds (torch.exp's): the weights
    are ``F.softmax``'s bit for bit where ATen's CPU capability is AVX512 (as measured with torch
    2.13), and otherwise within a few float32 ulps of them (std::exp, or ATen's AVX2 summation
    order).

    Args:
        value: CPU [N, S, heads, C], float32 / float64 / bfloat16 / float16.
        spatial_shapes: integer [L, 2], (H_l, W_l) per level; converted to CPU int64.
        level_start_index: integer [L], offset of each level in S; converted to CPU int64.
        reference_points: CPU [N, Lq, L, 2], normalised (x, y) per level (``align_corners=False``:
            pixel coordinate ``x * W_l - 0.5``).
        sampling_offsets: CPU [N, Lq, heads, L, P, 2], (x, y) offsets in pixels of level l.
        attention_logits: CPU [N, Lq, heads, L * P], logits of the softmax over levels and points.
            The three coordinate tensors share one dtype: value's, or float32 for a 16-bit value.

    Returns:
        [N, Lq, heads * C] in value's dtype (accumulated in float32 for 16-bit values).

    Raises:
        RuntimeError: if the ``mask2former._C`` extension is not built.
        ValueError: for inconsistent shapes, dtypes or devices, naming the argument.
    """
    if not EXTENSION_AVAILABLE:
        raise RuntimeError(
            "mask2former._C is not built; install with `pip install --no-build-isolation -e .`"
        )
    return torch.ops.mask2former.ms_deform_attn_forward_fused(
        value, spatial_shapes.cpu().long(), level_start_index.cpu().long(), reference_points,
        sampling_offsets, attention_logits,
    )


def fused_forward_applies(*tensors: torch.Tensor) -> bool:
    """Whether :class:`~mask2former.layers.MSDeformAttn` may run
    :func:`ms_deform_attn_fused_inference` on ``tensors`` (the op's tensor inputs): the extension
    is loaded, every tensor is on the CPU, autograd needs no gradient (``torch.is_grad_enabled()``
    is False or no tensor requires grad), nothing is being traced, scripted, compiled or exported
    (``torch.jit``, ONNX, ``torch.compile`` / ``torch.export``), and the implementation
    :func:`~mask2former.layers.ms_deform_attn` would select on the CPU (``impl`` from
    ``MASK2FORMER_MSDA_IMPL``, default ``"auto"``) is this module's compiled one.

    Raises:
        ValueError: if ``MASK2FORMER_MSDA_IMPL`` names an unknown implementation.
    """
    if not EXTENSION_AVAILABLE or any(t.device.type != "cpu" for t in tensors):
        return False
    if not eager_inference(*tensors):
        return False
    return selected_ms_deform_attn_impl("cpu") is ms_deform_attn_compiled


if EXTENSION_AVAILABLE:
    register_ms_deform_attn_impl(
        IMPL_NAME, ms_deform_attn_compiled, ("cpu", "cuda") if _C.compiled_with_cuda() else ("cpu",)
    )
