"""Per-image set of instances with named fields (Detectron2's ``Instances`` when importable,
else a minimal equivalent with the same API)."""
from typing import Any, Dict, List, Tuple, Union

import torch

try:
    from detectron2.structures import Instances
except ImportError:

    def _concat(name: str, parts: List[Any]) -> Any:
        """Join the values of one field taken from several ``Instances``, keeping their type."""
        first = parts[0]
        if isinstance(first, torch.Tensor):
            return torch.cat(parts)
        if isinstance(first, list):
            return [item for part in parts for item in part]
        joiner = getattr(type(first), "cat", None)
        if joiner is None:
            raise ValueError(f"field '{name}' of type {type(first).__name__} has no cat() to concatenate")
        return joiner(parts)

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
            object.__setattr__(self, "_size", image_size)
            object.__setattr__(self, "_data", {})
            for name in kwargs:
                self.set(name, kwargs[name])

        @property
        def image_size(self) -> Tuple[int, int]:
            """``(height, width)`` of the image in pixels."""
            return self._size

        def __setattr__(self, name: str, value: Any) -> None:
            if name[:1] == "_":
                object.__setattr__(self, name, value)
                return
            self.set(name, value)

        def __getattr__(self, name: str) -> Any:
            # Only reached when normal lookup fails, i.e. for field names.
            data = self.__dict__.get("_data", {})
            if name in data:
                return data[name]
            raise AttributeError(f"Instances has no field '{name}' (fields: {sorted(data)})")

        def set(self, name: str, value: Any) -> None:
            """Add or replace field ``name``.

            Raises:
                ValueError: ``value`` has a length different from the existing fields'.
            """
            n = len(value)
            if self._data and n != len(self):
                raise ValueError(f"field '{name}' has {n} entries but these Instances have {len(self)}")
            self._data[name] = value

        def has(self, name: str) -> bool:
            return name in self._data

        def remove(self, name: str) -> None:
            """Delete field ``name`` (``KeyError`` when absent)."""
            self._data.pop(name)

        def get(self, name: str) -> Any:
            return self._data[name]

        def get_fields(self) -> Dict[str, Any]:
            """The name -> value dict of all fields (not a copy)."""
            return self._data

        def _derive(self, change) -> "Instances":
            """New Instances of the same image with ``change(value)`` applied to every field."""
            return Instances(self._size, **{name: change(value) for name, value in self._data.items()})

        def to(self, *args: Any, **kwargs: Any) -> "Instances":
            """Copy with every field that has ``.to`` converted (same arguments as ``Tensor.to``)."""
            return self._derive(lambda v: v.to(*args, **kwargs) if hasattr(v, "to") else v)

        def __getitem__(self, item: Union[int, slice, torch.Tensor]) -> "Instances":
            """Select instances by int (kept as a length-1 Instances), slice, bool mask or indices.

            Raises:
                IndexError: an int index out of range.
            """
            if type(item) is int:
                n = len(self)
                if not -n <= item < n:
                    raise IndexError(f"index {item} outside Instances of length {n}")
                start = item % n
                item = slice(start, start + 1)
            return self._derive(lambda v: v[item])

        def __len__(self) -> int:
            if not self._data:
                raise NotImplementedError("len() of Instances without fields is undefined")
            return len(next(iter(self._data.values())))

        def __iter__(self):
            raise NotImplementedError("Instances cannot be iterated; index it or read its fields")

        @staticmethod
        def cat(instance_lists: List["Instances"]) -> "Instances":
            """Concatenate instances of the same image (tensors, lists and objects with ``cat``).

            Raises:
                ValueError: empty list, or differing image sizes.
            """
            if not instance_lists:
                raise ValueError("Instances.cat needs at least one Instances")
            head, *rest = instance_lists
            if not rest:
                return head
            sizes = {inst.image_size for inst in instance_lists}
            if len(sizes) > 1:
                raise ValueError(f"Cannot cat Instances of different image sizes {sorted(sizes)}")
            joined = {
                name: _concat(name, [inst.get(name) for inst in instance_lists])
                for name in head.get_fields()
            }
            return Instances(head.image_size, **joined)

        def __repr__(self) -> str:
            fields = ", ".join(f"{k}: {v}" for k, v in self._data.items())
            count = len(self) if self._data else 0
            height, width = self._size
            return (
                f"Instances(num_instances={count}, image_height={height}, image_width={width}, "
                f"fields=[{fields}])"
            )
