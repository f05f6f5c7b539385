"""Transformer decoders (registered in ``TRANSFORMER_DECODER_REGISTRY``)."""
from .build import build_transformer_decoder
from .mask2former_transformer_decoder import MultiScaleMaskedTransformerDecoder

__all__ = ["MultiScaleMaskedTransformerDecoder", "build_transformer_decoder"]
