"""Inference on raw videos of any length: windows of frames, with instances linked across windows."""
from typing import Dict, Iterable, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..engine.predictor import Predictor

__all__ = ["VideoPredictor", "link_windows"]


class VideoPredictor(Predictor):
    """:class:`Predictor` for video models: ``self(frames)`` runs the model on one clip;
    :meth:`track` runs it window by window over a stream of frames.

    Memory bound: the model sees ``window_size`` frames at a time, and :meth:`track` holds at most
    ``window_size`` decoded frames plus, per kept instance, bool masks of those frames at the output
    resolution, so peak memory grows with ``window_size`` (``TEST.VIDEO_WINDOW_SIZE``) and the
    frame size, not with the length of the video. On top of the frames (3 bytes per pixel) the
    model's activations for one window are about those of ``window_size`` images of the test size,
    plus the decoder's Q x (window_size * h * w) attention masks per layer.

    Args:
        cfg: a video model's config; ``TEST.VIDEO_WINDOW_SIZE`` and ``TEST.VIDEO_WINDOW_OVERLAP``
            set the windows.

    Raises:
        ValueError: overlap not in [0, window_size), or the errors of :class:`Predictor`.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        self.window_size = cfg.TEST.VIDEO_WINDOW_SIZE
        self.overlap = cfg.TEST.VIDEO_WINDOW_OVERLAP
        if not 0 <= self.overlap < self.window_size:
            raise ValueError(
                f"TEST.VIDEO_WINDOW_OVERLAP={self.overlap} must be in "
                f"[0, TEST.VIDEO_WINDOW_SIZE={self.window_size})"
            )

    def __call__(self, frames: Sequence[np.ndarray]) -> Dict:
        """The model's output (see :func:`~mask2former.video.video_instance_inference`) for one clip of
        BGR uint8 [H, W, 3] frames, masks at H x W.

        Raises:
            ValueError: no frame, a frame that is not uint8 [H, W, 3], or frames of different sizes.
        """
        if not frames:
            raise ValueError("VideoPredictor needs at least one frame")
        if len({f.shape for f in frames}) != 1:
            sizes = sorted({f.shape for f in frames})
            raise ValueError(f"all frames of a clip must have one size, got {sizes}")
        inputs = [self._prepare(f) for f in frames]
        video = {
            "image": [x["image"] for x in inputs], "height": inputs[0]["height"], "width": inputs[0]["width"]
        }
        with torch.no_grad():
            return self.model([video])

    def track(self, frames: Iterable[np.ndarray]) -> Iterator[Tuple[np.ndarray, List[Dict]]]:
        """Predict a stream of BGR frames window by window.

        Windows of ``window_size`` frames start every ``window_size - overlap`` frames; the
        instances of a window are linked to those of the previous one by :func:`link_windows` on
        the overlapping frames and keep their ``track_id``; the others get new ids (increasing
        from 0). Every frame is yielded once, with the predictions of the latest window that
        contains it.

        Yields:
            ``(frame, instances)`` in frame order; ``instances``: list of ``{"track_id", "score",
            "label", "mask": bool [H, W]}`` visible (non-empty mask) in that frame.
        """
        step = self.window_size - self.overlap
        buffer: List[np.ndarray] = []
        previous: List[Dict] = []
        next_id = 0
        iterator = iter(frames)
        exhausted = False
        while not exhausted:
            while len(buffer) < self.window_size:
                try:
                    buffer.append(next(iterator))
                except StopIteration:
                    exhausted = True
                    break
            if previous and len(buffer) <= self.overlap:
                # The stream ended inside the last overlap: those frames have their predictions.
                yield from self._frames_with(buffer, previous)
                break
            if not buffer:
                break
            output = self(buffer)
            tubes = [
                {"score": s, "label": int(l), "masks": m.numpy()}
                for s, l, m in zip(output["pred_scores"], output["pred_labels"], output["pred_masks"])
            ]
            ids, next_id = link_windows(previous, tubes, self.overlap, next_id)
            for tube, track_id in zip(tubes, ids):
                tube["track_id"] = track_id
            emit = len(buffer) if exhausted else step
            yield from self._frames_with(buffer[:emit], tubes)
            previous = [dict(tube, masks=tube["masks"][step:]) for tube in tubes]
            buffer = buffer[emit:]

    @staticmethod
    def _frames_with(frames: Sequence[np.ndarray], tubes: Sequence[Dict]
                     ) -> Iterator[Tuple[np.ndarray, List[Dict]]]:
        for t, frame in enumerate(frames):
            yield frame, [
                {"track_id": tube["track_id"], "score": tube["score"], "label": tube["label"],
                 "mask": tube["masks"][t]}
                for tube in tubes if tube["masks"][t].any()
            ]


def link_windows(previous: Sequence[Dict], current: Sequence[Dict], overlap: int, next_id: int,
                 min_iou: float = 0.5) -> Tuple[List[int], int]:
    """Track ids of ``current``'s tubes: one-to-one (Hungarian) matching with ``previous``'s by the
    spatio-temporal mask IoU over the ``overlap`` shared frames, among pairs of the same label with
    IoU >= ``min_iou``; unmatched tubes get new ids from ``next_id``.

    Args:
        previous: tubes with ``track_id``, ``label`` and ``masks`` bool [>= overlap, H, W] whose first
            ``overlap`` frames are the shared ones.
        current: tubes with ``label`` and ``masks`` bool [T, H, W], frames 0..overlap-1 shared.

    Returns:
        (ids aligned with ``current``, the next unused id).
    """
    ids: List[int] = [-1] * len(current)
    if overlap > 0 and previous and current:
        a = np.stack([p["masks"][:overlap].reshape(-1) for p in previous]).astype(np.float32)
        b = np.stack([c["masks"][:overlap].reshape(-1) for c in current]).astype(np.float32)
        inter = a @ b.T
        union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        same = np.array([[p["label"] == c["label"] for c in current] for p in previous])
        cost = np.where(same & (iou >= min_iou), -iou, 1.0)
        for i, j in zip(*linear_sum_assignment(cost)):
            if cost[i, j] < 0:
                ids[j] = previous[i]["track_id"]
    for j in range(len(ids)):
        if ids[j] == -1:
            ids[j], next_id = next_id, next_id + 1
    return ids, next_id
