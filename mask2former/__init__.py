"""Mask2Former (Cheng et al., "Masked-attention Mask Transformer for Universal Image
Segmentation", CVPR 2022): one architecture for panoptic, instance and semantic segmentation.

Importing the package registers the meta-architecture, heads, pixel decoders, transformer
decoder and backbones (into Detectron2's registries when Detectron2 is installed), the video
model (:mod:`mask2former.video`) and the built-in datasets.
"""
from . import data  # noqa: F401  (registers the built-in datasets)
from . import modeling  # noqa: F401  (registers the model components)
from . import video  # noqa: F401  (registers the video model and the YouTube-VIS datasets)
from .config import add_maskformer2_config, get_cfg
from .engine.predictor import Predictor
from .modeling.build import build_model

__all__ = ["Predictor", "add_maskformer2_config", "build_model", "get_cfg"]
__version__ = "0.1.0"
