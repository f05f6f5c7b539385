"""Generic layers: shapes, norms, convolutions, and the multi-scale deformable attention op."""
from .conv import Conv2d, c2_msra_fill, c2_xavier_fill
from .norm import FrozenBatchNorm2d, LayerNorm2d, get_norm
from .shape_spec import ShapeSpec

__all__ = [
    "Conv2d",
    "FrozenBatchNorm2d",
    "LayerNorm2d",
    "ShapeSpec",
    "c2_msra_fill",
    "c2_xavier_fill",
    "get_norm",
]
