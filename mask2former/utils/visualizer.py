"""Draw panoptic, instance and semantic predictions over an image with OpenCV and numpy.

Class names and colours come from a dataset's metadata (``MetadataCatalog.get(name)``):
``thing_classes``/``thing_colors`` for things and instances, ``stuff_classes``/``stuff_colors``
for semantic classes and panoptic stuff. In Mask2Former's panoptic metadata ``stuff_*`` lists
*all* classes and ``thing_*`` only the things; when the thing lists are shorter than the class id
space (ADE20K panoptic), a thing's class id is mapped to its position among the thing ids of
``thing_dataset_id_to_contiguous_id``. Missing names fall back to ``"class <id>"``, missing
colours to a fixed palette. All methods return a new RGB image; the input is not modified.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from ..structures import instance_masks

__all__ = ["Visualizer"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _palette_color(index: int) -> Tuple[int, int, int]:
    """A saturated RGB colour for ``index``: hues spaced by the golden ratio."""
    hue = int(((index * 0.618033988749895) % 1.0) * 180)
    hsv = np.array([[[hue, 200, 235]]], dtype=np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _jitter(color: Sequence[int], seed: int) -> Tuple[int, int, int]:
    """``color`` shifted by a small seeded offset, so that instances of one class differ."""
    offset = np.random.RandomState(seed).uniform(-40, 40, size=3)
    return tuple(int(c) for c in np.clip(np.asarray(color, dtype=np.float64) + offset, 0, 255))


class Visualizer:
    """Overlays of segmentation predictions for one image.

    Args:
        img_rgb: uint8 [H, W, 3] image in RGB order.
        metadata: object with (any of) ``thing_classes``, ``thing_colors``, ``stuff_classes``,
            ``stuff_colors``, ``thing_dataset_id_to_contiguous_id`` attributes; ``None`` uses
            generic names and palette colours.
        alpha: opacity of the coloured masks in [0, 1].

    Raises:
        ValueError: ``img_rgb`` is not a uint8 [H, W, 3] array.
    """

    def __init__(self, img_rgb: np.ndarray, metadata: Any = None, *, alpha: float = 0.5):
        img_rgb = np.asarray(img_rgb)
        if img_rgb.dtype != np.uint8 or img_rgb.ndim != 3 or img_rgb.shape[2] != 3:
            raise ValueError(
                f"Visualizer needs a uint8 [H, W, 3] RGB image, got {img_rgb.dtype} {img_rgb.shape}"
            )
        self.img = np.ascontiguousarray(img_rgb)
        self.metadata = metadata
        self.alpha = alpha
        height, width = self.img.shape[:2]
        self._font_scale = max(0.4, np.sqrt(height * width) / 1400)
        self._thickness = max(1, int(round(np.sqrt(height * width) / 800)))

    def draw_sem_seg(self, sem_seg: Any, area_threshold: int = 0) -> np.ndarray:
        """Colour every class of a label map and name it.

        Args:
            sem_seg: int [H, W] class ids (tensor or array); ids outside ``stuff_classes`` (e.g.
                255, "ignore") are left undrawn when class names are known.
            area_threshold: classes covering fewer pixels are not drawn.

        Returns:
            uint8 [H, W, 3] RGB image.
        """
        labels = self._check_map(sem_seg, "sem_seg")
        num_classes = len(self._meta("stuff_classes") or [])
        ids, areas = np.unique(labels, return_counts=True)
        segments = []
        for cid, area in sorted(zip(ids.tolist(), areas.tolist()), key=lambda x: -x[1]):
            if area < area_threshold or cid < 0 or (num_classes and cid >= num_classes):
                continue
            segments.append((labels == cid, self._stuff_color(cid), self._stuff_name(cid)))
        return self._draw_segments(segments)

    def draw_panoptic_seg(
        self, panoptic_seg: Any, segments_info: List[Dict], area_threshold: int = 0
    ) -> np.ndarray:
        """Colour every panoptic segment (things slightly jittered per instance) and name it.

        Args:
            panoptic_seg: int [H, W] segment ids; 0 (or any id absent from ``segments_info``)
                is void.
            segments_info: one dict per segment with ``"id"``, ``"category_id"`` (contiguous
                class id) and ``"isthing"`` (bool), as produced by Mask2Former's panoptic
                inference.
            area_threshold: segments covering fewer pixels are not drawn.

        Returns:
            uint8 [H, W, 3] RGB image.
        """
        ids = self._check_map(panoptic_seg, "panoptic_seg")
        masks = [(ids == info["id"], info) for info in segments_info]
        segments = []
        for mask, info in sorted(masks, key=lambda m: -int(m[0].sum())):
            if not mask.any() or mask.sum() < area_threshold:
                continue
            cid = int(info["category_id"])
            if info.get("isthing", False):
                color, name = _jitter(self._thing_color(cid), info["id"]), self._thing_name(cid)
            else:
                color, name = self._stuff_color(cid), self._stuff_name(cid)
            segments.append((mask, color, name))
        return self._draw_segments(segments)

    def draw_instance_predictions(
        self, predictions: Any, score_threshold: float = 0.5
    ) -> np.ndarray:
        """Colour the masks of instances scoring at least ``score_threshold`` and label them.

        Args:
            predictions: ``Instances`` with ``pred_masks`` [N, H, W] (bool, or float > 0.5 is
                foreground) or compact ``pred_masks_rle`` (COCO RLE), ``scores`` [N],
                ``pred_classes`` [N]; boxes ``pred_boxes`` (XYXY
                pixels) are outlined when present and non-empty.
            score_threshold: minimum score of a drawn instance.

        Returns:
            uint8 [H, W, 3] RGB image; the highest-scoring instances are drawn on top.
        """
        scores = _to_numpy(predictions.scores).astype(np.float64)
        classes = _to_numpy(predictions.pred_classes).astype(np.int64)
        masks = instance_masks(predictions)
        boxes = getattr(predictions, "pred_boxes", None)
        boxes = (
            _to_numpy(boxes.tensor if hasattr(boxes, "tensor") else boxes)
            if boxes is not None
            else None
        )
        keep = [i for i in np.argsort(scores, kind="stable") if scores[i] >= score_threshold]
        segments, rectangles = [], []
        for i in keep:
            color = _jitter(self._thing_color(int(classes[i])), int(i))
            label = f"{self._thing_name(int(classes[i]))} {scores[i] * 100:.0f}%"
            segments.append((masks[i], color, label))
            if boxes is not None and boxes[i][2] > boxes[i][0] and boxes[i][3] > boxes[i][1]:
                rectangles.append((boxes[i], color))
        return self._draw_segments(segments, rectangles)

    def _check_map(self, seg_map: Any, name: str) -> np.ndarray:
        seg_map = _to_numpy(seg_map)
        if seg_map.shape != self.img.shape[:2]:
            raise ValueError(f"{name} has shape {seg_map.shape}, the image is {self.img.shape[:2]}")
        return seg_map.astype(np.int64)

    def _draw_segments(
        self,
        segments: List[Tuple[np.ndarray, Tuple[int, int, int], str]],
        rectangles: Sequence[Tuple[np.ndarray, Tuple[int, int, int]]] = (),
    ) -> np.ndarray:
        """Blend each (mask, colour, label) in order, outline it, then write the labels on top."""
        out = self.img.astype(np.float32)
        for mask, color, _ in segments:
            out[mask] = out[mask] * (1 - self.alpha) + np.asarray(color, np.float32) * self.alpha
        out = out.round().astype(np.uint8)
        for mask, color, _ in segments:
            contours, _ = cv2.findContours(
                mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
            )
            edge = tuple(int(c * 0.6) for c in color)
            cv2.drawContours(out, contours, -1, edge, self._thickness, lineType=cv2.LINE_AA)
        for box, color in rectangles:
            x0, y0, x1, y1 = (int(round(float(v))) for v in box)
            cv2.rectangle(out, (x0, y0), (x1, y1), tuple(int(c) for c in color), self._thickness)
        for mask, _, label in segments:
            self._put_label(out, label, self._label_position(mask))
        return out

    @staticmethod
    def _label_position(mask: np.ndarray) -> Tuple[int, int]:
        """(x, y) of the mask pixel farthest from the mask's border."""
        padded = np.pad(mask.astype(np.uint8), 1)
        distance = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
        return int(x), int(y)

    def _put_label(self, out: np.ndarray, text: str, center: Tuple[int, int]) -> None:
        """Write white ``text`` on a dark box centred at ``center``, kept inside the image."""
        (tw, th), baseline = cv2.getTextSize(text, _FONT, self._font_scale, self._thickness)
        height, width = out.shape[:2]
        x = int(np.clip(center[0] - tw // 2, 0, max(width - tw, 0)))
        y = int(np.clip(center[1] + th // 2, th + 2, max(height - baseline - 2, th + 2)))
        region = out[max(y - th - 2, 0) : y + baseline + 2, x : x + tw]
        region[...] = (region.astype(np.float32) * 0.4).astype(np.uint8)
        cv2.putText(
            out,
            text,
            (x, y),
            _FONT,
            self._font_scale,
            (255, 255, 255),
            self._thickness,
            lineType=cv2.LINE_AA,
        )

    def _meta(self, key: str) -> Optional[Any]:
        return getattr(self.metadata, key, None) if self.metadata is not None else None

    def _thing_index(self, cid: int) -> int:
        """Position of class ``cid`` in ``thing_classes`` (see the module docstring)."""
        thing_classes = self._meta("thing_classes") or []
        id_map = self._meta("thing_dataset_id_to_contiguous_id")
        if not id_map:
            return cid
        thing_ids = sorted(id_map.values())
        if len(thing_classes) <= thing_ids[-1] and cid in thing_ids:
            return thing_ids.index(cid)
        return cid

    @staticmethod
    def _lookup(table: Optional[Sequence], index: int) -> Optional[Any]:
        return table[index] if table is not None and 0 <= index < len(table) else None

    def _thing_name(self, cid: int) -> str:
        name = self._lookup(self._meta("thing_classes"), self._thing_index(cid))
        return name if name is not None else self._stuff_name(cid)

    def _thing_color(self, cid: int) -> Tuple[int, int, int]:
        color = self._lookup(self._meta("thing_colors"), self._thing_index(cid))
        return tuple(int(c) for c in color) if color is not None else self._stuff_color(cid)

    def _stuff_name(self, cid: int) -> str:
        name = self._lookup(self._meta("stuff_classes"), cid)
        return name if name is not None else f"class {cid}"

    def _stuff_color(self, cid: int) -> Tuple[int, int, int]:
        color = self._lookup(self._meta("stuff_colors"), cid)
        return tuple(int(c) for c in color) if color is not None else _palette_color(cid)
