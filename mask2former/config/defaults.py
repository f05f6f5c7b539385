"""Default config: Detectron2's key schema (``detectron2/config/defaults.py``, same keys and values),
extended by :func:`add_maskformer2_config` in :func:`get_cfg`.

Only part of Detectron2's schema is read by Mask2Former (model, input, datasets, dataloader, solver,
test, misc). The R-CNN/RetinaNet sections are kept so that any config written for, or dumped by,
Detectron2 (e.g. a training run's ``output/config.yaml``) loads without unknown-key errors.

Conventions: images are normalised as ``(image - PIXEL_MEAN) / PIXEL_STD`` in ``INPUT.FORMAT``
channel order, on the 0-255 scale; sizes are in pixels; ``SOLVER`` periods and schedules in
iterations.
"""
from .config import CfgNode as CN
from .maskformer2 import add_maskformer2_config
from .video import add_maskformer2_video_config

__all__ = ["get_cfg"]

_C = CN()

# Config schema version; a file with another VERSION is rejected (no automatic upgrades).
_C.VERSION = 2

# -----------------------------------------------------------------------------------------------
# MODEL: which network to build and how to normalise its input
# -----------------------------------------------------------------------------------------------
_C.MODEL = CN()
_C.MODEL.LOAD_PROPOSALS = False
_C.MODEL.MASK_ON = False
_C.MODEL.KEYPOINT_ON = False
# torch device the model is built on ("cuda", "cpu", "cuda:1", ...).
_C.MODEL.DEVICE = "cuda"
# Name of the meta-architecture in META_ARCH_REGISTRY ("MaskFormer" for Mask2Former).
_C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
# Checkpoint to initialise from: a path or a URL ("detectron2://...", "https://...").
_C.MODEL.WEIGHTS = ""
# Per-channel mean and std, in INPUT.FORMAT order. Detectron2's defaults are for BGR MSRA weights
# (std folded into conv1); Mask2Former configs use ImageNet RGB statistics.
_C.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]
_C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]

# -----------------------------------------------------------------------------------------------
# INPUT: resizing, cropping, flipping and image format
# -----------------------------------------------------------------------------------------------
_C.INPUT = CN()
# Training resize (ResizeShortestEdge): the short side is drawn from MIN_SIZE_TRAIN, either one of
# the listed sizes ("choice") or uniformly from [min, max] ("range"); the long side is capped.
_C.INPUT.MIN_SIZE_TRAIN = (800,)
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
_C.INPUT.MAX_SIZE_TRAIN = 1333
# Test resize; MIN_SIZE_TEST = 0 disables it.
_C.INPUT.MIN_SIZE_TEST = 800
_C.INPUT.MAX_SIZE_TEST = 1333
# Training flip: "horizontal", "vertical" or "none".
_C.INPUT.RANDOM_FLIP = "horizontal"
# Random crop. TYPE: "relative" / "relative_range" (SIZE as fractions in (0, 1]),
# "absolute" / "absolute_range" (SIZE in pixels, [height, width]).
_C.INPUT.CROP = CN({"ENABLED": False})
_C.INPUT.CROP.TYPE = "relative_range"
_C.INPUT.CROP.SIZE = [0.9, 0.9]
# Channel order the model expects: "BGR", "RGB" or any PIL mode.
_C.INPUT.FORMAT = "BGR"
# Instance-mask ground-truth format: "polygon" or "bitmask".
_C.INPUT.MASK_FORMAT = "polygon"

# -----------------------------------------------------------------------------------------------
# DATASETS: names registered in DatasetCatalog
# -----------------------------------------------------------------------------------------------
_C.DATASETS = CN()
_C.DATASETS.TRAIN = ()
_C.DATASETS.PROPOSAL_FILES_TRAIN = ()
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN = 2000
_C.DATASETS.TEST = ()
_C.DATASETS.PROPOSAL_FILES_TEST = ()
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST = 1000

# -----------------------------------------------------------------------------------------------
# DATALOADER
# -----------------------------------------------------------------------------------------------
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
# Batch portrait and landscape images separately.
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
# "TrainingSampler" or "RepeatFactorTrainingSampler" (with REPEAT_THRESHOLD / REPEAT_SQRT).
_C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
_C.DATALOADER.REPEAT_THRESHOLD = 0.0
_C.DATALOADER.REPEAT_SQRT = True
# Drop training images that have no annotation.
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True

# -----------------------------------------------------------------------------------------------
# MODEL.BACKBONE
# -----------------------------------------------------------------------------------------------
_C.MODEL.BACKBONE = CN()
# Builder in BACKBONE_REGISTRY: "build_resnet_backbone" or "D2SwinTransformer" for Mask2Former.
_C.MODEL.BACKBONE.NAME = "build_resnet_backbone"
# Number of leading stages (stem = 1, res2 = 2, ...) whose weights are frozen; 0 trains all.
_C.MODEL.BACKBONE.FREEZE_AT = 2

# -----------------------------------------------------------------------------------------------
# MODEL.FPN, MODEL.PROPOSAL_GENERATOR, MODEL.ANCHOR_GENERATOR, MODEL.RPN (R-CNN; unused here)
# -----------------------------------------------------------------------------------------------
_C.MODEL.FPN = CN()
_C.MODEL.FPN.IN_FEATURES = []
_C.MODEL.FPN.OUT_CHANNELS = 256
_C.MODEL.FPN.NORM = ""
_C.MODEL.FPN.FUSE_TYPE = "sum"

_C.MODEL.PROPOSAL_GENERATOR = CN()
_C.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"
_C.MODEL.PROPOSAL_GENERATOR.MIN_SIZE = 0

_C.MODEL.ANCHOR_GENERATOR = CN()
_C.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
_C.MODEL.ANCHOR_GENERATOR.ANGLES = [[-90, 0, 90]]
_C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0

_C.MODEL.RPN = CN()
_C.MODEL.RPN.HEAD_NAME = "StandardRPNHead"
_C.MODEL.RPN.IN_FEATURES = ["res4"]
_C.MODEL.RPN.BOUNDARY_THRESH = -1
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]
_C.MODEL.RPN.IOU_LABELS = [0, -1, 1]
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5
_C.MODEL.RPN.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 1.0
_C.MODEL.RPN.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
_C.MODEL.RPN.SMOOTH_L1_BETA = 0.0
_C.MODEL.RPN.LOSS_WEIGHT = 1.0
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 12000
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 6000
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 2000
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.NMS_THRESH = 0.7
_C.MODEL.RPN.CONV_DIMS = [-1]

# -----------------------------------------------------------------------------------------------
# MODEL.ROI_* heads (R-CNN; unused here)
# -----------------------------------------------------------------------------------------------
_C.MODEL.ROI_HEADS = CN()
_C.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
_C.MODEL.ROI_HEADS.NUM_CLASSES = 80
_C.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
_C.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.5]
_C.MODEL.ROI_HEADS.IOU_LABELS = [0, 1]
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
_C.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = True

_C.MODEL.ROI_BOX_HEAD = CN()
_C.MODEL.ROI_BOX_HEAD.NAME = ""
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT = 1.0
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
_C.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 0.0
_C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
_C.MODEL.ROI_BOX_HEAD.NUM_FC = 0
_C.MODEL.ROI_BOX_HEAD.FC_DIM = 1024
_C.MODEL.ROI_BOX_HEAD.NUM_CONV = 0
_C.MODEL.ROI_BOX_HEAD.CONV_DIM = 256
_C.MODEL.ROI_BOX_HEAD.NORM = ""
_C.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
_C.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES = False
_C.MODEL.ROI_BOX_HEAD.USE_FED_LOSS = False
_C.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE = False
_C.MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER = 0.5
_C.MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES = 50

_C.MODEL.ROI_BOX_CASCADE_HEAD = CN()
_C.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = (
    (10.0, 10.0, 5.0, 5.0),
    (20.0, 20.0, 10.0, 10.0),
    (30.0, 30.0, 15.0, 15.0),
)
_C.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = (0.5, 0.6, 0.7)

_C.MODEL.ROI_MASK_HEAD = CN()
_C.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
_C.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_MASK_HEAD.NUM_CONV = 0
_C.MODEL.ROI_MASK_HEAD.CONV_DIM = 256
_C.MODEL.ROI_MASK_HEAD.NORM = ""
_C.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = False
_C.MODEL.ROI_MASK_HEAD.POOLER_TYPE = "ROIAlignV2"

_C.MODEL.ROI_KEYPOINT_HEAD = CN()
_C.MODEL.ROI_KEYPOINT_HEAD.NAME = "KRCNNConvDeconvUpsampleHead"
_C.MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_KEYPOINT_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS = tuple(512 for _ in range(8))
_C.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = 17
_C.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE = 1
_C.MODEL.ROI_KEYPOINT_HEAD.NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS = True
_C.MODEL.ROI_KEYPOINT_HEAD.LOSS_WEIGHT = 1.0
_C.MODEL.ROI_KEYPOINT_HEAD.POOLER_TYPE = "ROIAlignV2"

# -----------------------------------------------------------------------------------------------
# MODEL.SEM_SEG_HEAD: for Mask2Former, the MaskFormerHead (pixel decoder + transformer decoder)
# -----------------------------------------------------------------------------------------------
_C.MODEL.SEM_SEG_HEAD = CN()
# Head in SEM_SEG_HEADS_REGISTRY ("MaskFormerHead").
_C.MODEL.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
# Backbone features the head reads.
_C.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["p2", "p3", "p4", "p5"]
# Ground-truth label that is excluded from the loss.
_C.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255
# Number of classes, without the "no object" class.
_C.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 54
# Channels of the pixel decoder's convolutions.
_C.MODEL.SEM_SEG_HEAD.CONVS_DIM = 128
# Output stride of the per-pixel embeddings (4 = 1/4 of the padded input).
_C.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 4
# Norm of the pixel decoder's convolutions: "" or "GN" (see mask2former.layers.get_norm).
_C.MODEL.SEM_SEG_HEAD.NORM = "GN"
_C.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 1.0

_C.MODEL.PANOPTIC_FPN = CN()
_C.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT = 1.0
_C.MODEL.PANOPTIC_FPN.COMBINE = CN({"ENABLED": True})
_C.MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH = 0.5
_C.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 4096
_C.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = 0.5

# -----------------------------------------------------------------------------------------------
# MODEL.RETINANET (unused here)
# -----------------------------------------------------------------------------------------------
_C.MODEL.RETINANET = CN()
_C.MODEL.RETINANET.NUM_CLASSES = 80
_C.MODEL.RETINANET.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
_C.MODEL.RETINANET.NUM_CONVS = 4
_C.MODEL.RETINANET.IOU_THRESHOLDS = [0.4, 0.5]
_C.MODEL.RETINANET.IOU_LABELS = [0, -1, 1]
_C.MODEL.RETINANET.PRIOR_PROB = 0.01
_C.MODEL.RETINANET.SCORE_THRESH_TEST = 0.05
_C.MODEL.RETINANET.TOPK_CANDIDATES_TEST = 1000
_C.MODEL.RETINANET.NMS_THRESH_TEST = 0.5
_C.MODEL.RETINANET.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
_C.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 2.0
_C.MODEL.RETINANET.FOCAL_LOSS_ALPHA = 0.25
_C.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA = 0.1
_C.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.RETINANET.NORM = ""

# -----------------------------------------------------------------------------------------------
# MODEL.RESNETS: ResNet / ResNeXt backbone
# -----------------------------------------------------------------------------------------------
_C.MODEL.RESNETS = CN()
# 18, 34, 50, 101 or 152.
_C.MODEL.RESNETS.DEPTH = 50
# Stages to return, from "stem", "res2" ... "res5".
_C.MODEL.RESNETS.OUT_FEATURES = ["res4"]
# 1 for ResNet, > 1 for ResNeXt.
_C.MODEL.RESNETS.NUM_GROUPS = 1
# "FrozenBN", "BN", "SyncBN" or "GN".
_C.MODEL.RESNETS.NORM = "FrozenBN"
# Bottleneck width per group in res2 (doubles each stage).
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
# Stride 2 in the first 1x1 conv (MSRA weights) rather than the 3x3 conv (torchvision weights).
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True
# Dilation of res5 (1 or 2; 2 keeps res5 at stride 16).
_C.MODEL.RESNETS.RES5_DILATION = 1
# Output channels of res2 (64 for R18/R34) and of the stem.
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
# Deformable convolutions per stage res2..res5.
_C.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, False]
_C.MODEL.RESNETS.DEFORM_MODULATED = False
_C.MODEL.RESNETS.DEFORM_NUM_GROUPS = 1

# -----------------------------------------------------------------------------------------------
# SOLVER: optimiser, learning-rate schedule, clipping, mixed precision
# -----------------------------------------------------------------------------------------------
_C.SOLVER = CN()
# "WarmupMultiStepLR", "WarmupCosineLR", "WarmupStepWithFixedGammaLR" (Mask2Former adds
# "WarmupPolyLR", see POLY_LR_POWER).
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
_C.SOLVER.MAX_ITER = 40000
_C.SOLVER.BASE_LR = 0.001
# Final learning rate of WarmupCosineLR.
_C.SOLVER.BASE_LR_END = 0.0
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 0.0001
# Weight decay of normalisation layers' affine parameters.
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0
# WarmupMultiStepLR: multiply the learning rate by GAMMA at each iteration in STEPS.
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (30000,)
# WarmupStepWithFixedGammaLR: number of decays.
_C.SOLVER.NUM_DECAYS = 3
# Warm-up: the learning rate ramps from BASE_LR * WARMUP_FACTOR over WARMUP_ITERS iterations
# ("linear" or "constant").
_C.SOLVER.WARMUP_FACTOR = 1.0 / 1000
_C.SOLVER.WARMUP_ITERS = 1000
_C.SOLVER.WARMUP_METHOD = "linear"
# Rescale the schedule after warm-up to the remaining iterations.
_C.SOLVER.RESCALE_INTERVAL = False
_C.SOLVER.CHECKPOINT_PERIOD = 5000
# Images per iteration summed over all workers.
_C.SOLVER.IMS_PER_BATCH = 16
# Number of workers the config was tuned for; non-zero makes the trainer rescale batch size,
# learning rate and schedule to the actual number of workers.
_C.SOLVER.REFERENCE_WORLD_SIZE = 0
# Detectron1 compatibility: learning-rate factor and weight decay for biases (None = WEIGHT_DECAY).
_C.SOLVER.BIAS_LR_FACTOR = 1.0
_C.SOLVER.WEIGHT_DECAY_BIAS = None
# Gradient clipping. CLIP_TYPE: "value" (element-wise |g| <= CLIP_VALUE), "norm" (per-parameter
# NORM_TYPE-norm <= CLIP_VALUE); Mask2Former adds "full_model" (norm over all parameters).
_C.SOLVER.CLIP_GRADIENTS = CN({"ENABLED": False})
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
# Automatic mixed precision in training (inference is unaffected). PRECISION (this project's
# addition): "float16" (with loss scaling, as Detectron2's AMPTrainer) or "bfloat16".
_C.SOLVER.AMP = CN({"ENABLED": False})
_C.SOLVER.AMP.PRECISION = "float16"

# -----------------------------------------------------------------------------------------------
# TEST: evaluation and test-time augmentation
# -----------------------------------------------------------------------------------------------
_C.TEST = CN()
# [[task, metric, value, tolerance], ...] checked after evaluation.
_C.TEST.EXPECTED_RESULTS = []
# Evaluate every EVAL_PERIOD training iterations; 0 disables.
_C.TEST.EVAL_PERIOD = 0
# Keypoint OKS sigmas; empty = COCO's.
_C.TEST.KEYPOINT_OKS_SIGMAS = []
# Maximum instances returned per image (Mask2Former's instance top-k).
_C.TEST.DETECTIONS_PER_IMAGE = 100
# Test-time augmentation: each short side in MIN_SIZES (long side <= MAX_SIZE), plus flips.
_C.TEST.AUG = CN({"ENABLED": False})
_C.TEST.AUG.MIN_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
_C.TEST.AUG.MAX_SIZE = 4000
_C.TEST.AUG.FLIP = True
# Recompute BatchNorm statistics over NUM_ITER training batches before evaluation.
_C.TEST.PRECISE_BN = CN({"ENABLED": False})
_C.TEST.PRECISE_BN.NUM_ITER = 200

# -----------------------------------------------------------------------------------------------
# Misc
# -----------------------------------------------------------------------------------------------
_C.OUTPUT_DIR = "./output"
# Random seed; negative = a different seed every run.
_C.SEED = -1
_C.CUDNN_BENCHMARK = False
# torch float32 matmul precision: "" (unchanged), "highest", "high" or "medium".
_C.FLOAT32_PRECISION = ""
# Visualise training batches every VIS_PERIOD iterations; 0 disables.
_C.VIS_PERIOD = 0
# Free-form values for experiments (read through a global config, never by library code).
_C.GLOBAL = CN()
_C.GLOBAL.HACK = 1.0


def get_cfg() -> CN:
    """Return a fresh copy of the full default config: Detectron2's schema plus the Mask2Former keys
    (:func:`add_maskformer2_config`, which includes the DeepLab keys) and the video keys
    (:func:`add_maskformer2_video_config`).

    Typical use::

        cfg = get_cfg()
        cfg.merge_from_file("configs/coco/panoptic/R50.yaml")
        cfg.merge_from_list(["MODEL.WEIGHTS", "model_final.pkl", "MODEL.DEVICE", "cpu"])
        cfg.freeze()
    """
    cfg = _C.clone()
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    return cfg
