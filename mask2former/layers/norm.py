"""Normalisation layers with Detectron2's names and state-dict layout."""
import torch
from torch import nn
from torch.nn import functional as F


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, as in Detectron2.

    Buffers ``weight``, ``bias``, ``running_mean``, ``running_var`` (all float [C]) are part of the
    state dict, so model-zoo checkpoints load into it. ``forward`` maps [N, C, H, W] to the same
    shape: ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``.
    """

    _version = 3

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)
        self.register_buffer("num_batches_tracked", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            bias = self.bias - self.running_mean * scale
            return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + bias.reshape(1, -1, 1, 1).to(x.dtype)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, *args, **kwargs):
        # Caffe2-converted backbones carry only weight and bias.
        state_dict.setdefault(prefix + "running_mean", torch.zeros_like(self.running_mean))
        state_dict.setdefault(prefix + "running_var", torch.ones_like(self.running_var))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm2d/SyncBatchNorm in ``module`` (in place) by a frozen copy."""
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            frozen = cls(module.num_features, module.eps)
            if module.affine:
                frozen.weight.data = module.weight.data.clone().detach()
                frozen.bias.data = module.bias.data.clone().detach()
            frozen.running_mean.data = module.running_mean.data
            frozen.running_var.data = module.running_var.data
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                module.add_module(name, new_child)
        return module


def get_norm(norm, out_channels: int):
    """Build a normalisation layer by Detectron2 name.

    Args:
        norm: ``""``/None (no norm), ``"BN"``, ``"SyncBN"``, ``"FrozenBN"``, ``"GN"`` (32 groups) or
            ``"LN"`` (channel-wise LayerNorm on [N, C, H, W]), or a callable ``channels -> module``.
        out_channels: number of channels C.

    Raises:
        ValueError: for an unknown name.
    """
    if norm is None or norm == "":
        return None
    if callable(norm):
        return norm(out_channels)
    factories = {
        "BN": nn.BatchNorm2d,
        "SyncBN": nn.SyncBatchNorm,
        "FrozenBN": FrozenBatchNorm2d,
        "GN": lambda c: nn.GroupNorm(32, c),
        "LN": LayerNorm2d,
    }
    if norm not in factories:
        raise ValueError(f"Unknown norm {norm!r}; expected one of {sorted(factories)}")
    return factories[norm](out_channels)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of [N, C, H, W] feature maps."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]
