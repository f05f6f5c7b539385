"""``coco_instance_lsj``: COCO instance training with large-scale jitter."""
import copy
import logging
from typing import List

from ...config import configurable
from .augmentations import Augmentation, apply_augmentations
from .common import (
    annotation_masks,
    image_to_tensor,
    make_instances,
    padding_mask_after,
    read_image_checked,
)
from .lsj import build_lsj_augmentations
from .registry import register_mapper

__all__ = ["COCOInstanceNewBaselineDatasetMapper"]


@register_mapper("coco_instance_lsj")
class COCOInstanceNewBaselineDatasetMapper:
    """Dataset dict (with ``annotations``) -> model input.

    Output dict (input keys kept, ``annotations`` removed):
        ``image``: uint8 [3, S, S] in ``image_format`` (S = ``INPUT.IMAGE_SIZE``; pad value 128);
        ``padding_mask``: bool [S, S], True where padded;
        ``instances`` (training): ``gt_classes`` int64 [N], ``gt_masks`` bool [N, S, S],
        ``gt_boxes`` (tight XYXY boxes of the masks) of the non-crowd annotations whose mask
        is not empty after augmentation; N may be 0.
    With ``is_train=False`` the annotations are dropped and only the image is returned.
    """

    @configurable
    def __init__(
        self, is_train: bool = True, *, augmentations: List[Augmentation], image_format: str
    ):
        self.is_train = is_train
        self.augmentations = augmentations
        self.image_format = image_format
        logging.getLogger(__name__).info(f"[{type(self).__name__}] augmentations: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return {
            "is_train": is_train,
            "augmentations": build_lsj_augmentations(
                cfg.INPUT.IMAGE_SIZE,
                cfg.INPUT.MIN_SCALE,
                cfg.INPUT.MAX_SCALE,
                cfg.INPUT.RANDOM_FLIP,
            ),
            "image_format": cfg.INPUT.FORMAT,
        }

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_checked(dataset_dict, self.image_format)
        input_size = image.shape[:2]
        image, _, transforms = apply_augmentations(self.augmentations, image)
        dataset_dict["image"] = image_to_tensor(image)
        dataset_dict["padding_mask"] = padding_mask_after(transforms, input_size)
        annotations = dataset_dict.pop("annotations", [])
        if not self.is_train:
            return dataset_dict
        annotations = [a for a in annotations if not a.get("iscrowd", 0)]
        masks = annotation_masks(annotations, transforms, input_size, image.shape[:2])
        keep = masks.any(axis=(1, 2))
        classes = [int(a["category_id"]) for a, k in zip(annotations, keep) if k]
        dataset_dict["instances"] = make_instances(
            image.shape[:2], classes, masks[keep], with_boxes=True
        )
        return dataset_dict
