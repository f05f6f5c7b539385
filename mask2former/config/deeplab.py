"""Config keys of Detectron2's DeepLab project (``projects/DeepLab``), which the Mask2Former
training setup adds before its own: the poly learning-rate schedule, crop retries and the DeepLab
ResNet options. Mask2Former's configs set ``STEM_TYPE: "basic"`` and ``RES5_MULTI_GRID: [1, 1, 1]``
for its plain ResNets."""
from yacs.config import CfgNode as _YacsCfgNode

from .config import CfgNode as CN
from .config import add_missing_keys

__all__ = ["add_deeplab_config"]


def _deeplab_defaults() -> CN:
    _C = CN()
    _C.INPUT = CN()
    _C.INPUT.CROP = CN()
    # Retry a random crop (up to 10 times) until no single category covers more than this
    # fraction of the crop (semantic segmentation ground truth); 1.0 disables the check.
    _C.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0

    _C.SOLVER = CN()
    # WarmupPolyLR: lr = BASE_LR * (1 - iter / MAX_ITER) ** POLY_LR_POWER; after warm-up it is
    # held at BASE_LR * POLY_LR_CONSTANT_ENDING once it falls below that (0.0 = never).
    _C.SOLVER.POLY_LR_POWER = 0.9
    _C.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0

    _C.MODEL = CN()
    _C.MODEL.SEM_SEG_HEAD = CN()
    # DeepLab head options: loss "cross_entropy" or "hard_pixel_mining", decoder projections and
    # ASPP (atrous spatial pyramid pooling) settings. Not read by Mask2Former.
    _C.MODEL.SEM_SEG_HEAD.LOSS_TYPE = "hard_pixel_mining"
    _C.MODEL.SEM_SEG_HEAD.PROJECT_FEATURES = ["res2"]
    _C.MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS = [48]
    _C.MODEL.SEM_SEG_HEAD.ASPP_CHANNELS = 256
    _C.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS = [6, 12, 18]
    _C.MODEL.SEM_SEG_HEAD.ASPP_DROPOUT = 0.1
    _C.MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV = False

    _C.MODEL.RESNETS = CN()
    # Dilation of res4, and per-block multipliers of RES5_DILATION in res5 (DeepLab ResNet).
    _C.MODEL.RESNETS.RES4_DILATION = 1
    _C.MODEL.RESNETS.RES5_MULTI_GRID = [1, 2, 4]
    # Stem: "basic" (one 7x7 conv) or "deeplab" (three 3x3 convs).
    _C.MODEL.RESNETS.STEM_TYPE = "deeplab"
    return _C


def add_deeplab_config(cfg: _YacsCfgNode) -> None:
    """Add the DeepLab keys that ``cfg`` lacks (existing values are kept). Works on a Detectron2
    ``CfgNode`` too.

    Raises:
        AttributeError: ``cfg`` is frozen and a key is missing.
    """
    add_missing_keys(cfg, _deeplab_defaults())
