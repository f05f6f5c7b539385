"""Build the configured backbone from :data:`BACKBONE_REGISTRY`."""
from typing import Optional

from ...layers import ShapeSpec
from ...utils.registry import BACKBONE_REGISTRY
from .backbone import Backbone


def build_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> Backbone:
    """Build ``cfg.MODEL.BACKBONE.NAME`` (e.g. ``build_resnet_backbone``, ``D2SwinTransformer``).

    Args:
        cfg: config with ``MODEL.BACKBONE.NAME`` and the keys that backbone reads.
        input_shape: input image shape; default ``ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))``.

    Raises:
        KeyError: if ``MODEL.BACKBONE.NAME`` names no registered backbone.
        TypeError: if the registered builder does not return a :class:`Backbone`.
    """
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    name = cfg.MODEL.BACKBONE.NAME
    if name not in BACKBONE_REGISTRY:
        raise KeyError(
            f"MODEL.BACKBONE.NAME={name!r} is not registered; "
            f"known: {sorted(k for k, _ in BACKBONE_REGISTRY)}"
        )
    backbone = BACKBONE_REGISTRY.get(name)(cfg, input_shape)
    if not isinstance(backbone, Backbone):
        raise TypeError(
            f"MODEL.BACKBONE.NAME={name!r} built a {type(backbone).__name__}, not a Backbone"
        )
    return backbone
