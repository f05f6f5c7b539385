"""Overlays of tracked video instances: one colour per track id, so an instance keeps its colour
(and its ``#id`` label) in every frame."""
from typing import Dict, Sequence

import numpy as np

from ..utils.visualizer import Visualizer, _palette_color

__all__ = ["VideoVisualizer"]


class VideoVisualizer(Visualizer):
    """:class:`Visualizer` for one frame of a tracked video."""

    def draw_tracks(self, instances: Sequence[Dict], score_threshold: float = 0.5) -> np.ndarray:
        """Colour the masks of the instances scoring at least ``score_threshold``.

        Args:
            instances: ``{"track_id", "score", "label" (contiguous class id), "mask": bool [H, W]}``
                as yielded by :meth:`VideoPredictor.track`.
            score_threshold: minimum score of a drawn instance.

        Returns:
            uint8 [H, W, 3] RGB image, labelled ``#<track id> <class> <score>%``; the highest
            scores are drawn on top.
        """
        kept = sorted((x for x in instances if x["score"] >= score_threshold), key=lambda x: x["score"])
        segments = [
            (np.asarray(x["mask"], dtype=bool), _palette_color(int(x["track_id"])),
             f"#{x['track_id']} {self._thing_name(int(x['label']))} {x['score'] * 100:.0f}%")
            for x in kept
        ]
        return self._draw_segments(segments)
