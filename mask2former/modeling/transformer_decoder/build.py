"""Build the configured Transformer decoder."""
from torch import nn

from ...utils.registry import TRANSFORMER_DECODER_REGISTRY


def build_transformer_decoder(cfg, in_channels: int, mask_classification: bool = True) -> nn.Module:
    """Build ``cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME`` from ``TRANSFORMER_DECODER_REGISTRY``.

    Args:
        cfg: config node.
        in_channels: channels of the features the decoder attends to.
        mask_classification: passed to the decoder (Mask2Former requires True).

    Raises:
        KeyError: the name is not registered.
    """
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    if name not in TRANSFORMER_DECODER_REGISTRY:
        raise KeyError(
            f"MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME={name!r} is not registered; "
            f"known: {sorted(k for k, _ in TRANSFORMER_DECODER_REGISTRY)}"
        )
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, mask_classification)
