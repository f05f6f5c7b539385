"""Axis-aligned boxes (Detectron2's ``Boxes`` when importable, else a minimal equivalent)."""
from typing import List, Tuple, Union

import torch

try:
    from detectron2.structures import Boxes
except ImportError:

    class Boxes:
        """N boxes stored as ``tensor``: float32 [N, 4] in XYXY order, absolute pixel coordinates
        (x0, y0 inclusive top-left corner; x1, y1 exclusive bottom-right corner)."""

        def __init__(self, tensor: torch.Tensor):
            tensor = torch.as_tensor(tensor, dtype=torch.float32)
            if tensor.numel() == 0:
                tensor = tensor.reshape((-1, 4))
            if tensor.dim() != 2 or tensor.size(-1) != 4:
                raise ValueError(f"Boxes need a tensor of shape [N, 4], got {tuple(tensor.shape)}")
            self.tensor = tensor

        def clone(self) -> "Boxes":
            return type(self)(self.tensor.clone())

        def to(self, *args, **kwargs) -> "Boxes":
            """Move/convert the tensor (same arguments as ``torch.Tensor.to``)."""
            return type(self)(self.tensor.to(*args, **kwargs))

        @property
        def device(self) -> torch.device:
            return self.tensor.device

        def _sides(self) -> torch.Tensor:
            """[N, 2] (width, height) of every box in pixels."""
            return self.tensor[:, 2:] - self.tensor[:, :2]

        def area(self) -> torch.Tensor:
            """Box areas, float32 [N], in square pixels."""
            return self._sides().prod(dim=1)

        def clip(self, box_size: Tuple[int, int]) -> None:
            """Clip in place to an image of ``box_size = (height, width)`` pixels.

            Raises:
                ValueError: a coordinate is NaN or infinite.
            """
            if not torch.isfinite(self.tensor).all():
                raise ValueError("Boxes.clip: box coordinates must be finite (found NaN or inf)")
            h, w = box_size
            limits = self.tensor.new_tensor([w, h, w, h])
            self.tensor = torch.minimum(self.tensor.clamp(min=0), limits)

        def nonempty(self, threshold: float = 0.0) -> torch.Tensor:
            """Bool [N]: boxes whose width and height both exceed ``threshold`` pixels."""
            return (self._sides() > threshold).all(dim=1)

        def __getitem__(self, item: Union[int, slice, torch.Tensor]) -> "Boxes":
            """Index like the tensor's first dimension; an int returns a one-box ``Boxes``."""
            selected = self.tensor[item]
            return type(self)(selected.unsqueeze(0) if isinstance(item, int) else selected)

        def __len__(self) -> int:
            return self.tensor.shape[0]

        def __iter__(self):
            yield from self.tensor

        def __repr__(self) -> str:
            return f"Boxes({self.tensor})"

        @classmethod
        def cat(cls, boxes_list: List["Boxes"]) -> "Boxes":
            """Concatenate a list of ``Boxes`` (an empty list gives zero boxes)."""
            if not boxes_list:
                return cls(torch.empty(0, 4))
            return cls(torch.cat([b.tensor for b in boxes_list]))
