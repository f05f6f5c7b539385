"""Batch of differently sized images padded into one tensor (Detectron2's ``ImageList`` when
importable, else a minimal equivalent)."""
from typing import List, Sequence, Tuple

import torch
from torch.nn import functional as F

try:
    from detectron2.structures import ImageList
except ImportError:

    class ImageList:
        """Images padded to a common size, with their original sizes.

        Attributes:
            tensor: [N, ..., H_pad, W_pad]; image ``i`` occupies ``[..., :h_i, :w_i]`` (padding is at
                the bottom and right).
            image_sizes: ``[(h_i, w_i)]``, the unpadded size of each image in pixels.
        """

        def __init__(self, tensor: torch.Tensor, image_sizes: List[Tuple[int, int]]):
            self.tensor, self.image_sizes = tensor, image_sizes

        def __len__(self) -> int:
            return len(self.image_sizes)

        def __getitem__(self, idx: int) -> torch.Tensor:
            """The unpadded image ``idx``: [..., h_idx, w_idx]."""
            h, w = self.image_sizes[idx]
            return self.tensor[idx, ..., :h, :w]

        def to(self, *args, **kwargs) -> "ImageList":
            return type(self)(self.tensor.to(*args, **kwargs), self.image_sizes)

        @property
        def device(self) -> torch.device:
            return self.tensor.device

        @staticmethod
        def from_tensors(
            tensors: Sequence[torch.Tensor], size_divisibility: int = 0, pad_value: float = 0.0
        ) -> "ImageList":
            """Pad ``tensors`` (each [..., H_i, W_i], equal leading dims) at the bottom/right with
            ``pad_value`` to the largest H and W, rounded up to a multiple of ``size_divisibility``
            when it is > 1.

            Raises:
                ValueError: empty input, or leading dimensions that differ.
            """
            if len(tensors) == 0:
                raise ValueError("ImageList.from_tensors needs at least one tensor")
            lead = tensors[0].shape[:-2]
            for t in tensors:
                if t.shape[:-2] != lead:
                    raise ValueError(
                        f"All tensors need the same leading shape {tuple(lead)}, got {tuple(t.shape)}"
                    )
            image_sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
            max_h = max(h for h, _ in image_sizes)
            max_w = max(w for _, w in image_sizes)
            if size_divisibility > 1:
                stride = size_divisibility
                max_h = (max_h + stride - 1) // stride * stride
                max_w = (max_w + stride - 1) // stride * stride
            if len(tensors) == 1:
                h, w = image_sizes[0]
                batched = F.pad(tensors[0], [0, max_w - w, 0, max_h - h], value=pad_value)[None]
            else:
                batched = tensors[0].new_full((len(tensors), *lead, max_h, max_w), pad_value)
                for i, t in enumerate(tensors):
                    batched[i, ..., : t.shape[-2], : t.shape[-1]].copy_(t)
            return ImageList(batched.contiguous(), image_sizes)
