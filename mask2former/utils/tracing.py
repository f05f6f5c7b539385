"""Whether the running forward pass is being recorded into a graph."""
import torch

__all__ = ["is_tracing_or_exporting"]


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
