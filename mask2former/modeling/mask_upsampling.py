"""Mask logits of one image at the output resolution, upsampled on demand and in bounded chunks.

Mask2Former predicts mask logits at stride 4 of the padded input. Inference resizes them in two
steps, both bilinear with ``align_corners=False``: to the padded input size, then, with the
padding cropped off, to the output size (Cheng et al., CVPR 2022, Appendix A; Detectron2's
``sem_seg_postprocess``). :class:`MaskLogits` performs that resize only for the queries (or the
output rows) a task asks for, so that no full-resolution tensor per query ever exists at once.
"""
from typing import Iterator, List, Optional, Tuple

import torch
from torch.nn import functional as F

from ..layers.ms_deform_attn_compiled import EXTENSION_AVAILABLE
from ..utils.tracing import eager_inference

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "MaskLogits",
    "band_ranges",
    "chunk_length",
    "resize_bilinear",
    "resize_bilinear_band",
    "resize_bilinear_rows",
]

# Default size bound of one chunk tensor (float32): at 4000x3000 one query plane is 48 MB.
DEFAULT_CHUNK_BYTES = 64 * 2**20


def chunk_length(total: int, bytes_per_item: int, chunk_bytes: Optional[int]) -> int:
    """How many items of ``bytes_per_item`` fit in ``chunk_bytes`` (at least 1, at most
    ``total``); ``chunk_bytes=None`` means one chunk of everything."""
    if chunk_bytes is None:
        return max(total, 1)
    return max(1, min(total, chunk_bytes // max(bytes_per_item, 1)))


# Output sizes the compiled resize takes: at least this many rows and columns, the columns a
# multiple of COMPILED_RESIZE_WIDTH_MULTIPLE (padded inputs are multiples of 32). There the values
# are PyTorch's bit for bit (tests/test_mask_upsampling.py); on smaller outputs PyTorch's kernel
# splits its loops otherwise and rounds a few values differently.
COMPILED_RESIZE_MIN_SIZE = 128
COMPILED_RESIZE_WIDTH_MULTIPLE = 16


def _compiled_resize_applies(x: torch.Tensor, size: Tuple[int, int]) -> bool:
    """Whether ``mask2former::resize_bilinear`` (the compiled CPU kernel) resizes x to ``size``:
    float32 on the CPU, with the extension built, no gradient needed, nothing traced or exported,
    and an upsampling to an output of the sizes above."""
    height, width = (int(s) for s in size)
    return (
        min(height, width) >= COMPILED_RESIZE_MIN_SIZE
        and width % COMPILED_RESIZE_WIDTH_MULTIPLE == 0
        and height >= x.shape[-2]
        and width >= x.shape[-1]
        and EXTENSION_AVAILABLE
        and hasattr(torch.ops.mask2former, "resize_bilinear")
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and eager_inference(x)
    )


def resize_bilinear(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x[None], size, mode="bilinear", align_corners=False)[0]`` for x [C, h, w].

    Each channel's result is bit-identical to resizing all channels together, which lets callers
    resize any subset of channels. (On one thread PyTorch sends exactly 3 channels to its image
    kernel, which rounds differently, so 3 channels are resized as 2 + 1.) Float32 CPU inference
    runs the compiled kernel (:func:`resize_bilinear_band`), with the same values.
    """
    if _compiled_resize_applies(x, size):
        return resize_bilinear_band(x, size, (0, size[0]))
    if x.shape[0] == 3:
        return torch.cat([resize_bilinear(x[:2], size), resize_bilinear(x[2:], size)])
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]


def resize_bilinear_band(x: torch.Tensor, size: Tuple[int, int], rows: Tuple[int, int]) -> torch.Tensor:
    """Output rows ``rows[0]..rows[1]-1`` of :func:`resize_bilinear` of x [C, h, w] to ``size``,
    [C, rows[1] - rows[0], size[1]], bit for bit, computing only those rows.

    For float32 CPU inference upsampling to outputs of at least 128 x 128 pixels (columns a
    multiple of 16) this is the compiled ``mask2former::resize_bilinear``: it reproduces the
    rounding of PyTorch's CPU kernel (fused multiply-adds under ATen's AVX2 / AVX512
    capabilities, separate products under its baseline one) but resizes each needed input row
    along the width once instead of once per output pixel, and allocates only the band. Otherwise
    the whole resize is computed and sliced.

    Raises:
        ValueError: unless 0 <= rows[0] < rows[1] <= size[0].
    """
    if not 0 <= rows[0] < rows[1] <= size[0]:
        raise ValueError(f"resize_bilinear_band: rows must satisfy 0 <= start < stop <= {size[0]}, got {tuple(rows)}")
    if _compiled_resize_applies(x, size):
        return torch.ops.mask2former.resize_bilinear(x, [int(s) for s in size], int(rows[0]), int(rows[1]))
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0, :, rows[0] : rows[1]]


def _source_indices(in_size: int, out_size: int, start: int, stop: int, device):
    """Bilinear (``align_corners=False``) source indices and weights of output positions
    ``start..stop-1`` along one axis: ``src = (dst + 0.5) * in/out - 0.5`` clamped at 0, with the
    float32 scale ``in/out`` of PyTorch's kernels and the multiply-add rounded once (in float64,
    then to float32), as a fused multiply-add does."""
    scale = (torch.tensor(in_size, dtype=torch.float32) / out_size).double()
    dst = torch.arange(start, stop, dtype=torch.float64, device=device)
    src = (scale.to(device) * (dst + 0.5) - 0.5).float().clamp(min=0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    lambda1 = (src - i0).clamp(0, 1)
    i1 = i0 + (i0 < in_size - 1).long()
    return i0, i1, 1 - lambda1, lambda1


def resize_bilinear_rows(x: torch.Tensor, size: Tuple[int, int], rows: Tuple[int, int]) -> torch.Tensor:
    """Output rows ``rows[0]..rows[1]-1`` of the bilinear resize of x [C, h, w] to ``size``.

    Same formula as :func:`resize_bilinear` (``align_corners=False``), interpolating along the
    width then the height, but computed for a band of output rows only. The float rounding order
    differs from PyTorch's kernel: values agree to about one unit in the last place (about half
    of them bit for bit), not exactly.

    Returns:
        [C, rows[1] - rows[0], size[1]], dtype of x.
    """
    h, w = x.shape[-2:]
    h0, h1, lh0, lh1 = _source_indices(h, size[0], rows[0], rows[1], x.device)
    w0, w1, lw0, lw1 = _source_indices(w, size[1], 0, size[1], x.device)
    lo, hi = int(h0.min()), int(h1.max()) + 1
    band = x[:, lo:hi]
    along_w = band[..., w0].mul_(lw0.to(x.dtype)).add_(band[..., w1].mul_(lw1.to(x.dtype)))
    out = x.new_empty((x.shape[0], rows[1] - rows[0], size[1]))
    second = x.new_empty((x.shape[0], size[1]))
    # one output row at a time from views of the two source rows (no gathered copies)
    for i, (a, b, wa, wb) in enumerate(zip((h0 - lo).tolist(), (h1 - lo).tolist(), lh0.tolist(), lh1.tolist())):
        torch.mul(along_w[:, a], wa, out=out[:, i])
        torch.mul(along_w[:, b], wb, out=second)
        out[:, i].add_(second)
    return out


class MaskLogits:
    """The [Q, height, width] mask logits of one image, computed only where asked for.

    Args:
        pred_masks: [Q, H_pad/4, W_pad/4] mask logits at stride 4 of the padded batch when
            ``padded_size`` is given, else [Q, H_pad, W_pad] already at the padded resolution.
        padded_size: (H_pad, W_pad) of the padded batch, the size of the first resize.
        image_size: (h, w) of the unpadded input; rows >= h and columns >= w are padding.
        output_size: (height, width) the masks are resized to.
        chunk_bytes: size bound of one float32 chunk (see :func:`chunk_length`); None = no bound.

    The results are those of resizing all queries at once with ``F.interpolate``: bit for bit for
    :meth:`select`, and for :meth:`rows` when the output size is the input size (float32 on the
    CPU: only the band's rows are computed, :func:`resize_bilinear_band`); to float rounding for
    :meth:`rows` otherwise (:func:`resize_bilinear_rows`).
    """

    def __init__(
        self,
        pred_masks: torch.Tensor,
        padded_size: Optional[Tuple[int, int]],
        image_size: Tuple[int, int],
        output_size: Tuple[int, int],
        chunk_bytes: Optional[int] = DEFAULT_CHUNK_BYTES,
    ):
        if pred_masks.dim() != 3:
            raise ValueError(f"pred_masks must be [Q, H, W], got shape {tuple(pred_masks.shape)}")
        self._low = pred_masks
        self.padded_size = tuple(int(s) for s in (padded_size or pred_masks.shape[-2:]))
        self.image_size = tuple(int(s) for s in image_size)
        self.output_size = tuple(int(s) for s in output_size)
        self.chunk_bytes = chunk_bytes
        self._padded: Optional[torch.Tensor] = None if padded_size is not None else pred_masks
        self._at_output = False

    @classmethod
    def full_resolution(cls, mask_pred: torch.Tensor, chunk_bytes: Optional[int] = DEFAULT_CHUNK_BYTES):
        """Wrap logits already at the output resolution, [Q, height, width] (nothing is resized)."""
        size = tuple(mask_pred.shape[-2:])
        masks = cls(mask_pred, None, size, size, chunk_bytes)
        masks._at_output = True
        return masks

    @property
    def num_queries(self) -> int:
        return int(self._low.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self._low.dtype

    @property
    def device(self) -> torch.device:
        return self._low.device

    def padded(self, crop: bool = True) -> torch.Tensor:
        """All queries at the padded input resolution (cached; input-sized, not output-sized):
        [Q, h, w] cropped to the image, or [Q, H_pad, W_pad] with ``crop=False``."""
        if self._padded is None:
            self._padded = resize_bilinear(self._low, self.padded_size)
        if not crop:
            return self._padded
        return self._padded[:, : self.image_size[0], : self.image_size[1]]

    def select(self, queries: torch.Tensor) -> torch.Tensor:
        """Logits of the given query indices at the output resolution, [len(queries), height, width]."""
        if self._at_output:
            return self._low[queries]
        if self._padded is not None:
            cropped = self.padded()[queries]
        else:
            cropped = resize_bilinear(self._low[queries], self.padded_size)[:, : self.image_size[0], : self.image_size[1]]
        if self.image_size == self.output_size:  # the second resize would be a copy
            return cropped
        return resize_bilinear(cropped, self.output_size)

    def query_chunks(self, queries: torch.Tensor) -> Iterator[Tuple[int, torch.Tensor]]:
        """``(start, logits)`` for consecutive chunks of ``queries``: logits [n, height, width] of
        ``queries[start:start+n]``, n bounded by ``chunk_bytes``."""
        plane = self.output_size[0] * self.output_size[1] * 4
        step = chunk_length(len(queries), plane, self.chunk_bytes)
        for start in range(0, len(queries), step):
            yield start, self.select(queries[start : start + step])

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """All queries' logits on output rows ``start..stop-1``, [Q, stop - start, width]."""
        if self._at_output:
            return self._low[:, start:stop]
        if self.image_size == self.output_size:  # outputs at the input size: the resize is a copy
            if self._padded is None and _compiled_resize_applies(self._low, self.padded_size):
                band = resize_bilinear_band(self._low, self.padded_size, (start, stop))
                return band[..., : self.image_size[1]]
            return self.padded()[:, start:stop]
        return resize_bilinear_rows(self.padded(), self.output_size, (start, stop))

    def row_bands(self, channels: int, chunk_bytes: Optional[int] = None) -> Iterator[Tuple[int, int]]:
        """``(start, stop)`` output-row bands such that a [max(Q, channels), band, width] float32
        tensor fits in ``chunk_bytes`` (``self.chunk_bytes`` when None)."""
        height, width = self.output_size
        row = max(self.num_queries, channels) * width * 4
        return band_ranges(height, chunk_length(height, row, chunk_bytes or self.chunk_bytes))


def band_ranges(length: int, step: int) -> List[Tuple[int, int]]:
    """Consecutive ``(start, stop)`` ranges of at most ``step`` covering ``0..length-1``."""
    return [(s, min(s + step, length)) for s in range(0, length, step)]
