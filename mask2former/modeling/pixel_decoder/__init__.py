"""Pixel decoders: backbone features -> per-pixel mask features and multi-scale features."""
from .build import build_pixel_decoder
from .fpn import BasePixelDecoder
from .msdeformattn import MSDeformAttnPixelDecoder

__all__ = ["BasePixelDecoder", "MSDeformAttnPixelDecoder", "build_pixel_decoder"]
