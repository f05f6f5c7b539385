"""The YouTube-VIS configs resolve to the published video models' settings (values read from the
original project's ``configs/youtubevis_20xx`` tree)."""
from pathlib import Path

import pytest

from mask2former.config import get_cfg

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
MODELS = ["R50", "R101", "swin_T", "swin_S", "swin_B", "swin_L"]
# model -> (backbone weights = the COCO instance model, queries, test short side per year)
PUBLISHED = {
    "R50": ("model_final_3c8ec9.pkl", 100, {2019: 360, 2021: 360}),
    "R101": ("model_final_eba159.pkl", 100, {2019: 360, 2021: 360}),
    "swin_T": ("model_final_86143f.pkl", 100, {2019: 480, 2021: 480}),
    "swin_S": ("model_final_1e7f22.pkl", 100, {2019: 480, 2021: 480}),
    "swin_B": ("model_final_83d103.pkl", 100, {2019: 480, 2021: 480}),
    "swin_L": ("model_final_e5f453.pkl", 200, {2019: 480, 2021: 360}),
}


def _load(year, name):
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIG_DIR / f"youtubevis_{year}" / f"{name}.yaml"))
    return cfg


def test_video_config_keys_have_the_original_defaults():
    cfg = get_cfg()
    assert (cfg.INPUT.SAMPLING_FRAME_NUM, cfg.INPUT.SAMPLING_FRAME_RANGE) == (2, 20)
    assert cfg.INPUT.SAMPLING_FRAME_SHUFFLE is False and cfg.INPUT.AUGMENTATIONS == []


@pytest.mark.parametrize("year", [2019, 2021])
@pytest.mark.parametrize("name", MODELS)
def test_published_video_settings(year, name):
    cfg = _load(year, name)
    weights, queries, test_size = PUBLISHED[name]
    assert cfg.MODEL.META_ARCHITECTURE == "VideoMaskFormer"
    assert cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME == "VideoMultiScaleMaskedTransformerDecoder"
    assert cfg.MODEL.WEIGHTS == weights
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == queries
    assert cfg.INPUT.MIN_SIZE_TEST == test_size[year]
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 40 and cfg.MODEL.MASK_FORMER.DEC_LAYERS == 10
    assert (cfg.MODEL.MASK_FORMER.CLASS_WEIGHT, cfg.MODEL.MASK_FORMER.MASK_WEIGHT) == (2.0, 5.0)
    assert tuple(cfg.DATASETS.TRAIN) == (f"ytvis_{year}_train",)
    assert tuple(cfg.DATASETS.TEST) == (f"ytvis_{year}_val",)
    steps, max_iter = {2019: ((4000,), 6000), 2021: ((5500,), 8000)}[year]
    assert (tuple(cfg.SOLVER.STEPS), cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH) == (steps, max_iter, 16)
    assert (cfg.INPUT.SAMPLING_FRAME_NUM, cfg.INPUT.SAMPLING_FRAME_RANGE) == (2, 20)
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (360, 480)
    assert cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice_by_clip" and cfg.INPUT.RANDOM_FLIP == "flip_by_clip"
    assert cfg.INPUT.CROP.ENABLED is False and cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS is False
    assert cfg.INPUT.DATASET_MAPPER_NAME == "ytvis_clip"
    assert cfg.MODEL.RESNETS.DEPTH == (101 if name == "R101" else 50)
    if name.startswith("swin"):
        assert cfg.MODEL.BACKBONE.NAME == "D2SwinTransformer"
        assert cfg.MODEL.SWIN.EMBED_DIM == {"T": 96, "S": 96, "B": 128, "L": 192}[name[-1]]
        assert cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE == (384 if name[-1] in "BL" else 224)
