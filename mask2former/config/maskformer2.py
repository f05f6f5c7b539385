"""Config keys of Mask2Former (Cheng et al., "Masked-attention Mask Transformer for Universal Image
Segmentation", CVPR 2022), with the defaults of the original ``mask2former/config.py``.

Loss weights follow the paper's notation: L = CLASS_WEIGHT * L_ce + MASK_WEIGHT * L_bce
+ DICE_WEIGHT * L_dice, with the "no object" class down-weighted by NO_OBJECT_WEIGHT in L_ce and
mask losses computed on TRAIN_NUM_POINTS points sampled PointRend-style (Kirillov et al., 2020).
"""
from yacs.config import CfgNode as _YacsCfgNode

from .config import CfgNode as CN
from .config import add_missing_keys
from .deeplab import add_deeplab_config

__all__ = ["add_maskformer2_config"]


def _maskformer2_defaults() -> CN:
    _C = CN()

    # -------------------------------------------------------------------------------------------
    # INPUT: dataset mappers and augmentation
    # -------------------------------------------------------------------------------------------
    _C.INPUT = CN()
    # Dataset mapper: "mask_former_semantic", "mask_former_panoptic", "mask_former_instance"
    # (multi-scale resize + crop), or "coco_panoptic_lsj", "coco_instance_lsj" (large-scale jitter).
    _C.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    # Photometric distortion of SSD (brightness, contrast, saturation, hue).
    _C.INPUT.COLOR_AUG_SSD = False
    _C.INPUT.CROP = CN()
    # Retry random crops until no category covers more than this fraction (1.0 = no retry).
    _C.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # Pad training images and ground truth to this size in the mapper; -1 = no padding.
    _C.INPUT.SIZE_DIVISIBILITY = -1
    # Large-scale jitter (LSJ) mappers: resize to IMAGE_SIZE * U(MIN_SCALE, MAX_SCALE), then crop or
    # pad to IMAGE_SIZE x IMAGE_SIZE.
    _C.INPUT.IMAGE_SIZE = 1024
    _C.INPUT.MIN_SCALE = 0.1
    _C.INPUT.MAX_SCALE = 2.0

    # -------------------------------------------------------------------------------------------
    # DATASETS: YAML files defining the user's own datasets (name -> {type, paths}), registered at
    # set-up like ``--dataset``; see datasets/README.md, "Use your own dataset".
    # -------------------------------------------------------------------------------------------
    _C.DATASETS = CN()
    _C.DATASETS.DEFINITION_FILES = ()
    # Panoptic Quality of COCO-format panoptic datasets: "mask2former" (this package's) or
    # "panopticapi" (the official code, optional package); Cityscapes uses cityscapesscripts.
    _C.TEST = CN()
    _C.TEST.PQ_IMPLEMENTATION = "mask2former"
    # Inference precision of the network: "float32", "bfloat16" or "float16". The model's parameters
    # are cast (mask2former.modeling.precision.prepare_for_inference) by Predictor, demo.py,
    # train_net.py --eval-only and tools/benchmark.py; input normalisation, batch-norm statistics,
    # deformable-attention sampling locations and post-processing stay float32. Training
    # (SOLVER.AMP) and the periodic evaluation during training run the float32 model.
    _C.TEST.PRECISION = "float32"

    # -------------------------------------------------------------------------------------------
    # SOLVER
    # -------------------------------------------------------------------------------------------
    _C.SOLVER = CN()
    # Weight decay of nn.Embedding parameters (query features and positions, level embeddings).
    _C.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # "ADAMW" or "SGD".
    _C.SOLVER.OPTIMIZER = "ADAMW"
    # Learning-rate multiplier of the backbone's parameters.
    _C.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # Mixed-precision dtype, "float16" or "bfloat16" (also in get_cfg(); added here so that a config
    # dumped by this package loads into Detectron2's config too).
    _C.SOLVER.AMP = CN()
    _C.SOLVER.AMP.PRECISION = "float16"

    # -------------------------------------------------------------------------------------------
    # Robustness (this project's additions)
    # -------------------------------------------------------------------------------------------
    # Skip training samples whose image or annotation cannot be read (warning + running count in
    # the metrics) instead of stopping training with the error.
    _C.DATALOADER = CN()
    _C.DATALOADER.SKIP_CORRUPT_SAMPLES = False

    _C.MODEL = CN()
    # Load MODEL.WEIGHTS even when it shares fewer than half of the model's tensors (names and
    # shapes); by default that is an error, as it usually means the wrong file for the config.
    _C.MODEL.ALLOW_PARTIAL_WEIGHTS = False
    # -------------------------------------------------------------------------------------------
    # MODEL.MASK_FORMER: transformer decoder, losses, inference
    # -------------------------------------------------------------------------------------------
    _C.MODEL.MASK_FORMER = CN()
    # Transformer decoder in TRANSFORMER_DECODER_REGISTRY, and the features it attends to:
    # "multi_scale_pixel_decoder" (the pixel decoder's 3 coarsest maps) for Mask2Former.
    _C.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    _C.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "res5"
    # Loss: deep supervision on every decoder layer; weights of the classification ("no object"
    # class scaled by NO_OBJECT_WEIGHT), dice and sigmoid cross-entropy mask losses.
    _C.MODEL.MASK_FORMER.DEEP_SUPERVISION = True
    _C.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1
    _C.MODEL.MASK_FORMER.CLASS_WEIGHT = 1.0
    _C.MODEL.MASK_FORMER.DICE_WEIGHT = 1.0
    _C.MODEL.MASK_FORMER.MASK_WEIGHT = 20.0
    # Transformer: attention heads, dropout, FFN width, pre-/post-norm, query feature width and
    # number of queries. DEC_LAYERS counts the prediction heads: DEC_LAYERS - 1 masked-attention
    # layers plus the prediction from the learnable queries before the first layer.
    # ENC_LAYERS is MaskFormer's (v1) transformer encoder; unused by Mask2Former.
    _C.MODEL.MASK_FORMER.NHEADS = 8
    _C.MODEL.MASK_FORMER.DROPOUT = 0.1
    _C.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    _C.MODEL.MASK_FORMER.ENC_LAYERS = 0
    _C.MODEL.MASK_FORMER.DEC_LAYERS = 6
    _C.MODEL.MASK_FORMER.PRE_NORM = False
    _C.MODEL.MASK_FORMER.HIDDEN_DIM = 256
    _C.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100
    # Always project decoder inputs with a 1x1 conv, even when channels already equal HIDDEN_DIM.
    _C.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False
    # Pad input images to a multiple of this (the backbone's own divisibility may be 0).
    _C.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32
    # Point-sampled mask loss: K points per mask, oversampling ratio k and importance ratio beta
    # (PointRend's uncertainty-based sampling).
    _C.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 112 * 112
    _C.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0
    _C.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75

    _C.MODEL.MASK_FORMER.TEST = CN()
    # Which outputs inference produces.
    _C.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True
    _C.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False
    _C.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
    # Panoptic inference: keep queries whose class score > OBJECT_MASK_THRESHOLD, and segments that
    # keep at least OVERLAP_THRESHOLD of their mask area after overlaps are resolved.
    _C.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.0
    _C.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.0
    # Resize the mask logits to the output size before inference (True), or resize the semantic
    # result after it (False). Always True in effect when PANOPTIC_ON or INSTANCE_ON.
    _C.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False
    # Compact outputs for large images: "sem_seg" as an int32 [H, W] label map plus "sem_seg_score"
    # float [H, W] (instead of [K, H, W] scores), instance masks as COCO RLE ("pred_masks_rle")
    # instead of [N, H, W] "pred_masks". See README "Large images and compact outputs".
    _C.MODEL.MASK_FORMER.TEST.COMPACT_OUTPUTS = False

    # -------------------------------------------------------------------------------------------
    # MODEL.SEM_SEG_HEAD: pixel decoder
    # -------------------------------------------------------------------------------------------
    _C.MODEL.SEM_SEG_HEAD = CN()
    # Pixel decoder in PIXEL_DECODER_REGISTRY ("MSDeformAttnPixelDecoder" for Mask2Former).
    _C.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "BasePixelDecoder"
    # Channels of the per-pixel mask embeddings.
    _C.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    # Transformer encoder layers in the pixel decoder (multi-scale deformable attention layers for
    # MSDeformAttnPixelDecoder), the backbone features they take, and their points per level
    # and attention heads.
    _C.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 0
    _C.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    _C.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    _C.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8

    # -------------------------------------------------------------------------------------------
    # MODEL.SWIN: Swin Transformer backbone (Liu et al., ICCV 2021), "D2SwinTransformer"
    # -------------------------------------------------------------------------------------------
    _C.MODEL.SWIN = CN()
    # Image size of the ImageNet pre-training (224 or 384); sets the absolute position embedding
    # size when APE is on.
    _C.MODEL.SWIN.PRETRAIN_IMG_SIZE = 224
    _C.MODEL.SWIN.PATCH_SIZE = 4
    # Channels of stage 1 (doubled at each later stage), blocks and heads per stage.
    _C.MODEL.SWIN.EMBED_DIM = 96
    _C.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]
    _C.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]
    _C.MODEL.SWIN.WINDOW_SIZE = 7
    _C.MODEL.SWIN.MLP_RATIO = 4.0
    _C.MODEL.SWIN.QKV_BIAS = True
    # Attention scale; None = head_dim ** -0.5.
    _C.MODEL.SWIN.QK_SCALE = None
    _C.MODEL.SWIN.DROP_RATE = 0.0
    _C.MODEL.SWIN.ATTN_DROP_RATE = 0.0
    # Stochastic depth rate, increased linearly over the blocks up to this value.
    _C.MODEL.SWIN.DROP_PATH_RATE = 0.3
    # Absolute position embedding; layer norm after the patch embedding.
    _C.MODEL.SWIN.APE = False
    _C.MODEL.SWIN.PATCH_NORM = True
    _C.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Activation checkpointing (saves memory in training).
    _C.MODEL.SWIN.USE_CHECKPOINT = False
    return _C


def add_maskformer2_config(cfg: _YacsCfgNode) -> None:
    """Add the Mask2Former keys, and the DeepLab keys its configs use, that ``cfg`` lacks.

    Existing values are never overwritten, so calling it twice, or on a config that already has
    the keys (e.g. from :func:`mask2former.config.get_cfg`), changes nothing. Works on a Detectron2
    ``CfgNode`` (``detectron2.config.get_cfg()``) as well.

    Raises:
        AttributeError: ``cfg`` is frozen and a key is missing.
        ValueError: ``cfg`` holds a plain value where Mask2Former defines a group of keys.
    """
    add_deeplab_config(cfg)
    add_missing_keys(cfg, _maskformer2_defaults())
