"""Large-scale jitter (LSJ) augmentation of the COCO "new baseline" mappers (Ghiasi et al.,
"Simple Copy-Paste is a Strong Data Augmentation Method", CVPR 2021; Mask2Former Sec. 4.1)."""
from typing import List

from .augmentations import Augmentation, FixedSizeCrop, RandomFlip, ResizeScale

__all__ = ["build_lsj_augmentations"]


def build_lsj_augmentations(
    image_size: int, min_scale: float, max_scale: float, random_flip: str
) -> List[Augmentation]:
    """Flip (``random_flip``: "horizontal", "vertical" or "none"), resize to fit
    ``image_size * U(min_scale, max_scale)``, then crop / pad to ``image_size`` x ``image_size``.

    Raises:
        ValueError: unknown ``random_flip``.
    """
    if random_flip not in ("horizontal", "vertical", "none"):
        raise ValueError(f"INPUT.RANDOM_FLIP must be horizontal, vertical or none: '{random_flip}'")
    augs: List[Augmentation] = []
    if random_flip != "none":
        augs.append(
            RandomFlip(horizontal=random_flip == "horizontal", vertical=random_flip == "vertical")
        )
    augs.append(ResizeScale(min_scale, max_scale, image_size, image_size))
    augs.append(FixedSizeCrop((image_size, image_size)))
    return augs
