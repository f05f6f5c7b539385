"""Mask helpers."""
import torch

from .boxes import Boxes


def masks_to_boxes(masks: torch.Tensor) -> Boxes:
    """Tight boxes around binary masks, like Detectron2's ``BitMasks.get_bounding_boxes``.

    Args:
        masks: bool (or 0/1) [N, H, W].

    Returns:
        ``Boxes`` float32 [N, 4], XYXY in pixels with exclusive right/bottom edges
        (``x1 = last column + 1``); an empty mask gets the all-zero box.
    """
    masks = masks.bool()
    n, h, w = masks.shape
    boxes = torch.zeros(n, 4, dtype=torch.float32, device=masks.device)
    cols = masks.any(dim=1)
    rows = masks.any(dim=2)
    nonempty = cols.any(dim=1)
    if nonempty.any():
        col_idx = torch.arange(w, device=masks.device)
        row_idx = torch.arange(h, device=masks.device)
        x0 = torch.where(cols, col_idx, w).min(dim=1).values
        x1 = torch.where(cols, col_idx, -1).max(dim=1).values + 1
        y0 = torch.where(rows, row_idx, h).min(dim=1).values
        y1 = torch.where(rows, row_idx, -1).max(dim=1).values + 1
        found = torch.stack((x0, y0, x1, y1), dim=1).to(torch.float32)
        boxes[nonempty] = found[nonempty]
    return Boxes(boxes)
