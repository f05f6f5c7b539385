"""Shortest-edge resizing, numerically identical to Detectron2's ``ResizeShortestEdge``.

The output size keeps the aspect ratio: the short edge becomes ``short_edge_length`` unless the
long edge would exceed ``max_size``, in which case the long edge becomes ``max_size``; both sides
are rounded with ``int(x + 0.5)``. uint8 images are resized with PIL (bilinear by default, which
antialiases when shrinking); other dtypes with ``torch.nn.functional.interpolate`` through
fvcore's :class:`~fvcore.transforms.ScaleTransform`.
"""

import sys
from typing import Sequence, Tuple, Union

import numpy as np
from fvcore.transforms import NoOpTransform, ScaleTransform, Transform
from PIL import Image

__all__ = ["ResizeTransform", "ResizeShortestEdge"]

_PIL_TO_TORCH_MODE = {
    Image.Resampling.NEAREST: "nearest",
    Image.Resampling.BILINEAR: "bilinear",
    Image.Resampling.BICUBIC: "bicubic",
}


class ResizeTransform(Transform):
    """Resize from ``(h, w)`` to ``(new_h, new_w)`` pixels.

    Args:
        h, w: input height and width.
        new_h, new_w: output height and width.
        interp: a PIL resampling filter (``NEAREST``, ``BILINEAR`` or ``BICUBIC``).
    """

    def __init__(
        self,
        h: int,
        w: int,
        new_h: int,
        new_w: int,
        interp: Image.Resampling = Image.Resampling.BILINEAR,
    ):
        super().__init__()
        if interp not in _PIL_TO_TORCH_MODE:
            raise ValueError(
                f"ResizeTransform(interp={interp!r}) must be NEAREST, BILINEAR or BICUBIC"
            )
        self.h, self.w, self.new_h, self.new_w, self.interp = h, w, new_h, new_w, interp

    def apply_image(self, img: np.ndarray, interp: Image.Resampling = None) -> np.ndarray:
        """Resize ``img`` of shape [h, w] or [h, w, C] (any dtype) to [new_h, new_w(, C)].

        Raises:
            ValueError: ``img`` is not ``h x w`` pixels.
        """
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(
                f"ResizeTransform expects a {self.h}x{self.w} image, got shape {img.shape}"
            )
        interp = self.interp if interp is None else interp
        if img.dtype == np.uint8:
            squeeze = img.ndim == 3 and img.shape[2] == 1
            pil_image = Image.fromarray(img[:, :, 0] if squeeze else img)
            out = np.asarray(pil_image.resize((self.new_w, self.new_h), interp))
            return out[:, :, None] if squeeze else out
        scale = ScaleTransform(self.h, self.w, self.new_h, self.new_w, _PIL_TO_TORCH_MODE[interp])
        return scale.apply_image(np.ascontiguousarray(img))

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """Scale float (x, y) coordinates of shape [N, 2] in place; returns them."""
        for axis, factor in enumerate((self.new_w / self.w, self.new_h / self.h)):
            coords[:, axis] = coords[:, axis] * factor
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Resize a label map [h, w] with nearest-neighbour sampling."""
        return self.apply_image(segmentation, interp=Image.Resampling.NEAREST)

    def inverse(self) -> "ResizeTransform":
        return type(self)(h=self.new_h, w=self.new_w, new_h=self.h, new_w=self.w, interp=self.interp)


class ResizeShortestEdge:
    """Scale the short edge to a (sampled) length, capping the long edge at ``max_size``.

    Args:
        short_edge_length: an int (the test-time ``INPUT.MIN_SIZE_TEST``; 0 disables resizing), a
            ``(min, max)`` range to sample from uniformly (``sample_style="range"``), or a list to
            choose from (``sample_style="choice"``).
        max_size: upper bound of the long edge (``INPUT.MAX_SIZE_TEST``).
        sample_style: "range" or "choice".
        interp: PIL resampling filter.
    """

    def __init__(
        self,
        short_edge_length: Union[int, Sequence[int]],
        max_size: int = sys.maxsize,
        sample_style: str = "range",
        interp: Image.Resampling = Image.Resampling.BILINEAR,
    ):
        if sample_style not in ("range", "choice"):
            raise ValueError(f"sample_style must be 'range' or 'choice', got {sample_style!r}")
        lengths = [short_edge_length] * 2 if isinstance(short_edge_length, int) else short_edge_length
        lengths = tuple(int(x) for x in lengths)
        if sample_style == "range" and len(lengths) != 2:
            raise ValueError(f"sample_style='range' needs (min, max), got {lengths}")
        self.short_edge_length = lengths
        self.max_size = max_size
        self.sample_style = sample_style
        self.interp = interp

    def get_transform(self, image: np.ndarray) -> Transform:
        """The resize for ``image`` [H, W, ...]; a no-op when the sampled length is 0."""
        h, w = image.shape[:2]
        if self.sample_style == "range":
            size = int(np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1))
        else:
            size = int(np.random.choice(self.short_edge_length))
        if size == 0:
            return NoOpTransform()
        new_h, new_w = self.get_output_shape(h, w, size, self.max_size)
        return ResizeTransform(h, w, new_h, new_w, self.interp)

    @staticmethod
    def get_output_shape(
        old_h: int, old_w: int, short_edge_length: int, max_size: int
    ) -> Tuple[int, int]:
        """``(new_h, new_w)`` for an ``old_h x old_w`` image (see the module docstring)."""
        scale = short_edge_length * 1.0 / min(old_h, old_w)
        if old_h < old_w:
            new_h, new_w = short_edge_length * 1.0, scale * old_w
        else:
            new_h, new_w = scale * old_h, short_edge_length * 1.0
        if max(new_h, new_w) > max_size:
            scale = max_size * 1.0 / max(new_h, new_w)
            new_h, new_w = new_h * scale, new_w * scale
        return int(new_h + 0.5), int(new_w + 0.5)
