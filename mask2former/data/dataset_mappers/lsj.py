"""Large-scale jitter (LSJ) augmentation of the COCO "new baseline" mappers (Ghiasi et al.,
"Simple Copy-Paste is a Strong Data Augmentation Method", CVPR 2021; Mask2Former Sec. 4.1)."""
import copy
import logging
from typing import List, Tuple

import numpy as np

from ...config import configurable
from .augmentations import Augmentation, FixedSizeCrop, RandomFlip, ResizeScale, apply_augmentations
from .common import image_to_tensor, padding_mask_after, read_image_checked

__all__ = ["LSJDatasetMapper", "build_lsj_augmentations"]


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


class LSJDatasetMapper:
    """Common part of the LSJ mappers: reads the image, applies the LSJ augmentations and sets
    ``image`` (uint8 [3, S, S]) and ``padding_mask`` (bool [S, S], True where padded). Subclasses
    add the training targets in :meth:`add_targets`."""

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations: List[Augmentation], image_format: str):
        self.is_train, self.augmentations, self.image_format = is_train, augmentations, image_format
        logging.getLogger(__name__).info(f"[{type(self).__name__}] augmentations: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        inp = cfg.INPUT
        policies = build_lsj_augmentations(inp.IMAGE_SIZE, inp.MIN_SCALE, inp.MAX_SCALE, inp.RANDOM_FLIP)
        return dict(is_train=is_train, augmentations=policies, image_format=inp.FORMAT)

    def add_targets(self, dataset_dict: dict, image: np.ndarray, transforms, input_size: Tuple[int, int]) -> None:
        """Set ``dataset_dict["instances"]`` for the augmented ``image`` [S, S, 3]."""
        raise NotImplementedError

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_checked(dataset_dict, self.image_format)
        input_size = image.shape[:2]
        image, _, transforms = apply_augmentations(self.augmentations, image)
        dataset_dict["image"] = image_to_tensor(image)
        dataset_dict["padding_mask"] = padding_mask_after(transforms, input_size)
        if self.is_train:
            self.add_targets(dataset_dict, image, transforms, input_size)
        for consumed in ("annotations", "pan_seg_file_name"):
            dataset_dict.pop(consumed, None)
        return dataset_dict
