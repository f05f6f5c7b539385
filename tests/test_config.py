"""Config system: defaults, the published configs under configs/, _BASE_ inheritance, errors."""
import re
from pathlib import Path

import pytest
import yaml

from mask2former.config import CfgNode, add_maskformer2_config, get_cfg

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
ALL_CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


def _load(path) -> CfgNode:
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    return cfg


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------- defaults


def test_get_cfg_has_detectron2_and_mask2former_keys():
    cfg = get_cfg()
    assert isinstance(cfg, CfgNode)
    assert cfg.VERSION == 2
    assert cfg.MODEL.DEVICE == "cuda"
    assert cfg.MODEL.PIXEL_MEAN == [103.530, 116.280, 123.675]
    assert cfg.INPUT.MIN_SIZE_TRAIN == (800,)
    assert cfg.SOLVER.AMP.ENABLED is False
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "value"
    assert cfg.TEST.AUG.MIN_SIZES == (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
    assert cfg.GLOBAL.HACK == 1.0
    # DeepLab keys used by the Mask2Former configs and trainer.
    assert cfg.MODEL.RESNETS.STEM_TYPE == "deeplab"
    assert cfg.MODEL.RESNETS.RES5_MULTI_GRID == [1, 2, 4]
    assert cfg.SOLVER.POLY_LR_POWER == 0.9
    assert cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 1.0
    # Mask2Former keys.
    assert cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME == "MultiScaleMaskedTransformerDecoder"
    assert cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS == 112 * 112
    assert cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON is True
    assert cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS == 4
    assert cfg.MODEL.SWIN.DEPTHS == [2, 2, 6, 2]
    assert cfg.MODEL.SWIN.QK_SCALE is None
    assert cfg.INPUT.IMAGE_SIZE == 1024


def test_get_cfg_returns_independent_copies():
    a, b = get_cfg(), get_cfg()
    a.MODEL.SWIN.DEPTHS.append(99)
    a.MODEL.WEIGHTS = "changed.pkl"
    assert b.MODEL.SWIN.DEPTHS == [2, 2, 6, 2]
    assert get_cfg().MODEL.WEIGHTS == ""


def test_dumped_config_loads_back(tmp_path):
    cfg = _load(CONFIG_DIR / "coco" / "panoptic" / "swin_L.yaml")
    dumped = _write(tmp_path / "dump.yaml", cfg.dump())
    assert _load(dumped) == cfg


# ------------------------------------------------------------------------- published configs


def test_config_tree_is_complete():
    names = {str(p.relative_to(CONFIG_DIR)) for p in ALL_CONFIGS}
    full = ["Base", "R50", "R101", "swin_T", "swin_S", "swin_B", "swin_L"]
    expected = {f"coco/{t}/{m}.yaml" for t in ("panoptic", "instance") for m in full}
    expected |= {f"ade20k/semantic/{m}.yaml" for m in full}
    expected |= {f"ade20k/{t}/{m}.yaml" for t in ("panoptic", "instance") for m in ("Base", "R50", "swin_L")}
    expected |= {f"cityscapes/{t}/{m}.yaml" for t in ("semantic", "instance", "panoptic") for m in full}
    assert expected <= names, sorted(expected - names)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_config_loads(path):
    cfg = _load(path)
    assert cfg.INPUT.FORMAT == "RGB"
    assert cfg.MODEL.PIXEL_MEAN == [123.675, 116.280, 103.530]
    if path.stem != "Base":
        video = path.parent.name.startswith("youtubevis")
        assert cfg.MODEL.META_ARCHITECTURE == ("VideoMaskFormer" if video else "MaskFormer")
        assert cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME == "MSDeformAttnPixelDecoder"
        assert cfg.MODEL.MASK_FORMER.DEC_LAYERS == 10


@pytest.mark.parametrize(
    "name, backbone, weights, queries, num_classes",
    [
        ("coco/panoptic/R50", "build_resnet_backbone",
         "detectron2://ImageNetPretrained/torchvision/R-50.pkl", 100, 133),
        ("coco/panoptic/swin_B", "D2SwinTransformer", "swin_base_patch4_window12_384.pkl", 100, 133),
        ("coco/panoptic/swin_L", "D2SwinTransformer", "swin_large_patch4_window12_384_22k.pkl", 200, 133),
        ("coco/instance/swin_L", "D2SwinTransformer", "swin_large_patch4_window12_384_22k.pkl", 200, 80),
        ("ade20k/semantic/swin_L", "D2SwinTransformer", "swin_large_patch4_window12_384_22k.pkl", 100, 150),
        ("ade20k/instance/swin_L", "D2SwinTransformer", "swin_large_patch4_window12_384_22k.pkl", 200, 100),
        ("cityscapes/semantic/swin_B", "D2SwinTransformer", "swin_base_patch4_window12_384_22k.pkl", 100, 19),
        ("cityscapes/instance/R101", "build_resnet_backbone", "R-101.pkl", 100, 8),
    ],
)
def test_published_model_settings(name, backbone, weights, queries, num_classes):
    cfg = _load(CONFIG_DIR / f"{name}.yaml")
    assert cfg.MODEL.BACKBONE.NAME == backbone
    assert cfg.MODEL.WEIGHTS == weights
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == queries
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == num_classes


def test_published_schedules_and_inputs():
    coco_l = _load(CONFIG_DIR / "coco" / "panoptic" / "swin_L.yaml")
    assert (coco_l.SOLVER.MAX_ITER, coco_l.SOLVER.STEPS) == (737500, (655556, 710184))
    assert coco_l.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
    assert coco_l.INPUT.DATASET_MAPPER_NAME == "coco_panoptic_lsj"
    ade_l = _load(CONFIG_DIR / "ade20k" / "semantic" / "swin_L.yaml")
    assert ade_l.INPUT.CROP.SIZE == [640, 640] and ade_l.INPUT.MIN_SIZE_TEST == 640
    assert ade_l.INPUT.MIN_SIZE_TRAIN == tuple(int(x * 0.1 * 640) for x in range(5, 21))
    assert ade_l.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR" and ade_l.SOLVER.MAX_ITER == 160000
    ade_r101 = _load(CONFIG_DIR / "ade20k" / "semantic" / "R101.yaml")
    assert (ade_r101.MODEL.RESNETS.DEPTH, ade_r101.MODEL.RESNETS.NORM) == (101, "SyncBN")
    coco_r101 = _load(CONFIG_DIR / "coco" / "panoptic" / "R101.yaml")
    assert (coco_r101.MODEL.RESNETS.DEPTH, coco_r101.MODEL.RESNETS.NORM) == (101, "FrozenBN")
    cs = _load(CONFIG_DIR / "cityscapes" / "semantic" / "R50.yaml")
    assert cs.MODEL.RESNETS.NORM == "SyncBN" and cs.INPUT.CROP.SIZE == [512, 1024]


# ------------------------------------------------------------------------- _BASE_ inheritance


def test_base_values_are_inherited_and_overridden():
    base = _load(CONFIG_DIR / "coco" / "panoptic" / "Base.yaml")
    r50 = _load(CONFIG_DIR / "coco" / "panoptic" / "R50.yaml")
    swin_t = _load(CONFIG_DIR / "coco" / "panoptic" / "swin_T.yaml")
    # Base.yaml -> R50.yaml -> swin_T.yaml
    assert swin_t.DATASETS.TRAIN == base.DATASETS.TRAIN == ("coco_2017_train_panoptic",)
    assert swin_t.MODEL.SEM_SEG_HEAD.NUM_CLASSES == r50.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 133
    assert base.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"  # set by R50.yaml only
    assert base.MODEL.WEIGHTS == r50.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
    assert swin_t.MODEL.WEIGHTS == "swin_tiny_patch4_window7_224.pkl"
    assert swin_t.MODEL.BACKBONE.NAME == "D2SwinTransformer"
    assert swin_t.MODEL.BACKBONE.FREEZE_AT == 0


def test_relative_base_paths_resolve_against_the_including_file(tmp_path, monkeypatch):
    _write(tmp_path / "cfgs" / "base.yaml", "MODEL:\n  WEIGHTS: base.pkl\nSOLVER:\n  BASE_LR: 0.5\n")
    _write(tmp_path / "cfgs" / "extra.yaml", "SOLVER:\n  MAX_ITER: 7\n")
    _write(tmp_path / "cfgs" / "sub" / "child.yaml",
           "_BASE_: ../base.yaml\nMODEL:\n  WEIGHTS: child.pkl\n")
    _write(tmp_path / "cfgs" / "sub" / "multi.yaml",
           "_BASE_: [../base.yaml, ../extra.yaml]\nSOLVER:\n  MAX_ITER: 9\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    child = _load(tmp_path / "cfgs" / "sub" / "child.yaml")
    assert (child.MODEL.WEIGHTS, child.SOLVER.BASE_LR) == ("child.pkl", 0.5)
    monkeypatch.chdir(tmp_path)
    multi = _load("cfgs/sub/multi.yaml")
    assert (multi.MODEL.WEIGHTS, multi.SOLVER.BASE_LR, multi.SOLVER.MAX_ITER) == ("base.pkl", 0.5, 9)


def test_circular_base_raises(tmp_path):
    _write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    _write(tmp_path / "b.yaml", "_BASE_: a.yaml\n")
    with pytest.raises(ValueError, match="Circular _BASE_"):
        _load(tmp_path / "a.yaml")


# ------------------------------------------------------------------------------------ errors


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = _write(tmp_path / "x.yaml", "MODEL:\n  WEIGHTS: a.pkl\n  FOO: 1\n")
    with pytest.raises(KeyError) as info:
        _load(path)
    assert str(info.value) == f"\"Unknown config key 'MODEL.FOO' in {path}\""


def test_unknown_key_in_base_file_names_the_base_file(tmp_path):
    base = _write(tmp_path / "base.yaml", "SOLVER:\n  NOT_A_KEY: 1\n")
    _write(tmp_path / "child.yaml", "_BASE_: base.yaml\n")
    with pytest.raises(KeyError, match=re.escape(f"'SOLVER.NOT_A_KEY' in {base}")):
        _load(tmp_path / "child.yaml")


def test_type_mismatch_names_key_and_file(tmp_path):
    path = _write(tmp_path / "x.yaml", "SOLVER:\n  MAX_ITER: many\n")
    with pytest.raises(ValueError, match=re.escape(f"'SOLVER.MAX_ITER' in {path}")):
        _load(path)
    path = _write(tmp_path / "y.yaml", "MODEL:\n  SWIN: 3\n")
    with pytest.raises(ValueError, match="'MODEL.SWIN'.*group of keys"):
        _load(path)


def test_missing_file_raises_file_not_found(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        _load(missing)
    child = _write(tmp_path / "child.yaml", "_BASE_: gone.yaml\n")
    with pytest.raises(FileNotFoundError) as info:
        _load(child)
    assert str(tmp_path / "gone.yaml") in str(info.value) and str(child) in str(info.value)


def test_failed_merge_leaves_config_unchanged(tmp_path):
    path = _write(tmp_path / "x.yaml", "MODEL:\n  WEIGHTS: new.pkl\n  FOO: 1\n")
    cfg = get_cfg()
    before = cfg.clone()
    with pytest.raises(KeyError):
        cfg.merge_from_file(str(path))
    with pytest.raises(KeyError):
        cfg.merge_from_list(["MODEL.WEIGHTS", "new.pkl", "MODEL.FOO", "1"])
    assert cfg == before


def test_frozen_config_rejects_merges(tmp_path):
    cfg = get_cfg()
    cfg.freeze()
    with pytest.raises(AttributeError, match="frozen"):
        cfg.merge_from_list(["MODEL.WEIGHTS", "x.pkl"])
    with pytest.raises(AttributeError, match="frozen"):
        cfg.merge_from_file(str(CONFIG_DIR / "coco" / "panoptic" / "R50.yaml"))


def test_python_yaml_tags_need_allow_unsafe(tmp_path):
    # The original project's files compute size lists with !!python/object/apply:eval.
    path = _write(tmp_path / "x.yaml",
                  'INPUT:\n  MIN_SIZE_TRAIN: !!python/object/apply:eval ["[320 * i for i in (1, 2)]"]\n')
    assert _load(path).INPUT.MIN_SIZE_TRAIN == (320, 640)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        get_cfg().merge_from_file(str(path), allow_unsafe=False)


def test_other_version_is_rejected(tmp_path):
    path = _write(tmp_path / "old.yaml", "VERSION: 1\n")
    with pytest.raises(ValueError, match="version-1"):
        _load(path)


# ---------------------------------------------------------------------------- merge_from_list


def test_merge_from_list_applies_trailing_overrides():
    cfg = _load(CONFIG_DIR / "ade20k" / "semantic" / "R50.yaml")
    cfg.merge_from_list([
        "MODEL.WEIGHTS", "model_final.pkl",
        "MODEL.DEVICE", "cpu",
        "SOLVER.BASE_LR", "0.001",
        "INPUT.CROP.SIZE", "(320, 320)",
        "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "True",
        "DATASETS.TEST", '("ade20k_sem_seg_val",)',
        "TEST.AUG.ENABLED", True,
    ])
    assert cfg.MODEL.WEIGHTS == "model_final.pkl"
    assert cfg.MODEL.DEVICE == "cpu"
    assert cfg.SOLVER.BASE_LR == 0.001
    assert cfg.INPUT.CROP.SIZE == [320, 320]  # tuple converted to the default's list type
    assert cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON is True
    assert cfg.DATASETS.TEST == ("ade20k_sem_seg_val",)
    assert cfg.TEST.AUG.ENABLED is True
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 150  # untouched keys keep the file's values


def test_merge_from_list_errors():
    cfg = get_cfg()
    with pytest.raises(KeyError, match="Unknown config key 'MODEL.FOO' in the override list"):
        cfg.merge_from_list(["MODEL.FOO", "1"])
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        cfg.merge_from_list(["MODEL.WEIGHTS"])
    with pytest.raises(ValueError, match="'SOLVER.MAX_ITER' in the override list"):
        cfg.merge_from_list(["SOLVER.MAX_ITER", "0.5"])
    with pytest.raises(ValueError, match="_BASE_"):
        cfg.merge_from_list(["_BASE_", "x.yaml"])


# ---------------------------------------------------------------------- add_maskformer2_config


def test_add_maskformer2_config_is_idempotent_and_keeps_values():
    cfg = get_cfg()
    before = cfg.clone()
    add_maskformer2_config(cfg)
    assert cfg == before
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 7
    cfg.MODEL.RESNETS.STEM_TYPE = "basic"
    cfg.INPUT.DATASET_MAPPER_NAME = "coco_panoptic_lsj"
    add_maskformer2_config(cfg)
    add_maskformer2_config(cfg)
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 7
    assert cfg.MODEL.RESNETS.STEM_TYPE == "basic"
    assert cfg.INPUT.DATASET_MAPPER_NAME == "coco_panoptic_lsj"


def test_add_maskformer2_config_adds_only_missing_keys():
    cfg = CfgNode({"MODEL": {"SEM_SEG_HEAD": {"NUM_CLASSES": 3, "MASK_DIM": 64}, "RESNETS": {}},
                   "INPUT": {"CROP": {"ENABLED": True}}, "SOLVER": {"OPTIMIZER": "SGD"}})
    add_maskformer2_config(cfg)
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 3
    assert cfg.MODEL.SEM_SEG_HEAD.MASK_DIM == 64
    assert cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME == "BasePixelDecoder"
    assert cfg.SOLVER.OPTIMIZER == "SGD"
    assert cfg.SOLVER.BACKBONE_MULTIPLIER == 0.1
    assert cfg.INPUT.CROP.ENABLED is True and cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 1.0
    assert cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD == 0.0
    assert isinstance(cfg.MODEL.SWIN, CfgNode)
    assert cfg.MODEL.RESNETS.RES5_MULTI_GRID == [1, 2, 4]


def test_add_maskformer2_config_on_frozen_incomplete_config_raises():
    cfg = CfgNode({"MODEL": {}, "INPUT": {}, "SOLVER": {}})
    cfg.freeze()
    with pytest.raises(AttributeError):
        add_maskformer2_config(cfg)


def test_add_maskformer2_config_on_detectron2_config():
    d2_config = pytest.importorskip("detectron2.config", reason="Detectron2 is optional")
    cfg = d2_config.get_cfg()
    add_maskformer2_config(cfg)
    add_maskformer2_config(cfg)
    cfg.merge_from_file(str(CONFIG_DIR / "coco" / "panoptic" / "swin_L.yaml"))
    ours = _load(CONFIG_DIR / "coco" / "panoptic" / "swin_L.yaml")
    assert cfg.MODEL.MASK_FORMER == ours.MODEL.MASK_FORMER
    assert cfg.MODEL.SWIN == ours.MODEL.SWIN
    assert cfg.MODEL.SEM_SEG_HEAD == ours.MODEL.SEM_SEG_HEAD


# ------------------------------------------------------------------------ parity fixtures


@pytest.mark.parametrize(
    "fixture", ["thin_r50_coco_panoptic", "thin_swin_coco_instance", "thin_r50_ade20k_semantic"]
)
def test_reference_fixture_configs_load(reference_dir, fixture):
    path = reference_dir / fixture / "config.yaml"
    cfg = _load(path)
    raw = yaml.safe_load(path.read_text())
    assert cfg.MODEL.META_ARCHITECTURE == raw["MODEL"]["META_ARCHITECTURE"] == "MaskFormer"
    assert cfg.MODEL.BACKBONE.NAME == raw["MODEL"]["BACKBONE"]["NAME"]
    assert cfg.MODEL.MASK_FORMER.HIDDEN_DIM == 64
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 20
    assert cfg.DATASETS.TEST == tuple(raw["DATASETS"]["TEST"])
