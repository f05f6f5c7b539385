"""Mask2Former for video instance segmentation (Cheng et al., "Mask2Former for Video Instance
Segmentation", 2021): ``VideoMaskFormer`` with the ``VideoMultiScaleMaskedTransformerDecoder``,
YouTube-VIS datasets, clip mappers (including COCO pseudo-clips) and the YouTube-VIS evaluator.

Importing it registers the meta-architecture and decoder (into Detectron2's registries when
Detectron2 is installed) and the YouTube-VIS dataset names.
"""
from . import data  # noqa: F401  (registers ytvis_2019_* / ytvis_2021_*)
from .criterion import VideoSetCriterion
from .inference import video_instance_inference
from .matcher import VideoHungarianMatcher
from .meta_arch import VideoMaskFormer
from .position_encoding import PositionEmbeddingSine3D
from .transformer_decoder import VideoMultiScaleMaskedTransformerDecoder

__all__ = [
    "PositionEmbeddingSine3D",
    "VideoHungarianMatcher",
    "VideoMaskFormer",
    "VideoMultiScaleMaskedTransformerDecoder",
    "VideoSetCriterion",
    "video_instance_inference",
]
