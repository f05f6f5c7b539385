"""Steps shared by the dataset mappers: reading, mask rasterisation, padding, targets."""
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from fvcore.transforms.transform import Transform

from ...structures import Instances, masks_to_boxes
from ..image_io import read_image

__all__ = [
    "read_image_checked",
    "read_label_map",
    "annotation_masks",
    "panoptic_targets",
    "semantic_targets",
    "make_instances",
    "image_to_tensor",
    "pad_to_divisible",
    "optional_sem_seg",
    "padding_mask_after",
]


def read_image_checked(dataset_dict: dict, image_format: str) -> np.ndarray:
    """Read ``dataset_dict["file_name"]`` (uint8 [H, W, 3] in ``image_format``) and check it against
    ``height`` / ``width`` of the dict (set them when absent).

    Raises:
        FileNotFoundError: the image file is missing.
        ValueError: the image size differs from the dict's ``height`` / ``width``.
    """
    image = read_image(dataset_dict["file_name"], format=image_format)
    h, w = image.shape[:2]
    expected = (dataset_dict.get("height", h), dataset_dict.get("width", w))
    if expected != (h, w):
        raise ValueError(
            f"Image '{dataset_dict['file_name']}' is {h}x{w} but its dataset dict says "
            f"{expected[0]}x{expected[1]} (height x width)."
        )
    dataset_dict["height"], dataset_dict["width"] = h, w
    return image


def read_label_map(file_name: str) -> np.ndarray:
    """A label PNG as stored ([H, W], uint8 for 0..255 labels)."""
    return read_image(file_name, format=None)


def _polygon_mask(polygons: Sequence[Sequence[float]], h: int, w: int) -> np.ndarray:
    if len(polygons) == 0:
        return np.zeros((h, w), dtype=bool)
    rles = mask_util.frPyObjects([np.asarray(p, dtype=np.float64) for p in polygons], h, w)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def _transform_polygons(polygons, transforms: Transform) -> List[np.ndarray]:
    out = []
    for poly in polygons:
        coords = np.asarray(poly, dtype=np.float64).reshape(-1, 2).copy()
        out.append(transforms.apply_coords(coords).reshape(-1))
    return out


def annotation_masks(
    annotations: Iterable[dict],
    transforms: Transform,
    input_size: Tuple[int, int],
    output_size: Tuple[int, int],
) -> np.ndarray:
    """Masks of the annotations after ``transforms``, bool [N, H_out, W_out].

    Polygons (``list[list[float]]``, x/y alternating, pixels) are transformed as coordinates
    and rasterised at the output size (parts outside the image are clipped); RLE dicts and
    [H, W] arrays are decoded at ``input_size`` and transformed as segmentations (pixels
    padded in by the transforms are background).

    Raises:
        ValueError: an annotation has no or an unknown ``segmentation``.
    """
    h, w = output_size
    masks = []
    for anno in annotations:
        segm = anno.get("segmentation")
        if isinstance(segm, list):
            masks.append(_polygon_mask(_transform_polygons(segm, transforms), h, w))
            continue
        if isinstance(segm, dict):
            if isinstance(segm["counts"], list):  # uncompressed RLE
                segm = mask_util.frPyObjects(segm, *segm["size"])
            mask = mask_util.decode(segm)
        elif isinstance(segm, np.ndarray) and segm.ndim == 2:
            mask = segm.astype(np.uint8)
        else:
            raise ValueError(
                "Annotation 'segmentation' must be polygons (list[list[float]]), a COCO RLE dict "
                f"or an [H, W] array; got {type(segm).__name__}."
            )
        if mask.shape != tuple(input_size):
            raise ValueError(f"Mask of size {mask.shape} for an image of size {input_size}.")
        masks.append(transforms.apply_segmentation(mask) == 1)
    if not masks:
        return np.zeros((0, h, w), dtype=bool)
    return np.stack(masks)


def panoptic_targets(
    pan_ids: np.ndarray, segments_info: Iterable[dict]
) -> Tuple[List[int], np.ndarray]:
    """Classes and bool masks [N, H, W] of the non-crowd segments of a panoptic id map."""
    classes, masks = [], []
    for seg in segments_info:
        if not seg.get("iscrowd", 0):
            classes.append(int(seg["category_id"]))
            masks.append(pan_ids == seg["id"])
    if not masks:
        return [], np.zeros((0,) + pan_ids.shape, dtype=bool)
    return classes, np.stack(masks)


def semantic_targets(sem_seg: np.ndarray, ignore_label: int) -> Tuple[List[int], np.ndarray]:
    """One bool mask [N, H, W] per class present in ``sem_seg`` (ascending), ignoring
    ``ignore_label``."""
    classes = [int(c) for c in np.unique(sem_seg) if c != ignore_label]
    if not classes:
        return [], np.zeros((0,) + sem_seg.shape, dtype=bool)
    return classes, np.stack([sem_seg == c for c in classes])


def make_instances(
    image_size: Tuple[int, int], classes: Sequence[int], masks, with_boxes: bool = False
) -> Instances:
    """``Instances`` with ``gt_classes`` int64 [N] and ``gt_masks`` bool [N, H, W] (and, if
    ``with_boxes``, ``gt_boxes``: tight XYXY ``Boxes`` of the masks)."""
    masks = torch.as_tensor(np.ascontiguousarray(masks), dtype=torch.bool)
    instances = Instances(tuple(image_size))
    instances.gt_classes = torch.as_tensor(list(classes), dtype=torch.int64)
    instances.gt_masks = masks
    if with_boxes:
        instances.gt_boxes = masks_to_boxes(masks)
    return instances


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, C] array -> uint8 tensor [C, H, W]."""
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))


def pad_to_divisible(
    tensor: torch.Tensor, size_divisibility: int, value: float
) -> torch.Tensor:
    """Pad the last two dims (right / bottom) up to multiples of ``size_divisibility`` (no-op if
    ``size_divisibility <= 0``)."""
    if size_divisibility <= 0:
        return tensor
    h, w = tensor.shape[-2:]
    pad_h = -h % size_divisibility
    pad_w = -w % size_divisibility
    if pad_h == 0 and pad_w == 0:
        return tensor
    return F.pad(tensor, [0, pad_w, 0, pad_h], value=value).contiguous()


def optional_sem_seg(dataset_dict: dict) -> Optional[np.ndarray]:
    """The dict's ``sem_seg_file_name`` label map (popped from the dict), or None."""
    name = dataset_dict.pop("sem_seg_file_name", None)
    return None if name is None else read_label_map(name)


def padding_mask_after(transforms: Transform, input_size: Tuple[int, int]) -> torch.Tensor:
    """bool [H, W] after ``transforms``: True on the pixels that the transforms padded in."""
    ones = np.ones(tuple(input_size), dtype=np.uint8)
    return torch.as_tensor(np.ascontiguousarray(transforms.apply_segmentation(ones) != 1))
