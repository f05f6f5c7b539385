"""Whether the running forward pass is being recorded into a graph, or needs gradients."""
import torch

__all__ = ["eager_inference", "is_tracing_or_exporting"]


def is_tracing_or_exporting() -> bool:
    """True while ``torch.jit`` scripts or traces, ONNX exports, or ``torch.compile`` /
    ``torch.export`` record the forward pass: eager-only fast paths (the fused deformable-attention
    kernel, :class:`~mask2former.layers.TokenLinear`'s convolution) then step aside so that the
    graph keeps the portable operations."""
    return (
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )


def eager_inference(*tensors: torch.Tensor) -> bool:
    """True when autograd needs no gradient through ``tensors`` (``torch.is_grad_enabled()`` is
    False or none of them requires grad) and nothing is traced or exported
    (:func:`is_tracing_or_exporting`): where the inference-only CPU paths (fused deformable
    attention, pointwise-convolution linears, in-place mask products, the compiled band resize)
    may replace the portable, differentiable operations."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return not is_tracing_or_exporting()
