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
            if not isinstance(tensor, torch.Tensor):
                tensor = torch.as_tensor(tensor, dtype=torch.float32)
            else:
                tensor = tensor.to(torch.float32)
            if tensor.numel() == 0:
                tensor = tensor.reshape((-1, 4))
            if tensor.dim() != 2 or tensor.size(-1) != 4:
                raise ValueError(f"Boxes need a tensor of shape [N, 4], got {tuple(tensor.shape)}")
            self.tensor = tensor

        def clone(self) -> "Boxes":
            return Boxes(self.tensor.clone())

        def to(self, *args, **kwargs) -> "Boxes":
            """Move/convert the tensor (same arguments as ``torch.Tensor.to``)."""
            return Boxes(self.tensor.to(*args, **kwargs))

        @property
        def device(self) -> torch.device:
            return self.tensor.device

        def area(self) -> torch.Tensor:
            """Box areas, float32 [N], in square pixels."""
            box = self.tensor
            return (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])

        def clip(self, box_size: Tuple[int, int]) -> None:
            """Clip in place to an image of ``box_size = (height, width)`` pixels."""
            if not torch.isfinite(self.tensor).all():
                raise ValueError("Box tensor contains infinite or NaN!")
            h, w = box_size
            x0 = self.tensor[:, 0].clamp(min=0, max=w)
            y0 = self.tensor[:, 1].clamp(min=0, max=h)
            x1 = self.tensor[:, 2].clamp(min=0, max=w)
            y1 = self.tensor[:, 3].clamp(min=0, max=h)
            self.tensor = torch.stack((x0, y0, x1, y1), dim=-1)

        def nonempty(self, threshold: float = 0.0) -> torch.Tensor:
            """Bool [N]: boxes whose width and height both exceed ``threshold`` pixels."""
            widths = self.tensor[:, 2] - self.tensor[:, 0]
            heights = self.tensor[:, 3] - self.tensor[:, 1]
            return (widths > threshold) & (heights > threshold)

        def __getitem__(self, item: Union[int, slice, torch.Tensor]) -> "Boxes":
            """Index like the tensor's first dimension; an int returns a one-box ``Boxes``."""
            if isinstance(item, int):
                return Boxes(self.tensor[item].view(1, -1))
            return Boxes(self.tensor[item])

        def __len__(self) -> int:
            return self.tensor.shape[0]

        def __iter__(self):
            yield from self.tensor

        def __repr__(self) -> str:
            return f"Boxes({self.tensor})"

        @classmethod
        def cat(cls, boxes_list: List["Boxes"]) -> "Boxes":
            """Concatenate a list of ``Boxes`` (an empty list gives zero boxes)."""
            if len(boxes_list) == 0:
                return cls(torch.empty(0, 4))
            return cls(torch.cat([b.tensor for b in boxes_list], dim=0))
