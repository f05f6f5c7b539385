"""Model components; importing this package registers all of them."""
from . import backbone, meta_arch, pixel_decoder, transformer_decoder  # noqa: F401
from .build import build_model

__all__ = ["build_model"]
