"""Configuration: Detectron2's key schema with the Mask2Former keys.

``get_cfg()`` returns the full default config; ``cfg.merge_from_file(path)`` loads a YAML file
(with ``_BASE_`` inheritance) and ``cfg.merge_from_list([KEY, VALUE, ...])`` applies overrides.
``add_maskformer2_config(cfg)`` adds the Mask2Former keys to another config, e.g. Detectron2's.
"""
from .config import CfgNode
from .configurable import configurable
from .deeplab import add_deeplab_config
from .defaults import get_cfg
from .maskformer2 import add_maskformer2_config
from .video import add_maskformer2_video_config

__all__ = ["CfgNode", "add_deeplab_config", "add_maskformer2_config", "add_maskformer2_video_config", "configurable", "get_cfg"]
