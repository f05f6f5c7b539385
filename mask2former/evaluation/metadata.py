"""Evaluator settings taken from explicit arguments, falling back to a dataset's catalog metadata."""
from typing import Any, Dict, List, Optional

__all__ = ["resolve_metadata", "require_field", "dataset_dicts"]


def resolve_metadata(dataset_name: Optional[str], explicit: Dict[str, Any]) -> Dict[str, Any]:
    """Fill the ``None`` entries of ``explicit`` from ``MetadataCatalog.get(dataset_name)``.

    Args:
        dataset_name: a name registered in :data:`mask2former.data.catalog.MetadataCatalog`,
            or ``None`` to use the explicit values only.
        explicit: metadata field name -> value given by the caller (``None``: not given).

    Returns:
        a new dict with the same keys; fields missing in both places stay ``None``.
    """
    fields = dict(explicit)
    if dataset_name is None:
        return fields
    from mask2former.data.catalog import MetadataCatalog

    metadata = MetadataCatalog.get(dataset_name)
    for key, value in fields.items():
        if value is None:
            fields[key] = metadata.get(key, None)
    return fields


def require_field(fields: Dict[str, Any], key: str, dataset_name: Optional[str], owner: str) -> Any:
    """``fields[key]``, or a ``ValueError`` saying where it was looked for.

    Raises:
        ValueError: the field is ``None``.
    """
    value = fields.get(key)
    if value is None:
        where = (
            f"in the metadata of dataset '{dataset_name}'" if dataset_name else "(no dataset_name)"
        )
        raise ValueError(f"{owner} needs '{key}': pass it explicitly or set it {where}.")
    return value


def dataset_dicts(dataset_name: str) -> List[dict]:
    """The dataset dicts registered as ``dataset_name`` in the DatasetCatalog."""
    from mask2former.data.catalog import DatasetCatalog

    return DatasetCatalog.get(dataset_name)
