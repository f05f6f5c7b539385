"""Build the configured meta-architecture."""
import torch
from torch import nn

from ..utils.registry import META_ARCH_REGISTRY


def build_model(cfg) -> nn.Module:
    """Build ``cfg.MODEL.META_ARCHITECTURE`` from :data:`META_ARCH_REGISTRY` on ``cfg.MODEL.DEVICE``.

    Weights are randomly initialised; load a checkpoint with :class:`mask2former.checkpoint.Checkpointer`.

    Raises:
        KeyError: if ``MODEL.META_ARCHITECTURE`` names no registered meta-architecture.
    """
    name = cfg.MODEL.META_ARCHITECTURE
    if name not in META_ARCH_REGISTRY:
        raise KeyError(
            f"MODEL.META_ARCHITECTURE={name!r} is not registered; "
            f"known: {sorted(k for k, _ in META_ARCH_REGISTRY)}"
        )
    model = META_ARCH_REGISTRY.get(name)(cfg)
    model.to(torch.device(cfg.MODEL.DEVICE))
    return model
