"""Generic layers: shapes, norms, convolutions, and the multi-scale deformable attention op."""
from .conv import Conv2d, c2_msra_fill, c2_xavier_fill
from .fusion import fold_frozen_batchnorm
from .ms_deform_attn_op import ms_deform_attn, ms_deform_attn_pytorch, register_ms_deform_attn_impl
from . import ms_deform_attn_compiled  # noqa: F401  (registers the compiled op when mask2former._C is built)
from .ms_deform_attn_module import MSDeformAttn
from .norm import FrozenBatchNorm2d, LayerNorm2d, get_norm
from .position_encoding import PositionEmbeddingSine
from .shape_spec import ShapeSpec
from .token_linear import TokenLinear

__all__ = [
    "Conv2d",
    "FrozenBatchNorm2d",
    "LayerNorm2d",
    "MSDeformAttn",
    "PositionEmbeddingSine",
    "ShapeSpec",
    "TokenLinear",
    "c2_msra_fill",
    "c2_xavier_fill",
    "fold_frozen_batchnorm",
    "get_norm",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
    "register_ms_deform_attn_impl",
]
