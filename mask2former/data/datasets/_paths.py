"""File-system checks shared by the dataset loaders: missing data raises ``FileNotFoundError``
naming the path, the expected layout, and where that layout is documented; an annotation file that
cannot be parsed raises ``ValueError`` naming the file and the position of the error."""
import json
import os
from typing import Sequence

__all__ = ["dataset_root", "read_json", "require_dir", "require_file"]

_README = "datasets/README.md"


def dataset_root() -> str:
    """The dataset root: ``$DETECTRON2_DATASETS`` (``~`` expanded), default ``./datasets``."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def _message(kind: str, path: str, layout: str) -> str:
    return (
        f"{kind} not found: '{path}'. Expected layout under the dataset root "
        f"($DETECTRON2_DATASETS, default ./datasets): {layout}. See {_README}."
    )


def require_dir(path: str, layout: str) -> str:
    """Return ``path`` if it is a directory.

    Raises:
        FileNotFoundError: naming ``path`` and the expected ``layout``.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(_message("Directory", path, layout))
    return path


def require_file(path: str, layout: str) -> str:
    """Return ``path`` if it is a file.

    Raises:
        FileNotFoundError: naming ``path`` and the expected ``layout``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(_message("File", path, layout))
    return path


def read_json(path: str, required_keys: Sequence[str] = ()) -> dict:
    """Parse the JSON annotation file ``path``, which must hold an object with ``required_keys``.

    Raises:
        ValueError: the file is not valid JSON (the message names the file, line and column), not
            UTF-8, or not an object with the required keys.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"Cannot parse annotation file {path}: {e.msg} at line {e.lineno}, column {e.colno}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"Cannot parse annotation file {path}: not UTF-8 text ({e.reason})") from e
    if not isinstance(data, dict):
        raise ValueError(f"Annotation file {path} holds a JSON {type(data).__name__}; expected an object")
    missing = [k for k in required_keys if k not in data]
    if missing:
        raise ValueError(f"Annotation file {path} lacks the keys {missing}; expected {list(required_keys)}")
    return data
