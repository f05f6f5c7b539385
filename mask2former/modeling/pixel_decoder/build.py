"""Build the pixel decoder named by the config."""
from typing import Dict

from torch import nn

from ...layers import ShapeSpec
from ...utils.registry import PIXEL_DECODER_REGISTRY
from . import fpn, msdeformattn  # noqa: F401  (register the built-in decoders)


def build_pixel_decoder(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """Build ``PIXEL_DECODER_REGISTRY[cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME](cfg, input_shape)``.

    Args:
        cfg: config with the MODEL.SEM_SEG_HEAD (and, per decoder, MODEL.MASK_FORMER) keys.
        input_shape: backbone features, name -> ShapeSpec(channels, stride); the decoder keeps
            those in MODEL.SEM_SEG_HEAD.IN_FEATURES.

    Returns:
        a module whose ``forward_features(features)`` returns
        ``(mask_features, transformer_encoder_features, multi_scale_features)``.

    Raises:
        KeyError: if the name is not registered (naming the config key and the registered names).
        ValueError: if the registered class has no ``forward_features`` method.
    """
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    if name not in PIXEL_DECODER_REGISTRY:
        registered = sorted(n for n, _ in PIXEL_DECODER_REGISTRY)
        raise KeyError(
            f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME={name!r} is not a registered pixel decoder; "
            f"expected one of {registered}"
        )
    decoder = PIXEL_DECODER_REGISTRY.get(name)(cfg, input_shape)
    if not callable(getattr(decoder, "forward_features", None)):
        raise ValueError(
            f"Pixel decoder {name!r} (MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME) has no forward_features method"
        )
    return decoder
