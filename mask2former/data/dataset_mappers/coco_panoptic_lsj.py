"""``coco_panoptic_lsj``: COCO panoptic training with large-scale jitter."""
import copy
import logging
from typing import List

from ...config import configurable
from ..image_io import read_image
from .augmentations import Augmentation, apply_augmentations
from .common import (
    image_to_tensor,
    make_instances,
    padding_mask_after,
    panoptic_ids,
    panoptic_targets,
    read_image_checked,
)
from .lsj import build_lsj_augmentations
from .registry import register_mapper

__all__ = ["COCOPanopticNewBaselineDatasetMapper"]


@register_mapper("coco_panoptic_lsj")
class COCOPanopticNewBaselineDatasetMapper:
    """Dataset dict (with ``pan_seg_file_name``, ``segments_info``) -> model input.

    Output dict (input keys kept, ``pan_seg_file_name`` removed):
        ``image``: uint8 [3, S, S] in ``image_format`` (S = ``INPUT.IMAGE_SIZE``; pad value 128);
        ``padding_mask``: bool [S, S], True where padded;
        ``instances`` (training): ``gt_classes`` int64 [N] (contiguous ids), ``gt_masks`` bool
        [N, S, S], ``gt_boxes`` (XYXY pixels) of the N non-crowd segments; N may be 0.
    With ``is_train=False`` the annotations are dropped and only the image is returned.

    Raises (on call):
        ValueError: training dict without ``pan_seg_file_name``, or image size mismatch.
        FileNotFoundError: image or PNG missing.
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
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("pan_seg_file_name", None)
            return dataset_dict
        if "pan_seg_file_name" not in dataset_dict:
            raise ValueError(f"No 'pan_seg_file_name' for '{dataset_dict['file_name']}'.")
        pan_rgb = read_image(dataset_dict.pop("pan_seg_file_name"), format="RGB")
        pan = panoptic_ids(transforms.apply_segmentation(pan_rgb))
        classes, masks = panoptic_targets(pan, dataset_dict["segments_info"])
        dataset_dict["instances"] = make_instances(image.shape[:2], classes, masks, with_boxes=True)
        return dataset_dict
