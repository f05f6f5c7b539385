"""File-system checks shared by the dataset loaders: missing data raises ``FileNotFoundError``
naming the path, the expected layout, and where that layout is documented."""
import os

__all__ = ["dataset_root", "require_dir", "require_file"]

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
