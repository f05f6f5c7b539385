"""Config of Hugging Face ``Mask2FormerConfig`` (``config.json``) <-> ours, and class-name metadata.

Only what both implementations build identically converts: a Swin backbone (``backbone_config``
of ``model_type`` "swin", no absolute position embedding, patch norm), the multi-scale deformable
attention pixel decoder on res3-res5 with a stride-4 FPN level (encoder FFN 1024, 4 sampling
points, GroupNorm(32)), and the masked-attention Transformer decoder. ``transformers`` has one
head count (``num_attention_heads``) for both the pixel decoder and the decoder. Anything else
(ResNet or timm backbones through ``AutoBackbone``, other head counts, ...) raises ``ValueError``
naming the field.

Class names: ``config.json``'s ``id2label`` (contiguous ids 0..K-1). When they are the classes of
a built-in dataset (COCO, ADE20K, Cityscapes; compared case-insensitively, ours up to the first
comma) the written config names that dataset, so thing/stuff split, colours and evaluation are the
dataset's. Otherwise it names ``hf_metadata_name(names)``, whose metadata
:func:`register_hf_metadata` fills (``Checkpointer`` does so when it loads the weights): every
class is both a thing and a stuff class, as ``transformers`` treats them.
"""

import hashlib
import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "TASKS",
    "check_hf_config",
    "class_names",
    "hf_metadata_name",
    "register_hf_metadata",
    "cfg_dict_from_hf",
    "hf_config_from_cfg",
    "hf_preprocessor_from_cfg",
]

TASKS = ("panoptic", "instance", "semantic")

_STAGES = ["stage1", "stage2", "stage3", "stage4"]
_RES = ["res2", "res3", "res4", "res5"]
_ENCODER_FFN = 1024  # the published pixel decoder's, fixed
_IMAGENET_MEAN = [123.675, 116.28, 103.53]
_IMAGENET_STD = [58.395, 57.12, 57.375]

# task -> (train, test, metadata field) of built-in datasets whose classes a checkpoint may have.
_BUILTIN = {
    "panoptic": [
        ("coco_2017_train_panoptic", "coco_2017_val_panoptic_with_sem_seg", "stuff_classes"),
        ("ade20k_panoptic_train", "ade20k_panoptic_val", "stuff_classes"),
        ("cityscapes_fine_panoptic_train", "cityscapes_fine_panoptic_val", "stuff_classes"),
    ],
    "instance": [
        ("coco_2017_train", "coco_2017_val", "thing_classes"),
        ("ade20k_instance_train", "ade20k_instance_val", "thing_classes"),
        ("cityscapes_fine_instance_seg_train", "cityscapes_fine_instance_seg_val", "thing_classes"),
    ],
    "semantic": [
        ("ade20k_sem_seg_train", "ade20k_sem_seg_val", "stuff_classes"),
        ("cityscapes_fine_sem_seg_train", "cityscapes_fine_sem_seg_val", "stuff_classes"),
        ("coco_2017_train_panoptic", "coco_2017_val_panoptic_with_sem_seg", "stuff_classes"),
    ],
}


def class_names(hf_config: Mapping[str, Any]) -> List[str]:
    """Class names by contiguous id from ``id2label`` (keys may be strings, as in JSON).

    Raises:
        ValueError: ids that are not exactly 0..K-1.
    """
    id2label = {int(k): str(v) for k, v in (hf_config.get("id2label") or {}).items()}
    if sorted(id2label) != list(range(len(id2label))) or not id2label:
        raise ValueError(
            f"config.json: id2label must map the ids 0..K-1 to names; got ids {sorted(id2label)[:5]}..."
        )
    return [id2label[i] for i in range(len(id2label))]


def hf_metadata_name(names: Sequence[str]) -> str:
    """Dataset name under which the metadata of a class list is registered:
    ``hf_<K>classes_<first 8 hex digits of the SHA-1 of the JSON list>``."""
    digest = hashlib.sha1(json.dumps(list(names)).encode("utf-8")).hexdigest()[:8]
    return f"hf_{len(names)}classes_{digest}"


def register_hf_metadata(names: Sequence[str]) -> str:
    """Register ``names`` as the metadata of :func:`hf_metadata_name` (idempotent).

    Sets ``thing_classes`` = ``stuff_classes`` = names and identity ``thing_/
    stuff_dataset_id_to_contiguous_id`` maps (no colours: the visualizer generates them).

    Returns:
        the dataset name.
    """
    from ..data.catalog import MetadataCatalog

    name = hf_metadata_name(names)
    identity = {i: i for i in range(len(names))}
    MetadataCatalog.get(name).set(
        thing_classes=list(names),
        stuff_classes=list(names),
        thing_dataset_id_to_contiguous_id=identity,
        stuff_dataset_id_to_contiguous_id=dict(identity),
    )
    return name


def _normalised(names: Sequence[str]) -> List[str]:
    return [n.split(",")[0].strip().lower() for n in names]


def _datasets_for(names: Sequence[str], task: str) -> Tuple[str, str]:
    """``(train, test)`` dataset names whose metadata has these classes (see module doc)."""
    from ..data import datasets  # noqa: F401  (registers the built-in names)
    from ..data.catalog import MetadataCatalog

    for train, test, field in _BUILTIN[task]:
        builtin = MetadataCatalog.get(test).get(field)
        if builtin is not None and _normalised(builtin) == _normalised(names):
            return train, test
    name = hf_metadata_name(names)
    return name, name


def _require(source: str, field: str, value: Any, expected: Any) -> None:
    if value != expected:
        raise ValueError(
            f"{source}: {field} is {value!r}; only {expected!r} converts to this project's "
            "Mask2Former"
        )


# config.json fields -> (default, the only value that converts); "backbone_config." ones nested.
_HF_FIXED = {
    "model_type": (None, "mask2former"),
    "backbone_config.use_absolute_embeddings": (False, False),
    "backbone_config.out_features": (None, _STAGES),
    "backbone_config.hidden_act": ("gelu", "gelu"),
    "backbone_config.num_channels": (3, 3),
    "backbone_config.layer_norm_eps": (1e-5, 1e-5),
    "encoder_feedforward_dim": (_ENCODER_FFN, _ENCODER_FFN),
    "activation_function": ("relu", "relu"),
    "feature_strides": ([4, 8, 16, 32], [4, 8, 16, 32]),
}


def check_hf_config(hf_config: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    """The ``backbone_config`` of ``hf_config`` after checking that this project builds the model.

    Raises:
        ValueError: naming the first field that does not convert (see module doc).
    """
    backbone = hf_config.get("backbone_config") or {}
    kind = backbone.get("model_type") or hf_config.get("backbone") or "none"
    if hf_config.get("use_timm_backbone") or hf_config.get("backbone") or kind != "swin":
        raise ValueError(
            f"{source}: backbone '{kind}' is not supported; only Swin backbones "
            "(backbone_config.model_type 'swin') convert. ResNet/timm backbones loaded through "
            "AutoBackbone have another layout than this project's ResNet"
        )
    for field, (default, expected) in _HF_FIXED.items():
        section, _, key = field.rpartition(".")
        value = (backbone if section else hf_config).get(key, default)
        _require(source, field, list(value) if isinstance(value, (list, tuple)) else value, expected)
    _require(source, "len(backbone_config.depths)", len(backbone.get("depths", [2, 2, 6, 2])), 4)
    return backbone


def cfg_dict_from_hf(
    hf_config: Mapping[str, Any],
    *,
    task: str,
    weights: str = "",
    preprocessor: Optional[Mapping[str, Any]] = None,
    source: str = "config.json",
) -> Dict[str, Any]:
    """Our config (nested dict, for YAML) of the model that ``hf_config`` describes.

    Args:
        hf_config: the parsed ``config.json`` of a ``Mask2FormerForUniversalSegmentation``.
        task: one of :data:`TASKS`; sets ``MODEL.MASK_FORMER.TEST.{SEMANTIC,INSTANCE,PANOPTIC}_ON``
            as the published configs of that task do, and the built-in datasets looked at.
        weights: written as ``MODEL.WEIGHTS`` (the directory or ``hf://ORG/NAME``).
        preprocessor: the parsed ``preprocessor_config.json``; its ``image_mean``/``image_std``
            (0-1 scale, RGB) give ``MODEL.PIXEL_MEAN``/``PIXEL_STD`` (x255), ImageNet's when absent.
            Its test resize (fixed 384 on the hub) is not taken: ``INPUT.MIN/MAX_SIZE_TEST`` keep
            our defaults (800/1333).
        source: named in errors.

    Raises:
        ValueError: an unknown ``task`` or a model this project does not build (see module doc).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    backbone = check_hf_config(hf_config, source)
    names = class_names(hf_config)
    train, test = _datasets_for(names, task)
    preprocessor = preprocessor or {}
    mean = [round(255.0 * v, 4) for v in preprocessor.get("image_mean", [])] or _IMAGENET_MEAN
    std = [round(255.0 * v, 4) for v in preprocessor.get("image_std", [])] or _IMAGENET_STD
    heads = int(hf_config.get("num_attention_heads", 8))
    return {
        "MODEL": {
            "META_ARCHITECTURE": "MaskFormer",
            "WEIGHTS": weights,
            "PIXEL_MEAN": mean,
            "PIXEL_STD": std,
            "BACKBONE": {"NAME": "D2SwinTransformer", "FREEZE_AT": 0},
            "SWIN": {
                "EMBED_DIM": int(backbone.get("embed_dim", 96)),
                "DEPTHS": [int(d) for d in backbone.get("depths", [2, 2, 6, 2])],
                "NUM_HEADS": [int(h) for h in backbone.get("num_heads", [3, 6, 12, 24])],
                "WINDOW_SIZE": int(backbone.get("window_size", 7)),
                "MLP_RATIO": float(backbone.get("mlp_ratio", 4.0)),
                "QKV_BIAS": bool(backbone.get("qkv_bias", True)),
                "QK_SCALE": None,
                "PATCH_SIZE": int(backbone.get("patch_size", 4)),
                "PRETRAIN_IMG_SIZE": int(backbone.get("image_size", 224)),
                "APE": False,
                "PATCH_NORM": True,
                "DROP_RATE": float(backbone.get("hidden_dropout_prob", 0.0)),
                "ATTN_DROP_RATE": float(backbone.get("attention_probs_dropout_prob", 0.0)),
                "DROP_PATH_RATE": float(backbone.get("drop_path_rate", 0.3)),
                "OUT_FEATURES": list(_RES),
            },
            "SEM_SEG_HEAD": {
                "NAME": "MaskFormerHead",
                "NUM_CLASSES": len(names),
                "IGNORE_VALUE": int(hf_config.get("ignore_value", 255)),
                "LOSS_WEIGHT": 1.0,
                "CONVS_DIM": int(hf_config.get("feature_size", 256)),
                "MASK_DIM": int(hf_config.get("mask_feature_size", 256)),
                "NORM": "GN",
                "PIXEL_DECODER_NAME": "MSDeformAttnPixelDecoder",
                "IN_FEATURES": list(_RES),
                "DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": _RES[1:],
                "DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS": 4,
                "DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS": heads,
                "COMMON_STRIDE": int(hf_config.get("common_stride", 4)),
                "TRANSFORMER_ENC_LAYERS": int(hf_config.get("encoder_layers", 6)),
            },
            "MASK_FORMER": {
                "TRANSFORMER_DECODER_NAME": "MultiScaleMaskedTransformerDecoder",
                "TRANSFORMER_IN_FEATURE": "multi_scale_pixel_decoder",
                "DEEP_SUPERVISION": bool(hf_config.get("use_auxiliary_loss", True)),
                "NO_OBJECT_WEIGHT": float(hf_config.get("no_object_weight", 0.1)),
                "CLASS_WEIGHT": float(hf_config.get("class_weight", 2.0)),
                "MASK_WEIGHT": float(hf_config.get("mask_weight", 5.0)),
                "DICE_WEIGHT": float(hf_config.get("dice_weight", 5.0)),
                "HIDDEN_DIM": int(hf_config.get("hidden_dim", 256)),
                "NUM_OBJECT_QUERIES": int(hf_config.get("num_queries", 100)),
                "NHEADS": heads,
                "DROPOUT": float(hf_config.get("dropout", 0.0)),
                "DIM_FEEDFORWARD": int(hf_config.get("dim_feedforward", 2048)),
                "ENC_LAYERS": 0,
                "PRE_NORM": bool(hf_config.get("pre_norm", False)),
                "ENFORCE_INPUT_PROJ": bool(hf_config.get("enforce_input_projection", False)),
                "SIZE_DIVISIBILITY": 32,
                "DEC_LAYERS": int(hf_config.get("decoder_layers", 10)),
                "TRAIN_NUM_POINTS": int(hf_config.get("train_num_points", 12544)),
                "OVERSAMPLE_RATIO": float(hf_config.get("oversample_ratio", 3.0)),
                "IMPORTANCE_SAMPLE_RATIO": float(hf_config.get("importance_sample_ratio", 0.75)),
                "TEST": {
                    "SEMANTIC_ON": task in ("semantic", "panoptic"),
                    "INSTANCE_ON": task in ("instance", "panoptic"),
                    "PANOPTIC_ON": task == "panoptic",
                    "OVERLAP_THRESHOLD": 0.8,
                    "OBJECT_MASK_THRESHOLD": 0.8,
                },
            },
        },
        "DATASETS": {"TRAIN": [train], "TEST": [test]},
        "INPUT": {"FORMAT": "RGB"},
        "TEST": {"DETECTIONS_PER_IMAGE": 100},
    }


def _check_cfg(cfg, source: str) -> None:
    model = cfg.MODEL
    if model.BACKBONE.NAME != "D2SwinTransformer":
        raise ValueError(
            f"{source}: MODEL.BACKBONE.NAME is {model.BACKBONE.NAME!r}; only Swin models "
            "('D2SwinTransformer') convert to Hugging Face Mask2Former (its ResNet/timm backbones "
            "have another layout)"
        )
    head = model.SEM_SEG_HEAD
    fixed = {
        "MODEL.META_ARCHITECTURE": (model.META_ARCHITECTURE, "MaskFormer"),
        "INPUT.FORMAT": (cfg.INPUT.FORMAT, "RGB"),
        "MODEL.SWIN.APE": (model.SWIN.APE, False),
        "MODEL.SWIN.PATCH_NORM": (model.SWIN.PATCH_NORM, True),
        "MODEL.SWIN.QK_SCALE": (model.SWIN.QK_SCALE, None),
        "MODEL.SWIN.OUT_FEATURES": (list(model.SWIN.OUT_FEATURES), _RES),
        "MODEL.SEM_SEG_HEAD.NAME": (head.NAME, "MaskFormerHead"),
        "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": (head.PIXEL_DECODER_NAME, "MSDeformAttnPixelDecoder"),
        "MODEL.SEM_SEG_HEAD.NORM": (head.NORM, "GN"),
        "MODEL.SEM_SEG_HEAD.IN_FEATURES": (list(head.IN_FEATURES), _RES),
        "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": (
            list(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
            _RES[1:],
        ),
        "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS": (
            head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            4,
        ),
        # transformers has one head count for the pixel decoder and the Transformer decoder
        "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS": (
            head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
            model.MASK_FORMER.NHEADS,
        ),
        "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": (
            model.MASK_FORMER.TRANSFORMER_DECODER_NAME,
            "MultiScaleMaskedTransformerDecoder",
        ),
    }
    for field, (value, expected) in fixed.items():
        _require(source, field, value, expected)


def hf_config_from_cfg(cfg, names: Sequence[str], source: str = "config") -> Dict[str, Any]:
    """The ``config.json`` (as a dict) of a ``Mask2FormerForUniversalSegmentation`` equal to our
    model of ``cfg``.

    Args:
        cfg: our config (``CfgNode``) of a Swin Mask2Former.
        names: the ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` class names (``id2label``).
        source: named in errors.

    Raises:
        ValueError: the model is not convertible (see module doc) or ``names`` has another length.
    """
    _check_cfg(cfg, source)
    model, swin, head, mf = cfg.MODEL, cfg.MODEL.SWIN, cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.MASK_FORMER
    if len(names) != head.NUM_CLASSES:
        raise ValueError(
            f"{source}: {len(names)} class names for MODEL.SEM_SEG_HEAD.NUM_CLASSES = "
            f"{head.NUM_CLASSES}"
        )
    backbone = {
        "model_type": "swin",
        "image_size": int(swin.PRETRAIN_IMG_SIZE),
        "patch_size": int(swin.PATCH_SIZE),
        "num_channels": 3,
        "embed_dim": int(swin.EMBED_DIM),
        "depths": [int(d) for d in swin.DEPTHS],
        "num_heads": [int(h) for h in swin.NUM_HEADS],
        "window_size": int(swin.WINDOW_SIZE),
        "mlp_ratio": float(swin.MLP_RATIO),
        "qkv_bias": bool(swin.QKV_BIAS),
        "hidden_dropout_prob": float(swin.DROP_RATE),
        "attention_probs_dropout_prob": float(swin.ATTN_DROP_RATE),
        "drop_path_rate": float(swin.DROP_PATH_RATE),
        "hidden_act": "gelu",
        "use_absolute_embeddings": False,
        "layer_norm_eps": 1e-5,
        "out_features": list(_STAGES),
        "out_indices": [1, 2, 3, 4],
        "stage_names": ["stem"] + _STAGES,
    }
    return {
        "model_type": "mask2former",
        "architectures": ["Mask2FormerForUniversalSegmentation"],
        "backbone_config": backbone,
        "id2label": {str(i): str(n) for i, n in enumerate(names)},
        "label2id": {str(n): i for i, n in enumerate(names)},
        "feature_size": int(head.CONVS_DIM),
        "mask_feature_size": int(head.MASK_DIM),
        "hidden_dim": int(mf.HIDDEN_DIM),
        "encoder_feedforward_dim": _ENCODER_FFN,
        "activation_function": "relu",
        "encoder_layers": int(head.TRANSFORMER_ENC_LAYERS),
        "decoder_layers": int(mf.DEC_LAYERS),
        "num_attention_heads": int(mf.NHEADS),
        "dropout": float(mf.DROPOUT),
        "dim_feedforward": int(mf.DIM_FEEDFORWARD),
        "pre_norm": bool(mf.PRE_NORM),
        "enforce_input_projection": bool(mf.ENFORCE_INPUT_PROJ),
        "common_stride": int(head.COMMON_STRIDE),
        "ignore_value": int(head.IGNORE_VALUE),
        "num_queries": int(mf.NUM_OBJECT_QUERIES),
        "no_object_weight": float(mf.NO_OBJECT_WEIGHT),
        "class_weight": float(mf.CLASS_WEIGHT),
        "mask_weight": float(mf.MASK_WEIGHT),
        "dice_weight": float(mf.DICE_WEIGHT),
        "train_num_points": int(mf.TRAIN_NUM_POINTS),
        "oversample_ratio": float(mf.OVERSAMPLE_RATIO),
        "importance_sample_ratio": float(mf.IMPORTANCE_SAMPLE_RATIO),
        "use_auxiliary_loss": bool(mf.DEEP_SUPERVISION),
        "feature_strides": [4, 8, 16, 32],
    }


def hf_preprocessor_from_cfg(cfg) -> Dict[str, Any]:
    """``preprocessor_config.json`` of ``Mask2FormerImageProcessor`` with our normalisation
    (``MODEL.PIXEL_MEAN/STD`` / 255), test resize (``INPUT.MIN/MAX_SIZE_TEST``), padding multiple
    (``MODEL.MASK_FORMER.SIZE_DIVISIBILITY``) and ``ignore_index``."""
    return {
        "image_processor_type": "Mask2FormerImageProcessor",
        "do_resize": True,
        "size": {
            "shortest_edge": int(cfg.INPUT.MIN_SIZE_TEST),
            "longest_edge": int(cfg.INPUT.MAX_SIZE_TEST),
        },
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [m / 255 for m in cfg.MODEL.PIXEL_MEAN],
        "image_std": [s / 255 for s in cfg.MODEL.PIXEL_STD],
        "size_divisor": int(cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY),
        "ignore_index": int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE),
        "num_labels": int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES),
    }
