"""Box-coordinate conventions of Detectron2 dataset dicts (``bbox_mode``).

Detectron2's ``BoxMode`` when importable; otherwise an ``IntEnum`` with the same members and
values, so dataset dicts compare equal on both paths.
"""
from enum import IntEnum

__all__ = ["BoxMode"]

try:
    from detectron2.structures import BoxMode
except ImportError:

    class BoxMode(IntEnum):
        """How the 4 (or 5) numbers of a box are to be read; coordinates in pixels (ABS) or
        relative to the image size (REL)."""

        XYXY_ABS = 0  #: (x0, y0, x1, y1), absolute pixels
        XYWH_ABS = 1  #: (x0, y0, w, h), absolute pixels (COCO json)
        XYXY_REL = 2  #: (x0, y0, x1, y1), relative to image size
        XYWH_REL = 3  #: (x0, y0, w, h), relative to image size
        XYWHA_ABS = 4  #: (xc, yc, w, h, angle in degrees), rotated boxes
