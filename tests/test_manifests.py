"""The models built from configs/ have exactly the published state-dict layout.

Each manifest in ``../shared/reference/keys`` lists every state-dict key and shape of one published
model (taken from the original implementation) and its parameter count; the official model-zoo
checkpoints use these keys. Models are built on the ``meta`` device: shapes without memory.
"""
import json
from pathlib import Path

import pytest
import torch

from mask2former.config import get_cfg
from mask2former.modeling.build import build_model

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

# Original config (the manifest's "config" field, relative to the original configs/) -> ours.
ORIGINAL_TO_CONFIG = {
    "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml": "coco/panoptic/R50.yaml",
    "coco/panoptic-segmentation/maskformer2_R101_bs16_50ep.yaml": "coco/panoptic/R101.yaml",
    "coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml": "coco/panoptic/swin_T.yaml",
    "coco/panoptic-segmentation/swin/maskformer2_swin_small_bs16_50ep.yaml": "coco/panoptic/swin_S.yaml",
    "coco/panoptic-segmentation/swin/maskformer2_swin_base_384_bs16_50ep.yaml": "coco/panoptic/swin_B.yaml",
    "coco/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml":
        "coco/panoptic/swin_L.yaml",
    "coco/instance-segmentation/maskformer2_R50_bs16_50ep.yaml": "coco/instance/R50.yaml",
    "coco/instance-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml":
        "coco/instance/swin_L.yaml",
    "ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml": "ade20k/semantic/R50.yaml",
    "ade20k/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k_res640.yaml":
        "ade20k/semantic/swin_L.yaml",
    "ade20k/panoptic-segmentation/maskformer2_R50_bs16_160k.yaml": "ade20k/panoptic/R50.yaml",
    "cityscapes/semantic-segmentation/maskformer2_R50_bs16_90k.yaml": "cityscapes/semantic/R50.yaml",
    # Video instance segmentation (mask2former_video)
    "youtubevis_2019/video_maskformer2_R50_bs16_8ep.yaml": "youtubevis_2019/R50.yaml",
    "youtubevis_2019/video_maskformer2_R101_bs16_8ep.yaml": "youtubevis_2019/R101.yaml",
    "youtubevis_2019/swin/video_maskformer2_swin_tiny_bs16_8ep.yaml": "youtubevis_2019/swin_T.yaml",
    "youtubevis_2019/swin/video_maskformer2_swin_small_bs16_8ep.yaml": "youtubevis_2019/swin_S.yaml",
    "youtubevis_2019/swin/video_maskformer2_swin_base_IN21k_384_bs16_8ep.yaml": "youtubevis_2019/swin_B.yaml",
    "youtubevis_2019/swin/video_maskformer2_swin_large_IN21k_384_bs16_8ep.yaml": "youtubevis_2019/swin_L.yaml",
    "youtubevis_2021/video_maskformer2_R50_bs16_8ep.yaml": "youtubevis_2021/R50.yaml",
    "youtubevis_2021/swin/video_maskformer2_swin_large_IN21k_384_bs16_8ep.yaml": "youtubevis_2021/swin_L.yaml",
}

MANIFEST_NAMES = [
    "ade20k_panoptic_R50", "ade20k_semantic_R50", "ade20k_semantic_swin_L", "cityscapes_semantic_R50",
    "coco_instance_R50", "coco_instance_swin_L", "coco_panoptic_R101", "coco_panoptic_R50",
    "coco_panoptic_swin_B", "coco_panoptic_swin_L", "coco_panoptic_swin_S", "coco_panoptic_swin_T",
    "ytvis2019_R50", "ytvis2019_R101", "ytvis2019_swin_T", "ytvis2019_swin_S", "ytvis2019_swin_B",
    "ytvis2019_swin_L", "ytvis2021_R50", "ytvis2021_swin_L",
]


def _build_on_meta(config_path: Path) -> torch.nn.Module:
    cfg = get_cfg()
    cfg.merge_from_file(str(config_path))
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        return build_model(cfg)


def test_every_manifest_is_covered(reference_dir):
    names = sorted(p.stem for p in (reference_dir / "keys").glob("*.json"))
    assert names == sorted(MANIFEST_NAMES)


@pytest.mark.parametrize("name", MANIFEST_NAMES)
def test_state_dict_matches_manifest(reference_dir, name):
    manifest = json.loads((reference_dir / "keys" / f"{name}.json").read_text())
    assert manifest["config"] in ORIGINAL_TO_CONFIG, f"no config of ours for {manifest['config']}"
    model = _build_on_meta(CONFIG_DIR / ORIGINAL_TO_CONFIG[manifest["config"]])

    expected = {key: list(shape) for key, shape in manifest["state_dict"].items()}
    actual = {key: list(t.shape) for key, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    assert not missing and not unexpected, f"missing: {missing[:20]}\nunexpected: {unexpected[:20]}"
    wrong = {k: (actual[k], expected[k]) for k in expected if actual[k] != expected[k]}
    assert not wrong, f"shape (ours, published): {wrong}"
    assert list(actual) == list(expected), "same keys, but not in the published order"
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]
