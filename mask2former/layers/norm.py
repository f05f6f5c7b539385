"""Normalisation layers with Detectron2's names and state-dict layout."""
import torch
from torch import nn
from torch.nn import functional as F


_BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, as in Detectron2.

    Buffers ``weight``, ``bias``, ``running_mean``, ``running_var`` (all float [C]) are part of the
    state dict, so model-zoo checkpoints load into it; a fresh layer is the identity map.
    ``forward`` maps [N, C, H, W] to the same shape:
    ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``.
    """

    _version = 3

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        # Buffer names (and their order) are those of the published checkpoints' frozen BN layers.
        initial = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0 - eps}
        for name, fill in initial.items():
            self.register_buffer(name, torch.full((num_features,), fill))

    def _scale_and_shift(self, dtype: torch.dtype):
        """Per-channel ``(scale, shift)`` of the equivalent affine map, shaped [1, C, 1, 1]."""
        scale = torch.rsqrt(self.running_var + self.eps) * self.weight
        shift = self.bias - scale * self.running_mean
        return scale.view(1, -1, 1, 1).to(dtype), shift.view(1, -1, 1, 1).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.requires_grad:
            # Inference: one fused kernel.
            return F.batch_norm(
                x, self.running_mean, self.running_var, weight=self.weight, bias=self.bias,
                training=False, eps=self.eps,
            )
        # With autograd, the explicit affine map avoids batch_norm's gradient buffers for the stats.
        scale, shift = self._scale_and_shift(x.dtype)
        return x * scale + shift

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, *args, **kwargs):
        # Caffe2-converted backbones carry only weight and bias: the statistics stay the identity.
        for name, like in (("running_mean", torch.zeros_like), ("running_var", torch.ones_like)):
            state_dict.setdefault(prefix + name, like(getattr(self, name)))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, eps={self.eps}"

    @classmethod
    def _from_batchnorm(cls, bn: nn.Module) -> "FrozenBatchNorm2d":
        """Frozen copy of one BatchNorm2d/SyncBatchNorm (statistics shared, affine cloned)."""
        frozen = cls(bn.num_features, bn.eps)
        if bn.affine:
            frozen.weight = bn.weight.detach().clone()
            frozen.bias = bn.bias.detach().clone()
        frozen.running_mean = bn.running_mean.data
        frozen.running_var = bn.running_var.data
        return frozen

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm2d/SyncBatchNorm in ``module`` (in place) by a frozen copy.

        Returns ``module`` itself, or its frozen copy when ``module`` is a batch norm.
        """
        if isinstance(module, _BATCH_NORMS):
            return cls._from_batchnorm(module)
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, _BATCH_NORMS):
                    setattr(parent, name, cls._from_batchnorm(child))
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
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(normalized_shape))
        self.bias = nn.Parameter(torch.empty(normalized_shape))
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]
