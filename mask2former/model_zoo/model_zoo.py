"""Look up published models by name, and build them with their official weights.

Names follow the config tree: ``"coco/panoptic/R50"`` is ``configs/coco/panoptic/R50.yaml``,
``"youtubevis_2019/R50"`` the video model ``configs/youtubevis_2019/R50.yaml`` (a ``configs/``
prefix, a ``.yaml`` suffix and the ``zoo://`` scheme are accepted too).
"""
import difflib
from pathlib import Path
from typing import List, Optional

import torch
from torch import nn

from ..checkpoint import Checkpointer
from ..config import get_cfg
from ..modeling.build import build_model
from .catalog import MODELS, ZooModel

__all__ = [
    "UnknownModelError",
    "list_models",
    "get_model_info",
    "get_checkpoint_url",
    "get_config_file",
    "get_config",
    "get",
]

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"

_BY_NAME = {model.name: model for model in MODELS}


class UnknownModelError(KeyError):
    """A name that is not in the model zoo; the message lists the closest names."""

    def __str__(self) -> str:
        return str(self.args[0])


def _normalize(name: str) -> str:
    for prefix in ("zoo://", "configs/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name[: -len(".yaml")] if name.endswith(".yaml") else name


def list_models(dataset: Optional[str] = None, task: Optional[str] = None) -> List[str]:
    """Names of the published models, in ``MODEL_ZOO.md`` order, optionally of one dataset
    (``"coco"``, ``"ade20k"``, ``"cityscapes"``, ``"mapillary_vistas"``, ``"ytvis_2019"``,
    ``"ytvis_2021"``) and/or task (``"panoptic"``, ``"instance"``, ``"semantic"``,
    ``"video instance"``)."""
    return [
        model.name
        for model in MODELS
        if (dataset is None or model.dataset == dataset) and (task is None or model.task == task)
    ]


def get_model_info(name: str) -> ZooModel:
    """The :class:`~mask2former.model_zoo.catalog.ZooModel` row of ``name``.

    Raises:
        UnknownModelError (a KeyError): ``name`` is not a published model; the message lists
            the closest names (``difflib``).
    """
    key = _normalize(name)
    if key in _BY_NAME:
        return _BY_NAME[key]
    close = difflib.get_close_matches(key, list(_BY_NAME), n=5, cutoff=0.5)
    hint = (
        f"close names: {', '.join(close)}"
        if close
        else "the names are listed by mask2former.model_zoo.list_models() and in MODEL_ZOO.md"
    )
    raise UnknownModelError(f"{name!r} is not in the Mask2Former model zoo; {hint}")


def get_checkpoint_url(name: str) -> str:
    """Official checkpoint URL of ``name``, e.g. ``.../model_final_94dc52.pkl`` for
    ``"coco/panoptic/R50"``. Raises :class:`UnknownModelError` for an unknown name."""
    return get_model_info(name).url


def get_config_file(name: str) -> str:
    """Absolute path of the config of ``name`` in the source tree's ``configs/``.

    Raises:
        UnknownModelError: ``name`` is not a published model.
        FileNotFoundError: the config is not there (``configs/`` ships with the source tree,
            not inside the package: install with ``pip install -e .`` from a checkout).
    """
    path = CONFIG_ROOT / f"{get_model_info(name).name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"Config file of model-zoo entry {name!r} not found: {path} (configs/ is part of the "
            "source checkout; install the package from it with pip install -e .)"
        )
    return str(path)


def get_config(name: str, trained: bool = False):
    """The config of ``name`` (``get_cfg()`` merged with its YAML file).

    Args:
        trained: set ``MODEL.WEIGHTS`` to the official checkpoint URL; otherwise it keeps the
            config's value (the ImageNet backbone used to start training).
    """
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(name))
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint_url(name)
    return cfg


def get(name: str, trained: bool = False, device: Optional[str] = None) -> nn.Module:
    """Build the model of ``name``, with its official weights when ``trained``.

    Like Detectron2's ``model_zoo.get``, the model is returned in training mode; call
    ``.eval()`` before inference (or use :class:`mask2former.Predictor` with :func:`get_config`;
    :class:`mask2former.video.predictor.VideoPredictor` for a video model).

    Args:
        trained: download (once, into the iopath cache, see ``MODEL_ZOO.md``) and load the
            official checkpoint, strictly: every key and shape must match. Otherwise the weights
            are randomly initialised and nothing is loaded.
        device: ``MODEL.DEVICE``; default ``"cuda"`` when available, else ``"cpu"``.

    Raises:
        UnknownModelError: ``name`` is not a published model.
        OSError: the checkpoint is not cached and cannot be downloaded; the message names the
            URL and the cache path where a manually downloaded copy is picked up.
        mask2former.checkpoint.IncompatibleCheckpointError: the checkpoint does not match.
    """
    cfg = get_config(name, trained=trained)
    cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg)
    if trained:
        Checkpointer(model).load(cfg.MODEL.WEIGHTS, strict=True)
    return model
