"""Convolution with optional norm and activation, and the Caffe2 weight initialisers."""
import torch
from torch import nn
from torch.nn import functional as F


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional ``norm`` module and ``activation`` callable.

    The norm is a child module named ``norm`` (state-dict key ``<name>.norm.*``), as in Detectron2.
    Input [N, C_in, H, W] -> output [N, C_out, H', W'].
    """

    def __init__(self, *args, norm=None, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        for step in (self.norm, self.activation):
            if step is not None:
                x = step(x)
        return x


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2 "XavierFill": kaiming-uniform with a=1 on the weight, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


def c2_msra_fill(module: nn.Module) -> None:
    """Caffe2 "MSRAFill": kaiming-normal (fan_out, relu) on the weight, zero bias."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)
