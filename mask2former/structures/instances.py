"""Per-image set of instances with named fields (Detectron2's ``Instances`` when importable,
else a minimal equivalent with the same API)."""
import itertools
from typing import Any, Dict, List, Tuple, Union

import torch

try:
    from detectron2.structures import Instances
except ImportError:

    class Instances:
        """Fields of equal length N describing the instances found in one image.

        Fields are read/written as attributes (``inst.scores = t``) or via :meth:`set`/:meth:`get`.
        Every field supports ``len()`` and ``__getitem__`` over its first dimension (tensors,
        lists, :class:`~mask2former.structures.Boxes`, ...).

        Args:
            image_size: ``(height, width)`` of the image in pixels.
            **kwargs: initial fields.
        """

        def __init__(self, image_size: Tuple[int, int], **kwargs: Any):
            self._image_size = image_size
            self._fields: Dict[str, Any] = {}
            for k, v in kwargs.items():
                self.set(k, v)

        @property
        def image_size(self) -> Tuple[int, int]:
            return self._image_size

        def __setattr__(self, name: str, val: Any) -> None:
            if name.startswith("_"):
                super().__setattr__(name, val)
            else:
                self.set(name, val)

        def __getattr__(self, name: str) -> Any:
            if name == "_fields" or name not in self._fields:
                raise AttributeError(f"Cannot find field '{name}' in the given Instances!")
            return self._fields[name]

        def set(self, name: str, value: Any) -> None:
            """Set field ``name``.

            Raises:
                ValueError: ``value`` has a length different from the existing fields'.
            """
            data_len = len(value)
            if self._fields and len(self) != data_len:
                raise ValueError(
                    f"Adding a field '{name}' of length {data_len} to Instances of length {len(self)}"
                )
            self._fields[name] = value

        def has(self, name: str) -> bool:
            return name in self._fields

        def remove(self, name: str) -> None:
            del self._fields[name]

        def get(self, name: str) -> Any:
            return self._fields[name]

        def get_fields(self) -> Dict[str, Any]:
            """The name -> value dict of all fields (not a copy)."""
            return self._fields

        def to(self, *args: Any, **kwargs: Any) -> "Instances":
            """Copy with every field that has ``.to`` converted (same arguments as ``Tensor.to``)."""
            ret = Instances(self._image_size)
            for k, v in self._fields.items():
                if hasattr(v, "to"):
                    v = v.to(*args, **kwargs)
                ret.set(k, v)
            return ret

        def __getitem__(self, item: Union[int, slice, torch.Tensor]) -> "Instances":
            """Select instances by int (kept as a length-1 Instances), slice, bool mask or indices.

            Raises:
                IndexError: an int index out of range.
            """
            if type(item) is int:
                if item >= len(self) or item < -len(self):
                    raise IndexError("Instances index out of range!")
                item = slice(item, None, len(self))
            ret = Instances(self._image_size)
            for k, v in self._fields.items():
                ret.set(k, v[item])
            return ret

        def __len__(self) -> int:
            for v in self._fields.values():
                return v.__len__()
            raise NotImplementedError("Empty Instances does not support __len__!")

        def __iter__(self):
            raise NotImplementedError("`Instances` object is not iterable!")

        @staticmethod
        def cat(instance_lists: List["Instances"]) -> "Instances":
            """Concatenate instances of the same image (tensors, lists and objects with ``cat``).

            Raises:
                ValueError: empty list, or differing image sizes.
            """
            if len(instance_lists) == 0:
                raise ValueError("Instances.cat needs at least one Instances")
            if len(instance_lists) == 1:
                return instance_lists[0]
            image_size = instance_lists[0].image_size
            for i in instance_lists[1:]:
                if i.image_size != image_size:
                    raise ValueError(f"Cannot cat Instances of sizes {image_size} and {i.image_size}")
            ret = Instances(image_size)
            for k in instance_lists[0]._fields:
                values = [i.get(k) for i in instance_lists]
                v0 = values[0]
                if isinstance(v0, torch.Tensor):
                    values = torch.cat(values, dim=0)
                elif isinstance(v0, list):
                    values = list(itertools.chain(*values))
                elif hasattr(type(v0), "cat"):
                    values = type(v0).cat(values)
                else:
                    raise ValueError(f"Unsupported type {type(v0)} for concatenation")
                ret.set(k, values)
            return ret

        def __repr__(self) -> str:
            fields = ", ".join(f"{k}: {v}" for k, v in self._fields.items())
            return (
                f"Instances(num_instances={len(self) if self._fields else 0}, "
                f"image_height={self._image_size[0]}, image_width={self._image_size[1]}, "
                f"fields=[{fields}])"
            )
