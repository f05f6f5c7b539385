"""A linear layer over many tokens that runs as a oneDNN pointwise (1x1) convolution for CPU
inference."""
import torch
from torch import nn
from torch.nn import functional as F

from ..utils.tracing import eager_inference

__all__ = ["TokenLinear", "pointwise_conv_applies"]


def pointwise_conv_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :class:`TokenLinear` runs ``x`` through the pointwise convolution: ``x`` is on the
    CPU, oneDNN is available, autograd needs no gradient (``torch.is_grad_enabled()`` is False or
    neither tensor requires grad), and nothing is being traced, scripted, compiled or exported
    (``torch.jit``, ONNX, ``torch.compile`` / ``torch.export``), whose graphs keep a plain
    ``linear``."""
    if x.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return eager_inference(x, weight)


class TokenLinear(nn.Linear):
    """:class:`torch.nn.Linear` (same ``weight`` [out_features, in_features] and ``bias``
    [out_features], same state-dict keys) for inputs with many tokens, such as the pixel decoder's
    deformable-attention encoder (about 20k tokens at an 800x1216 input).

    For CPU inference (:func:`pointwise_conv_applies`) the tokens [..., in_features] are viewed,
    without a copy, as a channels-last image [1, in_features, 1, T] and multiplied by a 1x1
    convolution: PyTorch sends float32 ``linear`` to MKL, whose GEMM reaches 45-65 G multiply-adds/s
    at the encoder's shapes on a 2-core AMD EPYC (AVX-512), while oneDNN's pointwise convolution
    reaches 80-100 G and adds the bias in the same pass (bfloat16: 115-170 G vs 140-205 G). The
    result equals ``F.linear`` up to float rounding (a different summation order). Training, other
    devices, tracing and export run ``F.linear``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in_features] -> [..., out_features], in ``x``'s dtype."""
        if not pointwise_conv_applies(x, self.weight):
            return F.linear(x, self.weight, self.bias)
        tokens = x.reshape(1, 1, -1, self.in_features).permute(0, 3, 1, 2)
        weight = self.weight.view(self.out_features, self.in_features, 1, 1)
        out = F.conv2d(tokens, weight, self.bias)
        return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], self.out_features)
