"""Mask2Former model zoo: the published models, by name (``"coco/panoptic/R50"``).

Example::

    from mask2former import model_zoo
    model_zoo.get_checkpoint_url("coco/panoptic/R50")   # https://dl.fbaipublicfiles.com/...
    cfg = model_zoo.get_config("coco/panoptic/R50", trained=True)   # MODEL.WEIGHTS = that URL
    model = model_zoo.get("coco/panoptic/R50", trained=True, device="cpu").eval()

``MODEL.WEIGHTS zoo://coco/panoptic/R50`` names the same checkpoint wherever a checkpoint path is
accepted. The table with metrics and links is ``MODEL_ZOO.md``, generated from :data:`MODELS`.
"""
from .catalog import MODELS, ZooModel
from .model_zoo import (
    UnknownModelError,
    get,
    get_checkpoint_url,
    get_config,
    get_config_file,
    get_model_info,
    list_models,
)

__all__ = [
    "MODELS",
    "ZooModel",
    "UnknownModelError",
    "get",
    "get_checkpoint_url",
    "get_config",
    "get_config_file",
    "get_model_info",
    "list_models",
]
