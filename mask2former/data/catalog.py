"""Global catalogs of datasets and of their metadata.

When Detectron2 is importable, :data:`DatasetCatalog` and :data:`MetadataCatalog` *are*
``detectron2.data.DatasetCatalog`` / ``detectron2.data.MetadataCatalog`` (so datasets registered
here are visible to Detectron2's data loaders and vice versa). Otherwise they are the minimal
implementations below, with the same API:

- ``DatasetCatalog.register(name, fn)``: ``fn()`` takes no argument and returns ``list[dict]`` in
  Detectron2's dataset format; registering a name twice raises ``ValueError``.
- ``DatasetCatalog.get(name)`` calls the registered function (``KeyError`` naming the known
  datasets when ``name`` is unknown); ``list()``, ``remove(name)``.
- ``MetadataCatalog.get(name)`` returns the (created on first use) :class:`Metadata` singleton
  of ``name``; ``list()``, ``remove(name)``.
"""
from collections import UserDict
from typing import Any, Callable, Dict, List

__all__ = ["Metadata", "DatasetCatalog", "MetadataCatalog"]


class Metadata:
    """Attribute-style metadata of one dataset (class names, colours, id maps, file roots, ...).

    Fields are set once: setting a field again to a *different* value raises ``ValueError``
    (metadata of one name must stay consistent); setting it to an equal value is a no-op.
    Reading a missing field raises ``AttributeError`` naming the field, the dataset and the
    available fields.
    """

    def __init__(self, name: str = "N/A", **kwargs: Any):
        object.__setattr__(self, "name", name)
        self.set(**kwargs)

    def __getattr__(self, key: str) -> Any:
        # Only called when normal lookup fails, i.e. the field is missing.
        if key.startswith("__"):
            raise AttributeError(key)
        fields = sorted(k for k in self.__dict__ if k != "name")
        dataset = self.__dict__.get("name", "N/A")
        raise AttributeError(f"metadata of dataset '{dataset}' has no field '{key}' (it has {fields})")

    def __setattr__(self, key: str, val: Any) -> None:
        if key in self.__dict__:
            old = self.__dict__[key]
            if old != val:
                raise ValueError(
                    f"metadata field '{key}' of dataset '{self.name}' is already {old!r}; "
                    f"refusing to change it to {val!r}"
                )
            return
        object.__setattr__(self, key, val)

    def set(self, **kwargs: Any) -> "Metadata":
        """Set several fields at once; returns ``self``."""
        for key, val in kwargs.items():
            setattr(self, key, val)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        """The field ``key`` if set, else ``default``."""
        return self.__dict__.get(key, default)

    def as_dict(self) -> Dict[str, Any]:
        """A shallow copy of all fields (including ``name``)."""
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"Metadata({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


class _NameTable(UserDict):
    """A dict keyed by dataset name, with Detectron2's catalog method names."""

    _title = "catalog"

    def list(self) -> List[str]:
        """All names, in registration order."""
        return list(self.keys())

    def remove(self, name: str) -> None:
        """Drop ``name`` (``KeyError`` if unknown)."""
        del self[name]

    def __repr__(self) -> str:
        return f"{self._title}({', '.join(self.keys())})"


class _DatasetCatalog(_NameTable):
    """Maps a dataset name to a function returning its ``list[dict]`` (Detectron2 format)."""

    _title = "DatasetCatalog"

    def register(self, name: str, func: Callable[[], List[dict]]) -> None:
        """Register ``func`` under ``name``.

        Raises:
            TypeError: ``func`` is not callable.
            ValueError: ``name`` is already registered.
        """
        if not callable(func):
            raise TypeError(f"DatasetCatalog.register('{name}', ...) needs a callable.")
        if name in self:
            raise ValueError(f"DatasetCatalog: '{name}' is already registered; remove() it first")
        self[name] = func

    def get(self, name: str) -> List[dict]:
        """Call the function registered under ``name`` and return its dataset dicts.

        Raises:
            KeyError: ``name`` is not registered (the message lists the registered names).
        """
        if name not in self:
            raise KeyError(f"DatasetCatalog has no dataset '{name}'; registered: {self.list()}")
        return self[name]()


class _MetadataCatalog(_NameTable):
    """Maps a dataset name to its :class:`Metadata` singleton (created empty on first ``get``)."""

    _title = "MetadataCatalog"

    def get(self, name: str) -> Metadata:
        """The metadata of ``name``; an empty :class:`Metadata` is created if none exists."""
        if not name:
            raise ValueError("MetadataCatalog.get needs a non-empty dataset name.")
        if name not in self:
            self[name] = Metadata(name=name)
        return self[name]


try:
    from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: F811
    from detectron2.data.catalog import Metadata  # noqa: F811
except ImportError:
    DatasetCatalog, MetadataCatalog = _DatasetCatalog(), _MetadataCatalog()
