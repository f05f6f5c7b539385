"""``coco_panoptic_lsj``: COCO panoptic training with large-scale jitter."""
from ..image_io import read_image
from ..panoptic_format import rgb2id
from .common import make_instances, panoptic_targets
from .lsj import LSJDatasetMapper
from .registry import register_mapper

__all__ = ["COCOPanopticNewBaselineDatasetMapper"]


@register_mapper("coco_panoptic_lsj")
class COCOPanopticNewBaselineDatasetMapper(LSJDatasetMapper):
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

    def add_targets(self, dataset_dict, image, transforms, input_size):
        if "pan_seg_file_name" not in dataset_dict:
            raise ValueError(f"No 'pan_seg_file_name' for '{dataset_dict['file_name']}'.")
        pan_rgb = read_image(dataset_dict["pan_seg_file_name"], format="RGB")
        pan = rgb2id(transforms.apply_segmentation(pan_rgb))
        classes, masks = panoptic_targets(pan, dataset_dict["segments_info"])
        dataset_dict["instances"] = make_instances(image.shape[:2], classes, masks, with_boxes=True)
