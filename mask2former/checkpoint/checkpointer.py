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
  wrongly-shaped key; without it, :class:`IncompatibleCheckpointError` when the checkpoint shares
  fewer than half of the model's tensors (a file for another architecture), unless
  ``allow_partial`` (``MODEL.ALLOW_PARTIAL_WEIGHTS``) asks for a partial load;
* ``.pkl`` files read by a restricted unpickler (:mod:`~mask2former.checkpoint.safe_pickle`) that
  executes nothing;
* crash-safe saving: checkpoints and ``last_checkpoint`` appear complete or not at all, and a
  checkpoint that cannot be read on ``--resume`` names the newest earlier one that can.

Keys are loaded exactly as stored; the ``_metadata`` attribute of a saved ``state_dict()`` is kept,
so modules can migrate old layouts in ``_load_from_state_dict``. Only files that ask for it with
``"matching_heuristics": True`` (converted ImageNet backbones, as in Detectron2) are matched to the
model's names by suffix (:func:`~mask2former.checkpoint.suffix_matching.align_by_suffix`).
"""

import logging
import os
import zipfile
from collections import Counter
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from fvcore.common import checkpoint as fvcore_checkpoint
from fvcore.common.checkpoint import _filter_reused_missing_keys, _IncompatibleKeys

from ..config.config import config_source
from ..utils.atomic_io import atomic_write, remove_stale_temporaries
from .file_io import PathManager, to_url
from .hf_directory import is_hf_weights_file, load_hf_checkpoint, resolve_hf_weights
from .safe_pickle import UnsafePickleError, load_pickle
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

# Below this fraction of the model's tensors (matched by name and shape) a checkpoint is taken for
# the wrong file, unless partial loading is asked for.
MIN_SHARED_FRACTION = 0.5
# The class head, re-initialised when fine-tuning to another number of classes.
_CLASS_HEAD_KEY = "sem_seg_head.predictor.class_embed.weight"


class IncompatibleCheckpointError(ValueError):
    """Raised by ``load(..., strict=True)`` when checkpoint and model keys or shapes differ, and by
    any ``load`` when the checkpoint shares fewer than half of the model's tensors (unless partial
    loading is allowed).

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
        allow_partial: load a checkpoint even when it shares fewer than half of the model's
            tensors (``MODEL.ALLOW_PARTIAL_WEIGHTS``).
        trusted: read ``.pkl`` files with the full pickle protocol (only for files you trust; also
            ``MASK2FORMER_TRUST_PICKLE=1``).
        config_name: the config the model was built from, named in errors.
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
        allow_partial: bool = False,
        trusted: bool = False,
        config_name: str = "",
        **checkpointables: Any,
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.path_manager = PathManager
        self.logger = logging.getLogger(__name__)
        self.allow_partial = allow_partial
        self.trusted = trusted
        self.config_name = config_name
        self._strict_source: Optional[str] = None
        self._source: str = ""

    @classmethod
    def from_config(cls, cfg, model: torch.nn.Module, save_dir: str = "", **kwargs: Any) -> "Checkpointer":
        """A checkpointer for a model built from ``cfg``: partial loading as
        ``MODEL.ALLOW_PARTIAL_WEIGHTS`` says, errors naming the config file."""
        return cls(
            model, save_dir, allow_partial=cfg.MODEL.ALLOW_PARTIAL_WEIGHTS,
            config_name=config_source(cfg), **kwargs,
        )

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
        self._source = path
        try:
            return super().load(local_path, checkpointables)
        finally:
            self._strict_source = None

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``{save_dir}/{name}.pth`` (model, checkpointables and ``kwargs``) and point
        ``last_checkpoint`` at it; each file appears complete under its name or not at all."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        save_file = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info(f"Saving checkpoint to {save_file}")
        remove_stale_temporaries(save_file)
        with atomic_write(save_file, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(os.path.basename(save_file))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Atomically write ``last_filename_basename`` into ``{save_dir}/last_checkpoint``."""
        tag_file = os.path.join(self.save_dir, "last_checkpoint")
        remove_stale_temporaries(tag_file)
        with atomic_write(tag_file) as f:
            f.write(last_filename_basename)

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """With ``resume`` and a ``last_checkpoint`` in ``save_dir``, restore everything from the
        checkpoint it names; otherwise load only the model weights from ``path``.

        Raises:
            ValueError: the checkpoint to resume from cannot be read; the message names the newest
                earlier checkpoint in ``save_dir`` that is intact, if any.
            Otherwise as :meth:`load`.
        """
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        last = self.get_checkpoint_file()
        try:
            return self.load(last)
        except (ValueError, FileNotFoundError) as e:
            candidates = (f for f in _checkpoints_newest_first(self.save_dir) if f != last)
            earlier = next((f for f in candidates if _is_intact(f)), None)
            hint = (
                f"the newest intact earlier checkpoint is {earlier}: to resume from it, write "
                f"{os.path.basename(earlier)!r} into {os.path.join(self.save_dir, 'last_checkpoint')}"
                if earlier else f"no intact earlier checkpoint is in {self.save_dir}"
            )
            raise ValueError(f"Cannot resume from {last}: {e}. {hint}") from e

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
                    data = load_pickle(f, filename, trusted=self.trusted)
            else:
                with torch.serialization.safe_globals(_NUMPY_SAFE_GLOBALS):
                    data = super()._load_file(filename)
        except UnsafePickleError:
            raise
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
        # Converted ImageNet backbones ask for suffix matching; they initialise part of the model
        # by design, so the shared-fraction check does not apply to them.
        backbone_init = checkpoint.pop("matching_heuristics", False)
        if backbone_init:
            checkpoint["model"] = align_by_suffix(
                self.model.state_dict().keys(), checkpoint["model"]
            )
        num_stored = len(checkpoint["model"])
        if self._strict_source is None and not (self.allow_partial or backbone_init):
            self._check_enough_shared(checkpoint["model"])
        incompatible = super()._load_model(checkpoint)
        self._log_class_head_reinit(incompatible.incorrect_shapes)
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


    def _check_enough_shared(self, weights: Mapping) -> None:
        """Raise if fewer than :data:`MIN_SHARED_FRACTION` of the model's state-dict tensors have a
        tensor of the same name and shape in ``weights``. Nothing is loaded when it raises."""
        model_state = self.model.state_dict()
        shapes = {k: tuple(v.shape) for k, v in weights.items()}
        shared = [k for k, v in model_state.items() if shapes.get(k) == tuple(v.shape)]
        if len(shared) >= MIN_SHARED_FRACTION * len(model_state):
            return
        missing = [k for k in model_state if k not in shapes]
        reshaped = [k for k in model_state if k in shapes and k not in set(shared)]
        unexpected = [k for k in shapes if k not in model_state]
        lines = [
            f"Checkpoint {self._source} shares only {len(shared)} of the {len(model_state)} tensors "
            f"of the model built from {self.config_name or 'its config'} (by name and shape): it "
            "is probably for another architecture or config."
        ]
        for label, keys in (("missing in the checkpoint", missing), ("different shape", reshaped),
                            ("unexpected in the checkpoint", unexpected)):
            if keys:
                groups = ", ".join(f"{prefix}.* ({n})" for prefix, n in _largest_groups(keys))
                lines.append(f"  {label}: {len(keys)} keys, largest groups: {groups}")
        lines.append(
            "  To load the matching tensors anyway, set MODEL.ALLOW_PARTIAL_WEIGHTS True "
            "(Checkpointer(..., allow_partial=True))."
        )
        incorrect = [(k, shapes[k], tuple(model_state[k].shape)) for k in reshaped]
        raise IncompatibleCheckpointError("\n".join(lines), _IncompatibleKeys(missing, unexpected, incorrect))

    def _log_class_head_reinit(self, incorrect_shapes: Sequence) -> None:
        """Say so when the class head kept its initialisation because the checkpoint was trained
        for another number of classes (fine-tuning)."""
        for key, ckpt_shape, model_shape in incorrect_shapes:
            if key == _CLASS_HEAD_KEY:
                self.logger.info(
                    f"Class head re-initialised: the checkpoint predicts {ckpt_shape[0] - 1} classes, "
                    f"the model {model_shape[0] - 1}; sem_seg_head.predictor.class_embed (and "
                    "criterion.empty_weight) keep their initial values, everything else that matches "
                    "is loaded"
                )


def _largest_groups(keys: Sequence[str], depth: int = 2, count: int = 3):
    """The ``count`` most common module prefixes (at most ``depth`` components, the parameter name
    left out) of ``keys``, with their sizes."""
    return Counter(".".join((k.split(".")[:-1] or [k])[:depth]) for k in keys).most_common(count)


def _checkpoints_newest_first(save_dir: str) -> List[str]:
    files = [os.path.join(save_dir, f) for f in os.listdir(save_dir) if f.endswith(".pth")]
    return sorted(files, key=os.path.getmtime, reverse=True)


def _is_intact(path: str) -> bool:
    """Whether the ``torch.save`` (zip) file ``path`` is complete: readable with valid CRCs."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile):
        return False


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
