"""``coco_instance_lsj``: COCO instance training with large-scale jitter."""
from .common import annotation_masks, make_instances
from .lsj import LSJDatasetMapper
from .registry import register_mapper

__all__ = ["COCOInstanceNewBaselineDatasetMapper"]


@register_mapper("coco_instance_lsj")
class COCOInstanceNewBaselineDatasetMapper(LSJDatasetMapper):
    """Dataset dict (with ``annotations``) -> model input.

    Output dict (input keys kept, ``annotations`` removed):
        ``image``: uint8 [3, S, S] in ``image_format`` (S = ``INPUT.IMAGE_SIZE``; pad value 128);
        ``padding_mask``: bool [S, S], True where padded;
        ``instances`` (training): ``gt_classes`` int64 [N], ``gt_masks`` bool [N, S, S],
        ``gt_boxes`` (tight XYXY boxes of the masks) of the non-crowd annotations whose mask
        is not empty after augmentation; N may be 0.
    With ``is_train=False`` the annotations are dropped and only the image is returned.
    """

    def add_targets(self, dataset_dict, image, transforms, input_size):
        annotations = dataset_dict.get("annotations", [])
        annotations = [a for a in annotations if not a.get("iscrowd", 0)]
        masks = annotation_masks(annotations, transforms, input_size, image.shape[:2])
        keep = masks.any(axis=(1, 2))
        classes = [int(a["category_id"]) for a, k in zip(annotations, keep) if k]
        dataset_dict["instances"] = make_instances(image.shape[:2], classes, masks[keep], with_boxes=True)
