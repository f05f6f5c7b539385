"""Loading and saving weights: model-zoo ``.pkl``, ``.pth``/``.pt`` and URLs."""

from .checkpointer import Checkpointer, IncompatibleCheckpointError
from .file_io import PathManager

__all__ = ["Checkpointer", "IncompatibleCheckpointError", "PathManager"]
