"""``mask_former_panoptic``: panoptic training with the MaskFormer augmentation."""
import copy

import numpy as np
import torch

from ..image_io import read_image
from ..panoptic_format import rgb2id
from .augmentations import apply_augmentations
from .common import (
    image_to_tensor,
    make_instances,
    optional_sem_seg,
    pad_to_divisible,
    panoptic_targets,
    read_image_checked,
)
from .mask_former_semantic import MaskFormerSemanticDatasetMapper
from .registry import register_mapper

__all__ = ["MaskFormerPanopticDatasetMapper"]


@register_mapper("mask_former_panoptic")
class MaskFormerPanopticDatasetMapper(MaskFormerSemanticDatasetMapper):
    """Dataset dict (with ``pan_seg_file_name``, ``segments_info``, optionally
    ``sem_seg_file_name``) -> training input (training only). Same arguments and config as
    :class:`MaskFormerSemanticDatasetMapper`.

    Output dict (input keys kept, file-name keys of the labels removed):
        ``image``: uint8 [3, H, W], padded with 128 to multiples of ``size_divisibility``;
        ``sem_seg``: int64 [H, W] padded with ``ignore_label`` (only with ``sem_seg_file_name``);
        ``instances``: ``gt_classes`` int64 [N], ``gt_masks`` bool [N, H, W] of the non-crowd
        segments (padding is void); N may be 0.

    Raises (on call):
        ValueError: no ``pan_seg_file_name``, an ``annotations`` key, or an image-size mismatch.
    """

    def __call__(self, dataset_dict: dict) -> dict:
        if "annotations" in dataset_dict.keys():
            raise ValueError("A panoptic segmentation dataset dict must not have 'annotations'.")
        if "pan_seg_file_name" not in dataset_dict:
            raise ValueError(f"No 'pan_seg_file_name' for '{dataset_dict['file_name']}'.")
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_checked(dataset_dict, self.image_format)
        sem_seg = optional_sem_seg(dataset_dict)
        pan_rgb = read_image(dataset_dict.pop("pan_seg_file_name"), format="RGB")
        image, sem_seg, transforms = apply_augmentations(self.augmentations, image, sem_seg)
        pan = rgb2id(transforms.apply_segmentation(pan_rgb))

        image_t = pad_to_divisible(image_to_tensor(image), self.size_divisibility, 128)
        pan = pad_to_divisible(torch.as_tensor(pan), self.size_divisibility, 0).numpy()
        dataset_dict["image"] = image_t
        if sem_seg is not None:
            dataset_dict["sem_seg"] = pad_to_divisible(
                torch.as_tensor(sem_seg.astype(np.int64)), self.size_divisibility, self.ignore_label
            )
        classes, masks = panoptic_targets(pan, dataset_dict["segments_info"])
        dataset_dict["instances"] = make_instances(tuple(image_t.shape[-2:]), classes, masks)
        return dataset_dict
