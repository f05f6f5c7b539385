"""Registries of the model components.

When Detectron2 is importable, the meta-architecture, semantic-segmentation head and backbone
registries *are* Detectron2's, so ``import mask2former`` plugs the model into Detectron2's
``build_model``. Otherwise they are plain :class:`fvcore.common.registry.Registry` objects with the
same names. Pixel decoders and transformer decoders always have registries of their own.
"""
from fvcore.common.registry import Registry

try:
    from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY

    DETECTRON2_AVAILABLE = True
except ImportError:
    BACKBONE_REGISTRY = Registry("BACKBONE")
    BACKBONE_REGISTRY.__doc__ = "Backbones: ``fn(cfg, input_shape: ShapeSpec) -> Backbone``."
    META_ARCH_REGISTRY = Registry("META_ARCH")
    META_ARCH_REGISTRY.__doc__ = "Meta-architectures: ``cls(cfg) -> nn.Module``."
    SEM_SEG_HEADS_REGISTRY = Registry("SEM_SEG_HEADS")
    SEM_SEG_HEADS_REGISTRY.__doc__ = "Segmentation heads: ``cls(cfg, input_shape) -> nn.Module``."
    DETECTRON2_AVAILABLE = False

PIXEL_DECODER_REGISTRY = Registry("PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = "Pixel decoders: ``cls(cfg, input_shape: dict[str, ShapeSpec])``."

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = (
    "Transformer decoders: ``cls(cfg, in_channels: int, mask_classification: bool)``."
)


def register_once(registry):
    """Decorator registering ``obj`` under its ``__name__`` unless that name is already taken.

    Detectron2 ships its own ``build_resnet_backbone``; with Detectron2 installed that one is kept
    (same parameter names), so checkpoints are interchangeable between both paths.
    """

    def deco(obj):
        if obj.__name__ not in registry:
            registry.register(obj)
        return obj

    return deco
