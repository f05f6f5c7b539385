"""Hugging Face checkpoints both ways: ``transformers``' Mask2Former and ours give the same raw
outputs with the same weights.

Networks are compared, not post-processing (``transformers`` post-processes differently on
purpose): both get the same normalised, zero-padded image tensor; class logits and mask logits of
every decoder layer must agree within 1e-4 absolute (1e-3 relative above 1). ``transformers`` is a
test-only dependency; the conversions themselves need only ``safetensors``.
"""
import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from mask2former.checkpoint import Checkpointer
from mask2former.checkpoint.hf_config import (
    cfg_dict_from_hf,
    hf_config_from_cfg,
    hf_metadata_name,
)
from mask2former.checkpoint.hf_directory import read_hf_directory, resolve_hf_weights
from mask2former.checkpoint.hf_format import hf_to_original
from mask2former.config import get_cfg
from mask2former.data.catalog import MetadataCatalog
from mask2former.modeling.build import build_model

pytest.importorskip("safetensors", reason="safetensors is needed for Hugging Face checkpoints")

REPO = Path(__file__).resolve().parents[1]
FIXTURE = "thin_swin_coco_instance"
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
STAGES = ["stage1", "stage2", "stage3", "stage4"]
THIN_NAMES = ["cat", "dog", "tree", "sky", "road"]


def _tool():
    path = REPO / "tools" / "convert_hf_checkpoint.py"
    spec = importlib.util.spec_from_file_location("convert_hf_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fixture_to_hf_argv(root: Path):
    """``convert_hf_checkpoint.py`` arguments converting the fixture in ``root`` (add ``-o``)."""
    return ["to-hf", "--config-file", str(root / "config.yaml"), "--weights", str(root / "model.pkl")]


def _transformers():
    return pytest.importorskip("transformers", reason="transformers is a test-only dependency")


def _padded_input(image: np.ndarray) -> torch.Tensor:
    """[1, 3, H', W']: (image - mean) / std, zero-padded to multiples of 32 (what MaskFormer feeds
    its backbone)."""
    x = (torch.from_numpy(image).float() - MEAN) / STD
    height, width = x.shape[-2:]
    return F.pad(x, (0, (-width) % 32, 0, (-height) % 32))[None]


@pytest.fixture(scope="module")
def crop(reference_dir) -> torch.Tensor:
    """A real COCO image (the fixture's model input), cropped to 120x150, padded to 128x160."""
    image = np.load(reference_dir / FIXTURE / "000000039769.npz")["image"]
    return _padded_input(np.ascontiguousarray(image[:, :120, :150]))


def _assert_close(name, actual, expected):
    diff = (actual - expected).abs()
    bound = torch.maximum(torch.full_like(expected, 1e-4), 1e-3 * expected.abs())
    assert bool((diff <= bound).all()), f"{name}: max abs diff {diff.max().item():.3g}"


def _compare(ours_model, hf_model, x, where):
    ours_model.sem_seg_head.predictor.return_aux_outputs = True
    with torch.no_grad():
        ours = ours_model.sem_seg_head(ours_model.backbone(x))
        theirs = hf_model(pixel_values=x, output_auxiliary_logits=True)
    _assert_close(f"{where} class logits", ours["pred_logits"], theirs.class_queries_logits)
    _assert_close(f"{where} mask logits", ours["pred_masks"], theirs.masks_queries_logits)
    assert len(ours["aux_outputs"]) == len(theirs.auxiliary_logits)
    for i, (a, b) in enumerate(zip(ours["aux_outputs"], theirs.auxiliary_logits)):
        _assert_close(f"{where} aux{i} class logits", a["pred_logits"], b["class_queries_logits"])
        _assert_close(f"{where} aux{i} mask logits", a["pred_masks"], b["masks_queries_logits"])
    return ours


def _perturb_(model: torch.nn.Module, seed: int) -> None:
    """Add noise to every float tensor, so that zero-initialised biases and unit LayerNorm
    weights are distinct too (a swapped or misplaced tensor then changes the outputs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.02 * torch.randn(tensor.shape, generator=generator))


def _hf_model(kind: str):
    transformers = _transformers()
    torch.manual_seed(0)
    if kind == "swin_T_coco_panoptic":  # configs/coco/panoptic/swin_T.yaml
        names = list(MetadataCatalog.get("coco_2017_val_panoptic_with_sem_seg").stuff_classes)
        backbone = transformers.SwinConfig(
            embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
            image_size=224, drop_path_rate=0.3, out_features=STAGES,
        )
        head = {}
    else:  # thin, with settings that differ from the defaults wherever both have a field
        names = THIN_NAMES
        backbone = transformers.SwinConfig(
            embed_dim=32, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4], window_size=5,
            image_size=160, out_features=STAGES,
        )
        head = dict(
            feature_size=64, mask_feature_size=32, hidden_dim=96, dim_feedforward=96,
            num_queries=12, decoder_layers=4, encoder_layers=1, num_attention_heads=4,
            pre_norm=True,
        )
    config = transformers.Mask2FormerConfig(
        backbone_config=backbone,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        **head,
    )
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    _perturb_(model, seed=1)
    return model, names


def _load_ours(yaml_path: Path) -> torch.nn.Module:
    cfg = get_cfg()
    cfg.merge_from_file(str(yaml_path))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    Checkpointer(model).load(cfg.MODEL.WEIGHTS, strict=True)
    return model, cfg


@pytest.mark.parametrize("kind", ["swin_T_coco_panoptic", "thin"])
def test_hf_checkpoint_loads_here_with_the_same_outputs(tmp_path, reference_dir, crop, kind):
    hf_model, names = _hf_model(kind)
    hf_dir = tmp_path / f"mask2former-{kind}"
    hf_model.save_pretrained(hf_dir)
    yaml_path = tmp_path / "model.yaml"
    assert _tool().main(["to-yaml", str(hf_dir), "-o", str(yaml_path), "--task", "panoptic"]) == 0

    model, cfg = _load_ours(yaml_path)
    assert cfg.MODEL.WEIGHTS == str(hf_dir)
    _compare(model, hf_model, crop, kind)

    if kind == "swin_T_coco_panoptic":
        # The architecture of configs/coco/panoptic/swin_T.yaml: the published key/shape manifest.
        manifest = json.loads((reference_dir / "keys" / "coco_panoptic_swin_T.json").read_text())
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert shapes == manifest["state_dict"]
        assert list(cfg.DATASETS.TEST) == ["coco_2017_val_panoptic_with_sem_seg"]
    else:
        # Unknown class names: registered as metadata when the weights loaded; panoptic inference
        # (which needs the thing ids) runs through the whole model.
        assert list(cfg.DATASETS.TEST) == [hf_metadata_name(names)]
        meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        assert meta.thing_classes == names and meta.stuff_classes == names
        image = np.load(reference_dir / FIXTURE / "000000039769.npz")["image"][:, :120, :150]
        with torch.no_grad():
            result = model([{"image": torch.from_numpy(np.ascontiguousarray(image))}])[0]
        assert result["sem_seg"].shape == (len(names), 120, 150)
        assert result["panoptic_seg"][0].shape == (120, 150)


SWIN_MANIFESTS = {  # manifest -> our config of the published model
    "coco_panoptic_swin_T": "coco/panoptic/swin_T.yaml",
    "coco_panoptic_swin_S": "coco/panoptic/swin_S.yaml",
    "coco_panoptic_swin_B": "coco/panoptic/swin_B.yaml",
    "coco_panoptic_swin_L": "coco/panoptic/swin_L.yaml",
    "coco_instance_swin_L": "coco/instance/swin_L.yaml",
    "ade20k_semantic_swin_L": "ade20k/semantic/swin_L.yaml",
}


@pytest.mark.parametrize("manifest", sorted(SWIN_MANIFESTS))
def test_published_swin_models_map_one_to_one(tmp_path, reference_dir, manifest):
    """Every published Swin model: our config -> config.json -> transformers' model (on the meta
    device) has, renamed, exactly the published keys and shapes; and config.json -> our config
    builds the same model again."""
    transformers = _transformers()
    expected = json.loads((reference_dir / "keys" / f"{manifest}.json").read_text())["state_dict"]
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs" / SWIN_MANIFESTS[manifest]))
    names = [f"class {i}" for i in range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)]
    hf_config = hf_config_from_cfg(cfg, names)
    with torch.device("meta"):
        hf_model = transformers.Mask2FormerForUniversalSegmentation(
            transformers.Mask2FormerConfig.from_dict(hf_config)
        )
    renamed = hf_to_original(hf_model.state_dict())
    assert {k: list(v.shape) for k, v in renamed.items()} == expected

    task = "semantic" if "semantic" in manifest else "instance"
    (tmp_path / "back.yaml").write_text(yaml.safe_dump(cfg_dict_from_hf(hf_config, task=task)))
    back = get_cfg()
    back.merge_from_file(str(tmp_path / "back.yaml"))
    back.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(back)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected


def test_weight_file_variants_give_the_same_weights(tmp_path):
    """model.safetensors, a sharded index, pytorch_model.bin, and transformers' in-memory module
    names (q_proj, mlp.fc1, swin.*: not the hub's file layout) all give the same weights."""
    hf_model, _ = _hf_model("thin")
    hf_model.save_pretrained(tmp_path / "single")
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="1MB")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "single" / "config.json").read_text())
    torch.save(hf_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")

    expected = hf_to_original(read_hf_directory(str(tmp_path / "single"))[2])
    assert resolve_hf_weights(str(tmp_path / "sharded")).endswith("model.safetensors.index.json")
    for variant in ("sharded", "bin"):
        weights = hf_to_original(read_hf_directory(str(tmp_path / variant))[2])
        assert weights.keys() == expected.keys(), variant
        assert all(torch.equal(weights[k], expected[k]) for k in expected), variant
    assert any(".attention.q_proj." in k for k in hf_model.state_dict())
    in_memory = hf_to_original(hf_model.state_dict())
    assert in_memory.keys() == expected.keys()
    assert all(torch.equal(in_memory[k], expected[k]) for k in expected)


def test_our_swin_T_converts_to_transformers(tmp_path, crop):
    transformers = _transformers()
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs" / "coco" / "panoptic" / "swin_T.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    _perturb_(model, seed=2)
    pkl = tmp_path / "model.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in model.state_dict().items()}}, f)

    hf_dir = tmp_path / "hf"
    config = str(REPO / "configs" / "coco" / "panoptic" / "swin_T.yaml")
    argv = ["to-hf", "--config-file", config, "--weights", str(pkl), "-o", str(hf_dir)]
    assert _tool().main(argv) == 0
    hf_model, info = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(
        hf_dir, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert hf_model.config.id2label[0] == "person" and hf_model.config.num_labels == 133
    _compare(model, hf_model.eval(), crop, "swin_T")


def test_fixture_converts_and_transformers_reproduces_the_original(tmp_path, reference_dir):
    """The original implementation's outputs (the fixture) from transformers, on all 3 images."""
    transformers = _transformers()
    root = reference_dir / FIXTURE
    hf_dir = tmp_path / "hf"
    argv = _fixture_to_hf_argv(root)
    assert _tool().main(argv + ["-o", str(hf_dir)]) == 0
    hf_model = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(hf_dir).eval()
    for path in sorted(root.glob("*.npz")):
        npz = np.load(path)
        with torch.no_grad():
            out = hf_model(pixel_values=_padded_input(npz["image"]), output_auxiliary_logits=True)
        expected = {k: torch.from_numpy(npz[k]) for k in npz.files if k.endswith(("_logits", "_masks"))}
        _assert_close(f"{path.stem} class logits", out.class_queries_logits[0], expected["pred_logits"])
        _assert_close(f"{path.stem} mask logits", out.masks_queries_logits[0], expected["pred_masks"])
        assert len(out.auxiliary_logits) == 3
        for i, aux in enumerate(out.auxiliary_logits):
            _assert_close(f"{path.stem} aux{i}", aux["class_queries_logits"][0], expected[f"aux{i}_pred_logits"])
            _assert_close(f"{path.stem} aux{i}", aux["masks_queries_logits"][0], expected[f"aux{i}_pred_masks"])


def test_fixture_round_trip_is_exact_and_config_matches(tmp_path, reference_dir):
    """.pkl -> HF directory -> .pkl gives back every array bit for bit (no transformers needed),
    and the config written for the HF directory builds the fixture's model."""
    root = reference_dir / FIXTURE
    tool = _tool()
    hf_dir, pkl, yaml_path = tmp_path / "hf", tmp_path / "back.pkl", tmp_path / "back.yaml"
    argv = _fixture_to_hf_argv(root)
    assert tool.main(argv + ["-o", str(hf_dir)]) == 0
    argv = ["to-pkl", str(hf_dir), "-o", str(pkl), "--yaml", str(yaml_path), "--task", "instance"]
    assert tool.main(argv) == 0
    with open(root / "model.pkl", "rb") as f:
        original = pickle.load(f)["model"]
    with open(pkl, "rb") as f:
        back = pickle.load(f)["model"]
    assert sorted(back) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)

    ours, reference = get_cfg(), get_cfg()
    ours.merge_from_file(str(yaml_path))
    reference.merge_from_file(str(root / "config.yaml"))
    assert ours.MODEL.WEIGHTS == str(pkl)
    differ = [
        f"MODEL.{section}.{key}"
        for section in ("SWIN", "SEM_SEG_HEAD", "MASK_FORMER")
        for key, value in reference.MODEL[section].items()
        if ours.MODEL[section][key] != value
    ]
    assert differ == []
    assert list(ours.DATASETS.TEST) == ["coco_2017_val"]  # the fixture's 80 COCO classes


def test_hf_uri_uses_the_cache_offline_and_names_the_repo_otherwise(
    tmp_path, reference_dir, monkeypatch
):
    hub = pytest.importorskip("huggingface_hub.constants", reason="hf:// needs huggingface_hub")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "cache"))
    root = reference_dir / FIXTURE
    revision = "0" * 40
    snapshot = tmp_path / "cache" / "models--someone--thin-swin" / "snapshots" / revision
    argv = _fixture_to_hf_argv(root)
    assert _tool().main(argv + ["-o", str(snapshot)]) == 0
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(revision)

    assert resolve_hf_weights("hf://someone/thin-swin") == str(snapshot / "model.safetensors")
    cfg = get_cfg()
    cfg.merge_from_file(str(root / "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    Checkpointer(build_model(cfg)).load("hf://someone/thin-swin", strict=True)
    with pytest.raises(OSError, match="'someone/absent'.*not in the local cache"):
        resolve_hf_weights("hf://someone/absent")


def test_clear_errors(tmp_path, reference_dir):
    root = reference_dir / FIXTURE
    tool = _tool()
    hf_dir = tmp_path / "hf"
    argv = _fixture_to_hf_argv(root)
    assert tool.main(argv + ["-o", str(hf_dir)]) == 0
    assert tool.main(argv + ["-o", str(hf_dir)]) == 1  # exists: nothing overwritten
    with pytest.raises(FileExistsError, match="not an empty directory"):
        tool.cfg_to_hf(str(root / "config.yaml"), str(root / "model.pkl"), str(hf_dir), None, [])

    r50 = REPO / "configs" / "coco" / "panoptic" / "R50.yaml"
    with pytest.raises(ValueError, match="BACKBONE.NAME is 'build_resnet_backbone'; only Swin"):
        tool.cfg_to_hf(str(r50), str(root / "model.pkl"), str(tmp_path / "r50"), None, [])
    assert not (tmp_path / "r50").exists()

    config = json.loads((hf_dir / "config.json").read_text())
    config["backbone_config"] = {"model_type": "resnet", "out_features": STAGES}
    resnet = tmp_path / "resnet"
    resnet.mkdir()
    (resnet / "config.json").write_text(json.dumps(config))
    (resnet / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="backbone 'resnet' is not supported; only Swin"):
        tool.hf_to_yaml(str(resnet), str(tmp_path / "x.yaml"), "instance")
    assert not (tmp_path / "x.yaml").exists()

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((hf_dir / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"Cannot read .*corrupt/model.safetensors"):
        read_hf_directory(str(corrupt))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_hf_weights(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="Cannot tell the task"):
        tool.hf_to_yaml(str(hf_dir), str(tmp_path / "y.yaml"), None)
    argv = ["to-pkl", str(hf_dir), "-o", str(tmp_path / "z.pkl"), "--yaml", str(tmp_path / "z.yaml")]
    assert tool.main(argv) == 1  # no task in the name "hf": neither file is written
    assert not (tmp_path / "z.pkl").exists() and not (tmp_path / "z.yaml").exists()
