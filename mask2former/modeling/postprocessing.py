"""Turn Mask2Former's per-query predictions into semantic, panoptic and instance results
(Cheng et al., CVPR 2022, Sec. 4 and Appendix A "mask classification inference").

All functions take the predictions of one image: ``mask_cls`` [Q, K+1] class logits (last = "no
object") and the mask logits, either a [Q, H, W] tensor at the output resolution or a
:class:`~mask2former.modeling.mask_upsampling.MaskLogits` that upsamples them on demand. They
work in chunks bounded by ``chunk_bytes`` (queries, or rows of the output) and upsample only the
queries a task keeps, so that at most one bounded chunk of full-resolution planes exists beside
the returned tensors.
"""
from typing import Collection, Dict, List, Optional, Tuple, Union

import pycocotools.mask as mask_util
import torch
from torch.nn import functional as F

from ..structures import Boxes, Instances, masks_to_boxes
from .mask_upsampling import DEFAULT_CHUNK_BYTES, MaskLogits, band_ranges, chunk_length, resize_bilinear

__all__ = [
    "instance_inference",
    "mask_classification_inference",
    "panoptic_inference",
    "sem_seg_postprocess",
    "semantic_inference",
]

Masks = Union[torch.Tensor, MaskLogits]

# Semantic bands stay below this size (when chunked at all), so that a band's probabilities and
# scores stay in the CPU caches between the sigmoid and the class product: the [K, Q] x [Q, pixels]
# product runs about 1.5x faster on 8 MiB bands than on 64 MiB ones, with bit-identical results.
SEMANTIC_BAND_BYTES = 8 * 2**20


def _as_mask_logits(mask_pred: Masks, chunk_bytes: Optional[int]) -> MaskLogits:
    if isinstance(mask_pred, MaskLogits):
        return mask_pred
    return MaskLogits.full_resolution(mask_pred, chunk_bytes)


def sem_seg_postprocess(
    result: torch.Tensor,
    img_size: Tuple[int, int],
    output_height: int,
    output_width: int,
    *,
    chunk_bytes: Optional[int] = None,
) -> torch.Tensor:
    """Crop the padding off per-pixel predictions and resize them to the output resolution.

    Args:
        result: [C, H_pad, W_pad] predictions at the padded input resolution.
        img_size: (h, w) of the unpadded input image; ``result[:, :h, :w]`` is kept.
        output_height, output_width: resolution to resize to (bilinear, ``align_corners=False``).
        chunk_bytes: resize this many bytes of output channels at a time into the preallocated
            result (bit-identical to one call); None = all channels in one call.

    Returns:
        [C, output_height, output_width], dtype of ``result``.
    """
    cropped = result[:, : img_size[0], : img_size[1]]
    size = (int(output_height), int(output_width))
    if chunk_bytes is None:
        return resize_bilinear(cropped, size)
    out = result.new_empty((result.shape[0], *size))
    for start, resized in _resized_channel_chunks(cropped, size, chunk_bytes):
        out[start : start + len(resized)] = resized
        del resized  # one chunk alive at a time
    return out


def _resized_channel_chunks(x: torch.Tensor, size: Tuple[int, int], chunk_bytes: Optional[int]):
    """``(start, resize_bilinear(x[start:start+n], size))`` for consecutive chunks of the channels
    of x [C, h, w], n bounded by ``chunk_bytes`` of float32 output (bit-identical to one call)."""
    step = chunk_length(x.shape[0], size[0] * size[1] * 4, chunk_bytes)
    for start, stop in band_ranges(x.shape[0], step):
        yield start, resize_bilinear(x[start:stop], size)


def _class_probs(mask_cls: torch.Tensor) -> torch.Tensor:
    return F.softmax(mask_cls, dim=-1)[..., :-1]


def semantic_inference(
    mask_cls: torch.Tensor,
    mask_pred: Masks,
    *,
    mask_prob: Optional[torch.Tensor] = None,
    compact: bool = False,
    chunk_bytes: Optional[int] = DEFAULT_CHUNK_BYTES,
    product_dtype: Optional[torch.dtype] = None,
):
    """Per-class scores ``sum_q softmax(mask_cls)[q, c] * sigmoid(mask_pred)[q]``, computed on
    bands of output rows written into the preallocated result.

    Args:
        mask_cls: [Q, K+1] class logits.
        mask_pred: [Q, H, W] mask logits, or :class:`MaskLogits`.
        mask_prob: ``sigmoid`` of a [Q, H, W] ``mask_pred`` when the caller already has it.
        compact: return the per-pixel argmax and max instead of the [K, H, W] scores (which are
            then never built).
        chunk_bytes: bound of one [Q or K, rows, W] float32 band; None = one band.
        product_dtype: dtype of the class product, the largest matrix product of post-processing
            (K x Q x H*W multiply-adds), e.g. bfloat16 for a bfloat16 network (TEST.PRECISION): the
            probabilities are rounded to it, the sums accumulate in float32 and are rounded to it
            once; None = the logits' dtype. The results keep the logits' dtype.

    Returns:
        [K, H, W] semantic scores (the "no object" class is dropped), dtype of the logits; or,
        with ``compact``, ``(labels int32 [H, W] (contiguous class ids; first index on ties),
        scores float [H, W] (the maximum))``.
    """
    masks = _as_mask_logits(mask_pred, chunk_bytes)
    product_dtype = product_dtype or masks.dtype
    probs_t = _class_probs(mask_cls).to(product_dtype).t()  # [K, Q]
    num_classes, num_queries = probs_t.shape
    height, width = masks.output_size
    options = {"dtype": masks.dtype, "device": masks.device}
    if compact:
        labels = torch.empty((height, width), dtype=torch.int32, device=masks.device)
        best = torch.empty((height, width), **options)
    else:
        out = torch.empty((num_classes, height, width), **options)
    bands = list(masks.row_bands(num_classes, chunk_bytes and min(chunk_bytes, SEMANTIC_BAND_BYTES)))
    band_pixels = max(stop - start for start, stop in bands) * width
    # one flat buffer reused by every band (its leading part is a contiguous [Q, rows, W] view)
    prob_buffer = torch.empty(num_queries * band_pixels, **options) if mask_prob is None else None
    for start, stop in bands:
        pixels = (stop - start) * width
        if mask_prob is None:
            band_prob = prob_buffer[: num_queries * pixels].view(num_queries, stop - start, width)
            torch.sigmoid(masks.rows(start, stop), out=band_prob)
        else:
            band_prob = mask_prob[:, start:stop]
        band_prob = band_prob.reshape(num_queries, pixels).to(product_dtype)
        if compact:
            values, indices = torch.mm(probs_t, band_prob).max(0)
            best[start:stop], labels[start:stop] = values.view(-1, width), indices.view(-1, width)
        elif product_dtype == masks.dtype:  # written straight into the output rows ([K, rows * W])
            torch.mm(probs_t, band_prob, out=out[:, start:stop].view(num_classes, pixels))
        else:
            out[:, start:stop].view(num_classes, pixels).copy_(torch.mm(probs_t, band_prob))
    return (labels, best) if compact else out


def _compact_semantic_resized(scores_padded: torch.Tensor, image_size, size, chunk_bytes):
    """Argmax and max over classes of ``sem_seg_postprocess(scores_padded, image_size, *size)``,
    resizing chunks of classes (bit-identical values) and keeping a running max with first-index
    ties, so that [K, H, W] is never built."""
    cropped = scores_padded[:, : image_size[0], : image_size[1]]
    best, labels = None, None
    for start, resized in _resized_channel_chunks(cropped, size, chunk_bytes):
        values, indices = resized.max(0)
        del resized  # one chunk alive at a time
        if best is None:
            best, labels = values, indices.to(torch.int32)
            continue
        better = values > best
        best = torch.where(better, values, best)
        labels = torch.where(better, indices.to(torch.int32) + start, labels)
    return labels, best


def panoptic_inference(
    mask_cls: torch.Tensor,
    mask_pred: Masks,
    *,
    object_mask_threshold: float,
    overlap_threshold: float,
    thing_classes: Collection[int],
    mask_prob: Optional[torch.Tensor] = None,
    chunk_bytes: Optional[int] = DEFAULT_CHUNK_BYTES,
) -> Tuple[torch.Tensor, List[Dict]]:
    """Panoptic segmentation from mask classification.

    Queries whose best class is "no object" or whose best-class probability is
    ``<= object_mask_threshold`` are dropped, from the class logits alone: only the kept queries'
    masks are ever upsampled. Each pixel goes to the kept query maximising
    ``score * sigmoid(mask)`` (the first such query on ties); a query keeps the pixels it wins that
    also have ``sigmoid(mask) >= 0.5``, and is dropped when those are fewer than
    ``overlap_threshold`` of its own ``sigmoid(mask) >= 0.5`` area. Segments of the same stuff
    class are merged. The kept queries are upsampled in chunks with a running max/argmax, so the
    result does not depend on ``chunk_bytes``.

    Args:
        mask_cls: [Q, K+1] class logits.
        mask_pred: [Q, H, W] mask logits, or :class:`MaskLogits`.
        object_mask_threshold: minimum class probability of a kept query.
        overlap_threshold: minimum fraction of a query's mask that must remain visible.
        thing_classes: contiguous ids (0..K-1) of the "thing" classes.
        mask_prob: ``sigmoid`` of a [Q, H, W] ``mask_pred`` when the caller already has it.
        chunk_bytes: bound of one [n, H, W] float32 chunk of kept queries; None = all at once.

    Returns:
        ``panoptic_seg`` int32 [H, W] (0 = void, else a segment id), and ``segments_info``: one dict
        ``{"id": int, "isthing": bool, "category_id": int (contiguous)}`` per segment id, ids from 1.
    """
    masks = _as_mask_logits(mask_pred, chunk_bytes)
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    kept = keep.nonzero()[:, 0]
    cur_scores = scores[keep].to(masks.dtype)
    cur_classes = labels[keep]

    height, width = masks.output_size
    panoptic_seg = torch.zeros((height, width), dtype=torch.int32, device=masks.device)
    segments_info: List[Dict] = []
    if len(kept) == 0:
        return panoptic_seg, segments_info

    # Running winner per pixel: its score * prob, its index among the kept queries, and whether
    # its own prob >= 0.5; plus each kept query's own prob >= 0.5 area.
    best, winner, winner_inside = None, None, None
    original_area = torch.zeros(len(kept), dtype=torch.int64)
    chunks = ((0, mask_prob[kept]),) if mask_prob is not None else masks.query_chunks(kept)
    for start, chunk in chunks:
        prob = chunk if mask_prob is not None else chunk.sigmoid_()  # chunk: a fresh tensor
        inside = prob >= 0.5
        original_area[start : start + len(prob)] = inside.flatten(1).sum(1).cpu()
        values, indices = prob.mul_(cur_scores[start : start + len(prob), None, None]).max(0)
        del prob, chunk
        indices = indices[None]
        chunk_inside = inside.gather(0, indices)[0]
        indices = indices[0].to(torch.int32) + start
        if best is None:
            best, winner, winner_inside = values, indices, chunk_inside
            continue
        better = values > best  # strict: the earlier query keeps ties, as argmax does
        best = torch.where(better, values, best)
        winner = torch.where(better, indices, winner)
        winner_inside = torch.where(better, chunk_inside, winner_inside)
        del values, indices, chunk_inside, better
    del best
    flat_winner = winner.flatten().long()
    mask_area = torch.bincount(flat_winner, minlength=len(kept)).cpu()
    visible_area = torch.bincount(flat_winner[winner_inside.flatten()], minlength=len(kept)).cpu()
    del flat_winner

    segment_of_query = torch.zeros(len(kept), dtype=torch.int32)
    thing_classes = set(int(c) for c in thing_classes)
    stuff_segment_ids: Dict[int, int] = {}
    current_segment_id = 0
    for k in range(len(kept)):
        pred_class = int(cur_classes[k].item())
        isthing = pred_class in thing_classes
        won, original, visible = int(mask_area[k]), int(original_area[k]), int(visible_area[k])
        if won == 0 or original == 0 or visible == 0:
            continue
        if won / original < overlap_threshold:
            continue
        if not isthing:
            if pred_class in stuff_segment_ids:
                segment_of_query[k] = stuff_segment_ids[pred_class]
                continue
            stuff_segment_ids[pred_class] = current_segment_id + 1
        current_segment_id += 1
        segment_of_query[k] = current_segment_id
        segments_info.append({"id": current_segment_id, "isthing": bool(isthing), "category_id": pred_class})
    segment_ids = segment_of_query.to(masks.device)[winner.long()]
    panoptic_seg = torch.where(winner_inside, segment_ids, panoptic_seg)
    return panoptic_seg, segments_info


def instance_inference(
    mask_cls: torch.Tensor,
    mask_pred: Masks,
    *,
    test_topk_per_image: int,
    thing_classes: Optional[Collection[int]] = None,
    boxes_from_masks: bool = False,
    mask_prob: Optional[torch.Tensor] = None,
    compact: bool = False,
    chunk_bytes: Optional[int] = DEFAULT_CHUNK_BYTES,
) -> Instances:
    """Instance segmentation from mask classification.

    Every (query, class) pair is a candidate scored by its class probability; the
    ``k = min(test_topk_per_image, Q*K)`` best are kept (in ``torch.topk(sorted=False)`` order).
    With ``thing_classes`` given, candidates of other classes are then dropped. The final score
    multiplies the class probability by the mean mask probability inside the predicted mask.
    Only the selected queries are upsampled, each distinct query once, in chunks, with the masks
    written straight into the preallocated result.

    Args:
        mask_cls: [Q, K+1] class logits.
        mask_pred: [Q, H, W] mask logits at the output resolution, or :class:`MaskLogits`.
        test_topk_per_image: maximum number of instances.
        thing_classes: contiguous ids of the classes to keep (None = all), for panoptic models.
        boxes_from_masks: compute tight boxes around the masks; otherwise boxes are all zero, as in
            the published model.
        mask_prob: ``sigmoid`` of a [Q, H, W] ``mask_pred`` when the caller already has it.
        compact: give the masks as COCO run-length encodings instead of [N, H, W] tensors.
        chunk_bytes: bound of one [n, H, W] float32 chunk of selected queries; None = all at once.

    Returns:
        ``Instances`` of image size (H, W) with ``pred_boxes`` ``Boxes`` [N, 4] (XYXY pixels),
        ``scores`` float [N], ``pred_classes`` int64 [N] (contiguous ids) and either
        ``pred_masks`` float [N, H, W] (1.0 where the mask logit > 0) or, with ``compact``,
        ``pred_masks_rle``: list of N COCO RLE dicts ``{"size": [H, W], "counts": bytes}``
        (``pycocotools.mask.encode`` of the same masks; decode with ``pycocotools.mask.decode``).
    """
    masks = _as_mask_logits(mask_pred, chunk_bytes)
    num_queries, num_classes = mask_cls.shape[0], mask_cls.shape[-1] - 1
    scores = _class_probs(mask_cls)
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
    height, width = masks.output_size
    n = len(per_query)
    query_scores = torch.empty(len(queries), dtype=masks.dtype, device=masks.device)
    boxes = torch.zeros(n, 4, dtype=torch.float32, device=masks.device)
    if compact:
        rles: List[Optional[dict]] = [None] * n
    else:
        pred_masks = torch.empty((n, height, width), dtype=masks.dtype, device=masks.device)
    chunks = ((0, mask_pred[queries]),) if mask_prob is not None else masks.query_chunks(queries)
    for start, logits in chunks:
        stop = start + len(logits)
        foreground = logits > 0
        query_masks = foreground.to(masks.dtype)
        probs = mask_prob[queries] if mask_prob is not None else logits.sigmoid()
        flat_masks = query_masks.flatten(1)
        query_scores[start:stop] = (probs.flatten(1) * flat_masks).sum(1) / (flat_masks.sum(1) + 1e-6)
        del probs, flat_masks
        targets = ((per_query >= start) & (per_query < stop)).nonzero()[:, 0]
        sources = per_query[targets] - start
        if boxes_from_masks:
            boxes[targets] = masks_to_boxes(query_masks).tensor[sources]
        if compact:
            # [n, W, H] C-contiguous = [H, W, n] Fortran-contiguous, as pycocotools expects
            binary = foreground.to(torch.uint8).permute(0, 2, 1).contiguous().cpu().numpy()
            encoded = mask_util.encode(binary.transpose(2, 1, 0))
            for i, j in zip(targets.tolist(), sources.tolist()):
                rles[i] = dict(encoded[j])
        else:
            pred_masks[targets] = query_masks[sources]

    result = Instances((height, width))
    if compact:
        result.pred_masks_rle = rles
    else:
        result.pred_masks = pred_masks
    result.pred_boxes = Boxes(boxes)
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
    padded_size: Optional[Tuple[int, int]] = None,
    compact_outputs: bool = False,
    chunk_bytes: Optional[int] = DEFAULT_CHUNK_BYTES,
    semantic_product_dtype: Optional[torch.dtype] = None,
) -> Dict:
    """All enabled outputs of one image, as :meth:`MaskFormer.forward` returns them.

    Each task upsamples only what it needs (panoptic: the queries above the score threshold;
    instance: the top-k queries, once each; semantic: all queries, band by band of output rows),
    so beside the returned tensors at most one ``chunk_bytes`` chunk of output-resolution planes
    is alive, plus all queries at the padded input resolution when semantic output is on.

    Args:
        mask_cls: [Q, K+1] class logits.
        mask_pred: [Q, H_pad/4, W_pad/4] mask logits at stride 4 of the padded batch when
            ``padded_size`` is given, else [Q, H_pad, W_pad] already at the padded resolution.
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
        padded_size: (H_pad, W_pad) of the padded batch, the size of the first bilinear resize.
        compact_outputs: return ``sem_seg`` as an int32 [height, width] label map with
            ``sem_seg_score`` float [height, width] (its score) instead of the [K, height, width]
            scores, and instance masks as COCO RLE (``instances.pred_masks_rle``) instead of
            ``pred_masks``.
        chunk_bytes: size bound of one float32 chunk of output-resolution planes; None = no
            chunking (the results are the same).
        semantic_product_dtype: ``product_dtype`` of :func:`semantic_inference`.

    Returns:
        dict with, as enabled, ``sem_seg`` [K, height, width] (or, compact, ``sem_seg`` int32
        [height, width] and ``sem_seg_score`` [height, width]), ``panoptic_seg`` and ``instances``.
    """
    masks = MaskLogits(mask_pred, padded_size, image_size, (height, width), chunk_bytes)
    mask_cls = mask_cls.to(masks.dtype)
    result = {}
    if semantic_on:
        if sem_seg_postprocess_before_inference:
            sem_seg = semantic_inference(
                mask_cls, masks, compact=compact_outputs, chunk_bytes=chunk_bytes,
                product_dtype=semantic_product_dtype,
            )
        else:
            padded = semantic_inference(
                mask_cls, masks.padded(crop=False), chunk_bytes=None, product_dtype=semantic_product_dtype
            )
            if compact_outputs:
                sem_seg = _compact_semantic_resized(padded, image_size, (height, width), chunk_bytes)
            else:
                sem_seg = sem_seg_postprocess(padded, image_size, height, width, chunk_bytes=chunk_bytes)
            del padded
        if compact_outputs:
            result["sem_seg"], result["sem_seg_score"] = sem_seg
        else:
            result["sem_seg"] = sem_seg
    if panoptic_on:
        result["panoptic_seg"] = panoptic_inference(
            mask_cls,
            masks,
            object_mask_threshold=object_mask_threshold,
            overlap_threshold=overlap_threshold,
            thing_classes=thing_classes,
        )
    if instance_on:
        result["instances"] = instance_inference(
            mask_cls,
            masks,
            test_topk_per_image=test_topk_per_image,
            thing_classes=thing_classes if panoptic_on else None,
            compact=compact_outputs,
        )
    return result
