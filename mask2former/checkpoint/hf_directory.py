"""Hugging Face checkpoint directories (``save_pretrained`` layout) and ``hf://ORG/NAME`` ids.

A directory holds ``config.json`` and the weights: ``model.safetensors`` (preferred), or
``pytorch_model.bin``, or a sharded ``*.index.json`` of either; ``preprocessor_config.json`` is
optional. ``hf://ORG/NAME`` (optionally ``hf://ORG/NAME@REVISION``) is fetched with
``huggingface_hub.snapshot_download`` into its cache (``$HF_HOME``, default
``~/.cache/huggingface``); offline, or with ``HF_HUB_OFFLINE=1``, the cached snapshot is used.

Needs ``safetensors`` and ``huggingface_hub`` (``pip install "mask2former[hf]"``), not
``transformers``.
"""

import json
import os
import shutil
import tempfile
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from .hf_config import check_hf_config, class_names, register_hf_metadata
from .hf_format import hf_to_original, original_to_hf

__all__ = [
    "HF_PREFIX",
    "resolve_hf_weights",
    "is_hf_weights_file",
    "read_hf_directory",
    "load_hf_checkpoint",
    "write_hf_directory",
]

HF_PREFIX = "hf://"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_INSTALL = 'pip install "mask2former[hf]"'


def _download(uri: str) -> str:
    """Local snapshot directory of ``hf://ORG/NAME[@REVISION]``.

    Raises:
        ImportError: ``huggingface_hub`` is not installed.
        OSError: the repository is neither downloadable nor in the cache (the message names it).
    """
    repo_id, _, revision = uri[len(HF_PREFIX):].partition("@")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ImportError(f"Loading {uri} needs huggingface_hub: {_INSTALL}") from e
    patterns = ["*.json", "model.safetensors*", "pytorch_model.bin*"]
    kwargs = dict(repo_id=repo_id, revision=revision or None, allow_patterns=patterns)
    try:
        return snapshot_download(**kwargs)
    except Exception as online_error:  # network, authentication or unknown repository
        try:
            return snapshot_download(**kwargs, local_files_only=True)
        except Exception:
            reason = str(online_error).strip().splitlines()[0] if str(online_error).strip() else ""
            raise OSError(
                f"Hugging Face repository '{repo_id}' could not be downloaded and is not in the "
                f"local cache ({type(online_error).__name__}: {reason}). Connect to the internet "
                "(log in with `hf auth login` for a private or gated repository), or download it "
                f"elsewhere with `hf download {repo_id}` and pass the directory instead."
            ) from online_error


def resolve_hf_weights(path: str) -> Optional[str]:
    """The weights file of a Hugging Face checkpoint, or ``None`` when ``path`` is not one.

    Args:
        path: ``hf://ORG/NAME[@REVISION]`` or a local directory; anything else gives ``None``.

    Raises:
        FileNotFoundError: a directory without ``config.json`` or without weights.
        OSError / ImportError: see :func:`_download`.
    """
    if path.startswith(HF_PREFIX):
        directory = _download(path)
    elif os.path.isdir(path):
        directory = path
    else:
        return None
    if not os.path.isfile(os.path.join(directory, "config.json")):
        raise FileNotFoundError(
            f"{path}: no config.json; expected a Hugging Face save_pretrained directory"
        )
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    raise FileNotFoundError(f"{path}: none of the weight files {list(WEIGHT_FILES)} is there")


def is_hf_weights_file(path: str) -> bool:
    """Whether ``path`` is one of :data:`WEIGHT_FILES` with a ``config.json`` beside it."""
    return os.path.basename(path) in WEIGHT_FILES and os.path.isfile(
        os.path.join(os.path.dirname(path), "config.json")
    )


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"Cannot read {path} ({type(e).__name__}: {e}); expected a JSON object"
        ) from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}; expected a JSON object")
    return data


def _read_weights(path: str) -> Dict[str, torch.Tensor]:
    if path.endswith(".index.json"):
        shards = sorted(set(_read_json(path).get("weight_map", {}).values()))
        if not shards:
            raise ValueError(f"{path}: no weight_map; expected a sharded checkpoint index")
        weights: Dict[str, torch.Tensor] = {}
        for shard in shards:
            weights.update(_read_weights(os.path.join(os.path.dirname(path), shard)))
        return weights
    try:
        if path.endswith(".safetensors"):
            try:
                from safetensors.torch import load_file
            except ImportError as e:
                raise ImportError(f"Reading {path} needs safetensors: {_INSTALL}") from e
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise
    except Exception as e:
        raise ValueError(
            f"Cannot read {path} ({type(e).__name__}: {str(e).strip()[:200]}); expected a "
            "safetensors or torch.save file of {name: tensor}"
        ) from e


def read_hf_directory(
    path: str,
) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]], Dict[str, torch.Tensor]]:
    """``(config.json, preprocessor_config.json or None, state dict)`` of a checkpoint.

    Args:
        path: ``hf://ORG/NAME[@REVISION]``, a directory or its weights file.

    Raises:
        FileNotFoundError, OSError, ImportError: see :func:`resolve_hf_weights`.
        ValueError: an unreadable JSON or weights file.
    """
    weights = path if is_hf_weights_file(path) else resolve_hf_weights(path)
    if weights is None:
        raise FileNotFoundError(f"{path}: not a Hugging Face checkpoint directory or hf:// id")
    directory = os.path.dirname(weights)
    preprocessor = os.path.join(directory, "preprocessor_config.json")
    return (
        _read_json(os.path.join(directory, "config.json")),
        _read_json(preprocessor) if os.path.isfile(preprocessor) else None,
        _read_weights(weights),
    )


def load_hf_checkpoint(weights_file: str) -> Dict[str, Any]:
    """A Hugging Face checkpoint as our checkpoint dict ``{"model": {our name: tensor}, ...}``.

    Also registers the class names of ``config.json`` as dataset metadata
    (:func:`~mask2former.checkpoint.hf_config.register_hf_metadata`), for configs written by
    ``tools/convert_hf_checkpoint.py``.

    Raises:
        ValueError: the files are unreadable or not a Swin Mask2Former (see
            :func:`~mask2former.checkpoint.hf_format.hf_to_original`).
    """
    hf_config, _, weights = read_hf_directory(weights_file)
    check_hf_config(hf_config, os.path.join(os.path.dirname(weights_file), "config.json"))
    register_hf_metadata(class_names(hf_config))
    return {
        "model": hf_to_original(weights, source=weights_file),
        "__author__": "Hugging Face transformers Mask2FormerForUniversalSegmentation",
    }


def write_hf_directory(
    directory: str,
    state_dict: Mapping[str, Any],
    hf_config: Mapping[str, Any],
    preprocessor: Optional[Mapping[str, Any]] = None,
) -> None:
    """Write ``config.json``, ``model.safetensors`` (and ``preprocessor_config.json``) loadable by
    ``Mask2FormerForUniversalSegmentation.from_pretrained(directory)``.

    Written to a temporary directory beside ``directory`` and renamed at the end.

    Args:
        directory: must not exist or be empty.
        state_dict: our names -> tensors or numpy arrays (float32 stays float32).
        hf_config: e.g. :func:`~mask2former.checkpoint.hf_config.hf_config_from_cfg`.
        preprocessor: e.g. :func:`~mask2former.checkpoint.hf_config.hf_preprocessor_from_cfg`.

    Raises:
        FileExistsError: ``directory`` is a non-empty directory or a file.
        ValueError: the weights do not convert (see ``original_to_hf``).
    """
    try:
        from safetensors.torch import save_file
    except ImportError as e:
        raise ImportError(f"Writing {directory} needs safetensors: {_INSTALL}") from e
    if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
        raise FileExistsError(f"{directory} exists and is not an empty directory")
    tensors = original_to_hf(state_dict, source=directory)
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-hf-", dir=parent)
    try:
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        files = {"config.json": hf_config, "preprocessor_config.json": preprocessor}
        for name, content in files.items():
            if content is not None:
                with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                    json.dump(content, f, indent=2)
                    f.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
        if os.path.isdir(directory):
            os.rmdir(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
