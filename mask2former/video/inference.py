"""Video inference of Mask2Former for video instance segmentation: top-k (query, class) pairs over
the whole clip, one mask tube per pair."""
from typing import Dict, Tuple

import torch
from torch.nn import functional as F

__all__ = ["video_instance_inference"]


def video_instance_inference(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    topk: int = 10,
) -> Dict[str, object]:
    """Instances of one clip, as the original ``VideoMaskFormer.inference_video``.

    Scores are ``softmax(pred_logits)[:, :K]``; the ``topk`` best of the Q*K (query, class) pairs
    are kept (a query may appear with two classes), with no threshold and no mask rescoring. Each
    kept query's mask logits are resized bilinearly to the padded input size, cropped to the
    frame size, resized bilinearly to the output size and thresholded at 0.

    Args:
        pred_logits: [Q, K+1] class logits (last = no object).
        pred_masks: [Q, T, h, w] mask logits at 1/4 of the padded input size.
        padded_size: (H_pad, W_pad) of the batched input.
        image_size: (H, W) of the frames before padding.
        output_size: (height, width) of the returned masks.
        topk: number of (query, class) pairs kept (fewer if Q*K is smaller).

    Returns:
        ``{"image_size": (height, width), "pred_scores": list[float], "pred_labels": list[int]
        (contiguous ids 0..K-1), "pred_masks": list of bool [T, height, width] CPU tensors,
        "pred_query_indices": list[int]}``, in the order of ``topk(sorted=False)``.
    """
    num_queries, num_classes = pred_logits.shape[0], pred_logits.shape[1] - 1
    scores = F.softmax(pred_logits, dim=-1)[:, :-1]
    k = min(topk, num_queries * num_classes)
    top_scores, top_indices = scores.flatten().topk(k, sorted=False)
    labels = top_indices % num_classes
    queries = top_indices // num_classes

    masks = F.interpolate(pred_masks[queries], size=tuple(padded_size), mode="bilinear", align_corners=False)
    masks = masks[:, :, : image_size[0], : image_size[1]]
    masks = F.interpolate(masks, size=tuple(output_size), mode="bilinear", align_corners=False) > 0
    return {
        "image_size": tuple(output_size),
        "pred_scores": top_scores.tolist(),
        "pred_labels": labels.tolist(),
        "pred_masks": list(masks.cpu()),
        "pred_query_indices": queries.tolist(),
    }
