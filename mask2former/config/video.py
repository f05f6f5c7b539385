"""Config keys of Mask2Former for video instance segmentation (Cheng et al., "Mask2Former for Video
Instance Segmentation", 2021), with the defaults of the original ``add_maskformer2_video_config``.

A training clip is ``SAMPLING_FRAME_NUM`` frames drawn from a window of ``SAMPLING_FRAME_RANGE``
frames on either side of a random reference frame; at test time the whole video is one clip.
"""
from yacs.config import CfgNode as _YacsCfgNode

from .config import CfgNode as CN
from .config import add_missing_keys

__all__ = ["add_maskformer2_video_config"]


def _video_defaults() -> CN:
    _C = CN()
    _C.INPUT = CN()
    # Frames per training clip.
    _C.INPUT.SAMPLING_FRAME_NUM = 2
    # Training frames are drawn from [ref - RANGE, ref + RANGE] around a random reference frame.
    _C.INPUT.SAMPLING_FRAME_RANGE = 20
    # Keep the drawn frames in temporal order (False) or shuffle them (True).
    _C.INPUT.SAMPLING_FRAME_SHUFFLE = False
    # Extra clip-level augmentations of the original ("brightness", "contrast", "saturation",
    # "rotation"); the published configs use none. Only [] is supported here.
    _C.INPUT.AUGMENTATIONS = []
    # COCO pseudo-clips (this package): a crop window of PSEUDO_CLIP_CROP_FRACTION of the image
    # side moves by at most PSEUDO_CLIP_MAX_SHIFT of the image side between consecutive frames.
    _C.INPUT.PSEUDO_CLIP_CROP_FRACTION = 0.8
    _C.INPUT.PSEUDO_CLIP_MAX_SHIFT = 0.05

    _C.TEST = CN()
    # Long videos (demo, VideoPredictor): frames per window and overlap between windows.
    _C.TEST.VIDEO_WINDOW_SIZE = 36
    _C.TEST.VIDEO_WINDOW_OVERLAP = 6
    # Instances kept per video (the original keeps a fixed top 10).
    _C.TEST.VIDEO_DETECTIONS = 10
    return _C


def add_maskformer2_video_config(cfg: _YacsCfgNode) -> None:
    """Add the video keys that ``cfg`` lacks (existing values are kept; works on a Detectron2
    ``CfgNode`` too).

    Raises:
        AttributeError: ``cfg`` is frozen and a key is missing.
    """
    add_missing_keys(cfg, _video_defaults())
