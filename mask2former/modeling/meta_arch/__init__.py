"""Meta-architectures and segmentation heads (registered in Detectron2-compatible registries)."""
from .mask_former_head import MaskFormerHead
from .maskformer_model import MaskFormer

__all__ = ["MaskFormer", "MaskFormerHead"]
