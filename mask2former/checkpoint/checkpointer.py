"""Checkpointer reading model-zoo ``.pkl`` files, ``.pth``/``.pt`` files and URLs.

Built on :class:`fvcore.common.checkpoint.Checkpointer` (which matches names, skips tensors whose
shape differs, converts numpy arrays and logs missing/unexpected keys). This subclass adds:

* the model-zoo pickle format, ``{"model": {name: numpy.ndarray}, "__author__": str}``, and bare
  ``{name: array}`` dicts, in ``.pkl`` (pickle) or any other extension (``torch.load``);
* ``detectron2://`` paths and URLs through :data:`mask2former.checkpoint.file_io.PathManager`;
* Hugging Face ``save_pretrained`` directories and ``hf://ORG/NAME`` ids, renamed to our keys
  (:mod:`mask2former.checkpoint.hf_directory`);
* :class:`FileNotFoundError` for a missing file, :class:`OSError` naming the URL when a download
  fails, :class:`ValueError` naming the file and the expected format for an unreadable file;
* ``strict=True``, raising :class:`IncompatibleCheckpointError` on any missing, unexpected or
  wrongly-shaped key.

Keys are loaded exactly as stored; the ``_metadata`` attribute of a saved ``state_dict()`` is kept,
so modules can migrate old layouts in ``_load_from_state_dict``. Only files that ask for it with
``"matching_heuristics": True`` (converted ImageNet backbones, as in Detectron2) are matched to the
model's names by suffix (:func:`~mask2former.checkpoint.suffix_matching.align_by_suffix`).
"""

import logging
import os
import pickle
from collections.abc import Mapping
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from fvcore.common import checkpoint as fvcore_checkpoint
from fvcore.common.checkpoint import _filter_reused_missing_keys, _IncompatibleKeys

from .file_io import PathManager, to_url
from .hf_directory import is_hf_weights_file, load_hf_checkpoint, resolve_hf_weights
from .suffix_matching import align_by_suffix

__all__ = ["Checkpointer", "IncompatibleCheckpointError"]

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray

# numpy arrays, dtypes and scalars inside torch.save files (e.g. RNG states saved with a training
# checkpoint); torch.load keeps refusing any other non-tensor global.
_NUMPY_SAFE_GLOBALS = [
    np.ndarray,
    np.dtype,
    *(getattr(np.dtypes, name) for name in np.dtypes.__all__),
    *(
        (getattr(_multiarray, fn), f"{module}.multiarray.{fn}")
        for fn in ("_reconstruct", "scalar")
        for module in ("numpy.core", "numpy._core")
    ),
]

_EXPECTED_FORMAT = (
    "expected a pickle (.pkl) or torch.save file holding {'model': {name: numpy.ndarray | "
    "torch.Tensor}, ...} or a bare {name: numpy.ndarray | torch.Tensor} dict"
)


class IncompatibleCheckpointError(ValueError):
    """Raised by ``load(..., strict=True)`` when checkpoint and model keys or shapes differ.

    Attributes:
        incompatible: the ``(missing_keys, unexpected_keys, incorrect_shapes)`` named tuple;
            ``incorrect_shapes`` holds ``(key, shape_in_checkpoint, shape_in_model)``.
    """

    def __init__(self, message: str, incompatible: _IncompatibleKeys):
        super().__init__(message)
        self.incompatible = incompatible


class Checkpointer(fvcore_checkpoint.Checkpointer):
    """fvcore's checkpointer for Mask2Former weights (Detectron2 model-zoo compatible).

    Args:
        model: the module to load into / save from (DataParallel wrappers are unwrapped).
        save_dir: directory for :meth:`save` (``.pth`` files); ``""`` disables saving.
        save_to_disk: whether :meth:`save` writes anything.
        checkpointables: other objects with ``state_dict()``/``load_state_dict()`` (optimizer, ...).

    Example::

        Checkpointer(model).load("model_final_94dc52.pkl", strict=True)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: bool = True,
        **checkpointables: Any,
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.path_manager = PathManager
        self.logger = logging.getLogger(__name__)
        self._strict_source: Optional[str] = None

    def load(
        self, path: str, checkpointables: Optional[List[str]] = None, *, strict: bool = False
    ) -> Dict[str, Any]:
        """Load model weights (and the named checkpointables) from ``path``.

        Args:
            path: local file, http(s)/ftp URL or ``detectron2://`` path; ``""`` loads nothing.
            checkpointables: names of the checkpointables to restore; ``None`` means all.
            strict: raise instead of only logging when keys are missing, unexpected or of another
                shape. The matching tensors have been copied into the model when it raises.

        Returns:
            The checkpoint entries not consumed (e.g. ``"iteration"``, ``"__author__"``).

        Raises:
            FileNotFoundError: ``path`` is a local path that does not exist.
            OSError: ``path`` is a URL that could not be downloaded.
            ValueError: the file is not a readable checkpoint.
            IncompatibleCheckpointError: ``strict`` and the checkpoint does not match the model.
        """
        if not path:
            return super().load(path, checkpointables)
        local_path = self._get_local_path(path)
        self._strict_source = path if strict else None
        try:
            return super().load(local_path, checkpointables)
        finally:
            self._strict_source = None

    def _get_local_path(self, path: str) -> str:
        if os.path.isfile(path):
            return path
        hf_weights = resolve_hf_weights(path)  # a save_pretrained directory or hf://ORG/NAME
        if hf_weights is not None:
            return hf_weights
        if "://" in path:
            url = to_url(path)
            try:
                local_path = self.path_manager.get_local_path(path)
            except OSError as e:
                raise OSError(
                    f"Checkpoint {url} could not be downloaded ({e}). Check the network "
                    "connection, or download the file and pass its local path instead."
                ) from e
            if os.path.isfile(local_path):
                return local_path
        raise FileNotFoundError(f"Checkpoint file not found: {path}")

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if is_hf_weights_file(filename):
            return self._as_checkpoint(load_hf_checkpoint(filename), filename)
        try:
            if filename.endswith(".pkl"):
                with self.path_manager.open(filename, "rb") as f:
                    data = pickle.load(f, encoding="latin1")
            else:
                with torch.serialization.safe_globals(_NUMPY_SAFE_GLOBALS):
                    data = super()._load_file(filename)
        except Exception as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ValueError(
                f"Cannot read checkpoint {filename} ({type(e).__name__}: {reason}); "
                + _EXPECTED_FORMAT
            ) from e
        return self._as_checkpoint(data, filename)

    def _as_checkpoint(self, data: Any, filename: str) -> Dict[str, Any]:
        """Wrap a bare state dict as ``{"model": ...}`` and check that the weights are arrays."""
        if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
            checkpoint = dict(data)
        elif isinstance(data, Mapping) and data:
            checkpoint = {"model": data}
        else:
            raise ValueError(
                f"Checkpoint {filename} holds a {type(data).__name__}; {_EXPECTED_FORMAT}"
            )
        not_arrays = [
            k
            for k, v in checkpoint["model"].items()
            if not isinstance(v, (np.ndarray, torch.Tensor))
        ]
        if not_arrays:
            raise ValueError(
                f"Checkpoint {filename}: entries {not_arrays[:5]} are not arrays; "
                + _EXPECTED_FORMAT
            )
        if "__author__" in checkpoint:
            self.logger.info(f"Reading a checkpoint from '{checkpoint['__author__']}'")
        return checkpoint

    def _load_model(self, checkpoint: Dict[str, Any]) -> _IncompatibleKeys:
        if checkpoint.pop("matching_heuristics", False):
            checkpoint["model"] = align_by_suffix(
                self.model.state_dict().keys(), checkpoint["model"]
            )
        num_stored = len(checkpoint["model"])
        incompatible = super()._load_model(checkpoint)
        reshaped = {k for k, _, _ in incompatible.incorrect_shapes}
        missing = [
            k
            for k in _filter_reused_missing_keys(self.model, incompatible.missing_keys)
            if k not in reshaped
        ]
        incompatible = _IncompatibleKeys(
            missing, incompatible.unexpected_keys, incompatible.incorrect_shapes
        )
        num_loaded = (
            num_stored - len(incompatible.unexpected_keys) - len(incompatible.incorrect_shapes)
        )
        self.logger.info(
            f"Loaded {num_loaded} of {num_stored} checkpoint tensors: {len(missing)} missing, "
            f"{len(incompatible.unexpected_keys)} unexpected, "
            f"{len(incompatible.incorrect_shapes)} with a different shape"
        )
        if self._strict_source is not None and (
            missing or incompatible.unexpected_keys or incompatible.incorrect_shapes
        ):
            message = _mismatch_message(self._strict_source, incompatible)
            raise IncompatibleCheckpointError(message, incompatible)
        return incompatible


def _mismatch_message(path: str, incompatible: _IncompatibleKeys) -> str:
    lines = [f"Checkpoint {path} does not match the model (strict=True):"]
    if incompatible.missing_keys:
        lines.append(f"  missing in the checkpoint ({len(incompatible.missing_keys)}):")
        lines += [f"    {k}" for k in incompatible.missing_keys]
    if incompatible.unexpected_keys:
        lines.append(f"  unexpected in the checkpoint ({len(incompatible.unexpected_keys)}):")
        lines += [f"    {k}" for k in incompatible.unexpected_keys]
    if incompatible.incorrect_shapes:
        lines.append(f"  different shape ({len(incompatible.incorrect_shapes)}):")
        lines += [
            f"    {k}: checkpoint {tuple(ckpt)} vs model {tuple(model)}"
            for k, ckpt, model in incompatible.incorrect_shapes
        ]
    return "\n".join(lines)
