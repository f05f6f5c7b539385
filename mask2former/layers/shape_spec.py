"""Feature-map contract passed between model stages (Detectron2's ``ShapeSpec``)."""
from dataclasses import dataclass
from typing import Optional

try:
    from detectron2.layers import ShapeSpec
except ImportError:

    @dataclass
    class ShapeSpec:
        """Shape of one feature map: ``channels`` and ``stride`` (input pixels per feature pixel)."""

        channels: Optional[int] = None
        height: Optional[int] = None
        width: Optional[int] = None
        stride: Optional[int] = None
