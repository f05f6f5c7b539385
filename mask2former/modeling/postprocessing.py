"""Turn Mask2Former's per-query predictions into semantic, panoptic and instance results
(Cheng et al., CVPR 2022, Sec. 4 and Appendix A "mask classification inference").

All functions take the predictions of one image: ``mask_cls`` [Q, K+1] class logits (last = "no
object") and ``mask_pred`` [Q, H, W] mask logits, and are pure functions of them.
"""
from typing import Collection, Dict, List, Optional, Tuple

import torch
from torch.nn import functional as F

from ..structures import Boxes, Instances, masks_to_boxes

__all__ = [
    "instance_inference",
    "mask_classification_inference",
    "panoptic_inference",
    "sem_seg_postprocess",
    "semantic_inference",
]


def sem_seg_postprocess(
    result: torch.Tensor, img_size: Tuple[int, int], output_height: int, output_width: int
) -> torch.Tensor:
    """Crop the padding off per-pixel predictions and resize them to the output resolution.

    Args:
        result: [C, H_pad, W_pad] predictions at the padded input resolution.
        img_size: (h, w) of the unpadded input image; ``result[:, :h, :w]`` is kept.
        output_height, output_width: resolution to resize to (bilinear, ``align_corners=False``).

    Returns:
        [C, output_height, output_width].
    """
    result = result[:, : img_size[0], : img_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(result, size=(output_height, output_width), mode="bilinear", align_corners=False)[0]


def semantic_inference(
    mask_cls: torch.Tensor, mask_pred: torch.Tensor, *, mask_prob: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Per-class scores ``sum_q softmax(mask_cls)[q, c] * sigmoid(mask_pred)[q]``.

    Args:
        mask_cls: [Q, K+1] class logits.
        mask_pred: [Q, H, W] mask logits.
        mask_prob: ``mask_pred.sigmoid()`` when the caller already has it (same result, one
            full-resolution pass less).

    Returns:
        [K, H, W] semantic scores (the "no object" class is dropped).
    """
    probs = F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid() if mask_prob is None else mask_prob)


def panoptic_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    *,
    object_mask_threshold: float,
    overlap_threshold: float,
    thing_classes: Collection[int],
    mask_prob: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, List[Dict]]:
    """Panoptic segmentation from mask classification.

    Queries whose best class is "no object" or whose best-class probability is
    ``<= object_mask_threshold`` are dropped. Each pixel goes to the kept query maximising
    ``score * sigmoid(mask)``; a query keeps the pixels it wins that also have
    ``sigmoid(mask) >= 0.5``, and is dropped when those are fewer than ``overlap_threshold`` of its
    own ``sigmoid(mask) >= 0.5`` area. Segments of the same stuff class are merged.

    Args:
        mask_cls: [Q, K+1] class logits.
        mask_pred: [Q, H, W] mask logits.
        object_mask_threshold: minimum class probability of a kept query.
        overlap_threshold: minimum fraction of a query's mask that must remain visible.
        thing_classes: contiguous ids (0..K-1) of the "thing" classes.
        mask_prob: ``mask_pred.sigmoid()`` when the caller already has it; otherwise only the
            kept queries' masks go through the sigmoid.

    Returns:
        ``panoptic_seg`` int32 [H, W] (0 = void, else a segment id), and ``segments_info``: one dict
        ``{"id": int, "isthing": bool, "category_id": int (contiguous)}`` per segment id, ids from 1.
    """
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores = scores[keep]
    cur_classes = labels[keep]
    cur_masks = mask_pred[keep].sigmoid() if mask_prob is None else mask_prob[keep]

    h, w = cur_masks.shape[-2:]
    panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=cur_masks.device)
    segments_info: List[Dict] = []
    if cur_masks.shape[0] == 0:
        return panoptic_seg, segments_info

    cur_mask_ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
    thing_classes = set(int(c) for c in thing_classes)
    stuff_segment_ids: Dict[int, int] = {}
    current_segment_id = 0
    for k in range(cur_classes.shape[0]):
        pred_class = int(cur_classes[k].item())
        isthing = pred_class in thing_classes
        won = cur_mask_ids == k
        original = cur_masks[k] >= 0.5
        mask = won & original
        mask_area = int(won.sum().item())
        original_area = int(original.sum().item())
        if mask_area == 0 or original_area == 0 or int(mask.sum().item()) == 0:
            continue
        if mask_area / original_area < overlap_threshold:
            continue
        if not isthing:
            if pred_class in stuff_segment_ids:
                panoptic_seg[mask] = stuff_segment_ids[pred_class]
                continue
            stuff_segment_ids[pred_class] = current_segment_id + 1
        current_segment_id += 1
        panoptic_seg[mask] = current_segment_id
        segments_info.append({"id": current_segment_id, "isthing": bool(isthing), "category_id": pred_class})
    return panoptic_seg, segments_info


def instance_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    *,
    test_topk_per_image: int,
    thing_classes: Optional[Collection[int]] = None,
    boxes_from_masks: bool = False,
    mask_prob: Optional[torch.Tensor] = None,
) -> Instances:
    """Instance segmentation from mask classification.

    Every (query, class) pair is a candidate scored by its class probability; the
    ``k = min(test_topk_per_image, Q*K)`` best are kept (in ``torch.topk(sorted=False)`` order).
    With ``thing_classes`` given, candidates of other classes are then dropped. The final score
    multiplies the class probability by the mean mask probability inside the predicted mask.
    A query kept with several classes has its mask processed once.

    Args:
        mask_cls: [Q, K+1] class logits.
        mask_pred: [Q, H, W] mask logits at the output resolution.
        test_topk_per_image: maximum number of instances.
        thing_classes: contiguous ids of the classes to keep (None = all), for panoptic models.
        boxes_from_masks: compute tight boxes around the masks; otherwise boxes are all zero, as in
            the published model.
        mask_prob: ``mask_pred.sigmoid()`` when the caller already has it; otherwise only the
            selected queries' masks go through the sigmoid.

    Returns:
        ``Instances`` of image size (H, W) with ``pred_masks`` float [N, H, W] (1.0 where the mask
        logit > 0), ``pred_boxes`` ``Boxes`` [N, 4] (XYXY pixels), ``scores`` float [N] and
        ``pred_classes`` int64 [N] (contiguous ids).
    """
    num_queries, num_classes = mask_cls.shape[0], mask_cls.shape[-1] - 1
    scores = F.softmax(mask_cls, dim=-1)[:, :-1]
    labels = torch.arange(num_classes, device=mask_cls.device).repeat(num_queries)
    k = min(test_topk_per_image, num_queries * num_classes)
    scores_per_image, topk_indices = scores.flatten(0, 1).topk(k, sorted=False)
    labels_per_image = labels[topk_indices]
    query_indices = torch.div(topk_indices, num_classes, rounding_mode="floor")

    if thing_classes is not None:
        things = torch.tensor(sorted(int(c) for c in thing_classes), dtype=labels.dtype, device=labels.device)
        keep = torch.isin(labels_per_image, things)
        scores_per_image = scores_per_image[keep]
        labels_per_image = labels_per_image[keep]
        query_indices = query_indices[keep]

    queries, per_query = torch.unique(query_indices, return_inverse=True)
    query_masks = (mask_pred[queries] > 0).float()
    query_probs = mask_pred[queries].sigmoid() if mask_prob is None else mask_prob[queries]
    flat_masks = query_masks.flatten(1)
    query_scores = (query_probs.flatten(1) * flat_masks).sum(1) / (flat_masks.sum(1) + 1e-6)

    result = Instances(tuple(int(s) for s in mask_pred.shape[-2:]))
    pred_masks = query_masks[per_query]
    result.pred_masks = pred_masks
    if boxes_from_masks:
        result.pred_boxes = masks_to_boxes(pred_masks)
    else:
        result.pred_boxes = Boxes(torch.zeros(pred_masks.shape[0], 4, device=mask_pred.device))
    result.scores = scores_per_image * query_scores[per_query]
    result.pred_classes = labels_per_image
    return result


def mask_classification_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    image_size: Tuple[int, int],
    height: int,
    width: int,
    *,
    semantic_on: bool,
    panoptic_on: bool,
    instance_on: bool,
    sem_seg_postprocess_before_inference: bool,
    object_mask_threshold: float,
    overlap_threshold: float,
    thing_classes: Optional[Collection[int]],
    test_topk_per_image: int,
) -> Dict:
    """All enabled outputs of one image, as :meth:`MaskFormer.forward` returns them.

    Args:
        mask_cls: [Q, K+1] class logits.
        mask_pred: [Q, H_pad, W_pad] mask logits at the padded input resolution.
        image_size: (h, w) of the unpadded input; the padding is cropped off.
        height, width: output resolution.
        semantic_on, panoptic_on, instance_on: which outputs to produce.
        sem_seg_postprocess_before_inference: resize the mask logits to (height, width) before
            inference (needed by panoptic and instance outputs) instead of resizing the semantic
            result after it.
        object_mask_threshold, overlap_threshold: see :func:`panoptic_inference`.
        thing_classes: contiguous thing ids; read when ``panoptic_on`` (panoptic segments, and the
            instances of a panoptic model are restricted to them).
        test_topk_per_image: see :func:`instance_inference`.

    Returns:
        dict with, as enabled, ``sem_seg`` [K, height, width], ``panoptic_seg`` and ``instances``.
    """
    result = {}
    mask_prob = None
    if sem_seg_postprocess_before_inference:
        mask_pred = sem_seg_postprocess(mask_pred, image_size, height, width)
        mask_cls = mask_cls.to(mask_pred)
        if semantic_on:  # all queries' probabilities, then shared by the three tasks
            mask_prob = mask_pred.sigmoid()
    if semantic_on:
        r = semantic_inference(mask_cls, mask_pred, mask_prob=mask_prob)
        if not sem_seg_postprocess_before_inference:
            r = sem_seg_postprocess(r, image_size, height, width)
        result["sem_seg"] = r
    if panoptic_on:
        result["panoptic_seg"] = panoptic_inference(
            mask_cls,
            mask_pred,
            object_mask_threshold=object_mask_threshold,
            overlap_threshold=overlap_threshold,
            thing_classes=thing_classes,
            mask_prob=mask_prob,
        )
    if instance_on:
        result["instances"] = instance_inference(
            mask_cls,
            mask_pred,
            test_topk_per_image=test_topk_per_image,
            thing_classes=thing_classes if panoptic_on else None,
            mask_prob=mask_prob,
        )
    return result
