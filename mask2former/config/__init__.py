"""Configuration: Detectron2's key schema with the Mask2Former keys."""
from .configurable import configurable

__all__ = ["configurable"]
