"""Augmentation policies: each samples a deterministic fvcore ``Transform`` for one image.

A policy has ``get_transform(image)``; policies that also look at the semantic labels set
``needs_sem_seg = True`` and take ``get_transform(image, sem_seg)``. Randomness comes from
NumPy's global generator (``np.random.seed`` makes a mapper deterministic), as in Detectron2.
Sizes are ``(height, width)`` in pixels.

- :class:`RandomFlip`: horizontal (or vertical) flip with probability ``prob``.
- :class:`~mask2former.data.transforms.ResizeShortestEdge` (shared with test-time resizing):
  shorter side to a length sampled from a list ("choice") or interval ("range"), longer side
  capped at ``max_size``.
- :class:`ResizeScale`: large-scale jitter resize: fit the image inside
  ``target_size * U(min_scale, max_scale)``, keeping the aspect ratio.
- :class:`FixedSizeCrop`: random crop to ``crop_size`` where larger, then pad right/bottom to it.
- :class:`RandomCrop`: crop of a sampled size ("relative", "relative_range", "absolute",
  "absolute_range").
- :class:`RandomCropCategoryAreaConstraint`: :class:`RandomCrop` retried (10 tries) until no
  single class covers more than ``single_category_max_area`` of the crop's labelled pixels.
- :class:`ColorAugSSD`: SSD photometric distortion.
"""
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from fvcore.transforms.transform import (
    CropTransform,
    HFlipTransform,
    NoOpTransform,
    PadTransform,
    Transform,
    TransformList,
    VFlipTransform,
)
from PIL import Image

from ..transforms import ResizeShortestEdge, ResizeTransform
from .color_transform import SSDColorTransform

__all__ = [
    "Augmentation",
    "apply_augmentations",
    "RandomFlip",
    "ResizeShortestEdge",
    "ResizeScale",
    "FixedSizeCrop",
    "RandomCrop",
    "RandomCropCategoryAreaConstraint",
    "ColorAugSSD",
]


class Augmentation:
    """A policy: ``get_transform(image)`` samples a Transform for ``image`` [H, W, C] (or
    [H, W]); with ``needs_sem_seg = True`` it is ``get_transform(image, sem_seg)`` and also gets
    the [H, W] label map."""

    needs_sem_seg = False

    def get_transform(self, image: np.ndarray) -> Transform:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def apply_augmentations(
    augmentations: Iterable,
    image: np.ndarray,
    sem_seg: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, Optional[np.ndarray], TransformList]:
    """Sample and apply each policy in turn (each sees the previous one's output).

    Args:
        augmentations: policies (:class:`Augmentation` or any object with ``get_transform``).

    Returns:
        ``(image, sem_seg, transforms)``: the transformed arrays (``sem_seg`` None if not given)
        and the applied transforms, to replay on other annotations of the same image.
    """
    applied: List[Transform] = []
    for aug in augmentations:
        if getattr(aug, "needs_sem_seg", False):
            tfm = aug.get_transform(image, sem_seg)
        else:
            tfm = aug.get_transform(image)
        image = tfm.apply_image(image)
        if sem_seg is not None:
            sem_seg = tfm.apply_segmentation(sem_seg)
        applied.append(tfm)
    return image, sem_seg, TransformList(applied)


class RandomFlip(Augmentation):
    """Flip with probability ``prob``, horizontally (default) or vertically.

    Raises:
        ValueError: both or neither direction requested.
    """

    def __init__(self, prob: float = 0.5, *, horizontal: bool = True, vertical: bool = False):
        if horizontal == vertical:
            raise ValueError("RandomFlip needs exactly one of horizontal / vertical.")
        self.prob, self.horizontal, self.vertical = prob, horizontal, vertical

    def get_transform(self, image) -> Transform:
        h, w = image.shape[:2]
        if np.random.uniform() >= self.prob:
            return NoOpTransform()
        return HFlipTransform(w) if self.horizontal else VFlipTransform(h)


class ResizeScale(Augmentation):
    """Large-scale jitter: scale s ~ U(min_scale, max_scale); resize the image by
    ``min(s * target_height / h, s * target_width / w)`` (output size rounded)."""

    def __init__(
        self,
        min_scale: float,
        max_scale: float,
        target_height: int,
        target_width: int,
        interp: Image.Resampling = Image.Resampling.BILINEAR,
    ):
        self.min_scale, self.max_scale = min_scale, max_scale
        self.target_height, self.target_width = target_height, target_width
        self.interp = interp

    def get_transform(self, image) -> Transform:
        h, w = image.shape[:2]
        scale = np.random.uniform(self.min_scale, self.max_scale)
        factor = min(scale * self.target_height / h, scale * self.target_width / w)
        out_h, out_w = (int(v) for v in np.round(np.multiply((h, w), factor)))
        return ResizeTransform(h, w, out_h, out_w, self.interp)


class FixedSizeCrop(Augmentation):
    """Crop a random ``crop_size`` window where the image is larger (offset ~ U(0, excess),
    rounded), then, if ``pad``, pad right/bottom up to ``crop_size`` with ``pad_value`` (image) and
    ``seg_pad_value`` (segmentations)."""

    def __init__(
        self,
        crop_size: Tuple[int, int],
        pad: bool = True,
        pad_value: float = 128.0,
        seg_pad_value: int = 255,
    ):
        self.crop_size = tuple(crop_size)
        self.pad, self.pad_value, self.seg_pad_value = pad, pad_value, seg_pad_value

    def get_transform(self, image) -> Transform:
        h, w = image.shape[:2]
        ch, cw = self.crop_size
        excess = np.maximum(np.subtract((h, w), (ch, cw)), 0)
        offset = np.round(excess * np.random.uniform(0.0, 1.0))
        y0, x0 = (int(v) for v in offset)
        out_h, out_w = min(h, ch), min(w, cw)
        crop = CropTransform(x0, y0, out_w, out_h, w, h)
        if not self.pad:
            return TransformList([crop])
        pad = PadTransform(0, 0, cw - out_w, ch - out_h, out_w, out_h, self.pad_value, self.seg_pad_value)
        return TransformList([crop, pad])


class RandomCrop(Augmentation):
    """Crop a window of a sampled size at a uniformly random position.

    ``crop_type`` / ``crop_size`` (``(a, b)``):
    "relative": ``(h * a, w * b)``; "relative_range": ``a' ~ U(a, 1)``, ``b' ~ U(b, 1)`` then
    relative; "absolute": ``(min(a, h), min(b, w))``; "absolute_range": height and width each
    ~ U{min(a, side), ..., min(b, side)}.
    """

    _TYPES = ("relative_range", "relative", "absolute", "absolute_range")

    def __init__(self, crop_type: str, crop_size: Sequence[float]):
        if crop_type not in self._TYPES:
            raise ValueError(f"crop_type must be one of {self._TYPES}, got '{crop_type}'.")
        self.crop_type, self.crop_size = crop_type, tuple(crop_size)

    def get_crop_size(self, image_size: Tuple[int, int]) -> Tuple[int, int]:
        """Sampled ``(crop_h, crop_w)`` for an image of ``(h, w)`` pixels."""
        h, w = image_size
        a, b = self.crop_size
        kind = self.crop_type
        if kind.startswith("relative"):
            fractions = (a, b)
            if kind == "relative_range":
                low = np.asarray(fractions, dtype=np.float32)
                fractions = low + np.random.rand(2) * (1 - low)
            return tuple(int(side * f + 0.5) for side, f in zip((h, w), fractions))
        if kind == "absolute":
            return min(int(a), h), min(int(b), w)
        if a > b:
            raise ValueError(f"'absolute_range' needs min <= max, got {self.crop_size}.")
        ch = np.random.randint(min(h, a), min(h, b) + 1)
        cw = np.random.randint(min(w, a), min(w, b) + 1)
        return int(ch), int(cw)

    def get_transform(self, image) -> Transform:
        h, w = image.shape[:2]
        ch, cw = self.get_crop_size((h, w))
        y0 = int(np.random.randint(h - ch + 1))
        x0 = int(np.random.randint(w - cw + 1))
        return CropTransform(x0, y0, cw, ch, w, h)


class RandomCropCategoryAreaConstraint(Augmentation):
    """:class:`RandomCrop` whose window is re-sampled (at most 10 tries; the last one is kept)
    until the crop of ``sem_seg`` has more than one class and none covers
    ``>= single_category_max_area`` of its pixels (``ignored_category`` pixels not counted).
    ``single_category_max_area >= 1`` disables the constraint.

    Raises:
        ValueError: the constraint is enabled but ``sem_seg`` is not given.
    """

    needs_sem_seg = True

    def __init__(
        self,
        crop_type: str,
        crop_size: Sequence[float],
        single_category_max_area: float = 1.0,
        ignored_category: Optional[int] = None,
    ):
        self.crop = RandomCrop(crop_type, crop_size)
        self.single_category_max_area = single_category_max_area
        self.ignored_category = ignored_category

    def get_transform(self, image, sem_seg: Optional[np.ndarray] = None) -> Transform:
        limit = self.single_category_max_area
        if limit >= 1.0:
            return self.crop.get_transform(image)
        if sem_seg is None:
            raise ValueError("RandomCropCategoryAreaConstraint needs the sem_seg label map.")
        h, w = sem_seg.shape[:2]
        for _ in range(10):
            ch, cw = self.crop.get_crop_size((h, w))
            y0 = int(np.random.randint(h - ch + 1))
            x0 = int(np.random.randint(w - cw + 1))
            if self._acceptable(sem_seg[y0 : y0 + ch, x0 : x0 + cw], limit):
                break
        return CropTransform(x0, y0, cw, ch, w, h)

    def _acceptable(self, window: np.ndarray, limit: float) -> bool:
        """Whether ``window`` has two or more counted classes, none covering ``limit`` of it."""
        labels, counts = np.unique(window, return_counts=True)
        counts = counts[labels != self.ignored_category] if self.ignored_category is not None else counts
        return len(counts) > 1 and counts.max() < counts.sum() * limit


class ColorAugSSD(Augmentation):
    """SSD photometric distortion; each step applied with probability 1/2: brightness
    ``+ U(-brightness_delta, brightness_delta)``, contrast ``* U(contrast_low, contrast_high)``,
    saturation ``* U(saturation_low, saturation_high)``, hue ``+ U{-hue_delta..hue_delta}``
    (OpenCV hue units, 0..179); contrast first or last with probability 1/2.

    Args:
        img_format: "RGB" or "BGR" channel order of the images.
    """

    def __init__(
        self,
        img_format: str,
        brightness_delta: float = 32,
        contrast_low: float = 0.5,
        contrast_high: float = 1.5,
        saturation_low: float = 0.5,
        saturation_high: float = 1.5,
        hue_delta: int = 18,
    ):
        if img_format not in ("RGB", "BGR"):
            raise ValueError(f"ColorAugSSD needs 'RGB' or 'BGR' images, got '{img_format}'.")
        self.img_format = img_format
        self.brightness_delta = brightness_delta
        self.contrast_low, self.contrast_high = contrast_low, contrast_high
        self.saturation_low, self.saturation_high = saturation_low, saturation_high
        self.hue_delta = hue_delta

    @staticmethod
    def _maybe(sample):
        return sample() if np.random.randint(2) else None

    def get_transform(self, image) -> Transform:
        brightness = self._maybe(
            lambda: np.random.uniform(-self.brightness_delta, self.brightness_delta)
        )
        contrast_first = bool(np.random.randint(2))
        contrast = self._maybe(lambda: np.random.uniform(self.contrast_low, self.contrast_high))
        saturation = self._maybe(
            lambda: np.random.uniform(self.saturation_low, self.saturation_high)
        )
        hue = self._maybe(lambda: int(np.random.randint(-self.hue_delta, self.hue_delta + 1)))
        return SSDColorTransform(
            self.img_format == "RGB", brightness, contrast, saturation, hue, contrast_first
        )
