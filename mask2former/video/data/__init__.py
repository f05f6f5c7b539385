"""Video data: YouTube-VIS datasets, clip mappers (YouTube-VIS and COCO pseudo-clips)."""
from .clip_mappers import (
    COCOPseudoClipDatasetMapper,
    YTVISDatasetMapper,
    build_clip_augmentations,
    moving_crop_boxes,
    sample_frame_indices,
)
from .ytvis import YTVIS_DATASET_NAMES, load_ytvis_json, register_all_ytvis, register_ytvis_instances
from .ytvis_meta import ytvis_metadata

__all__ = [
    "COCOPseudoClipDatasetMapper",
    "YTVISDatasetMapper",
    "YTVIS_DATASET_NAMES",
    "build_clip_augmentations",
    "load_ytvis_json",
    "moving_crop_boxes",
    "register_all_ytvis",
    "register_ytvis_instances",
    "sample_frame_indices",
    "ytvis_metadata",
]

register_all_ytvis()
