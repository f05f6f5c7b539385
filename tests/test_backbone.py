"""Backbones: numeric parity with the original Mask2Former, checkpoint key layout, freezing, norms,
DeepLab variants, builders and the weight-conversion tools."""
import importlib.util
import json
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from mask2former.config import get_cfg
from mask2former.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec, fold_frozen_batchnorm
from mask2former.modeling.backbone import (
    Backbone,
    BasicStem,
    D2SwinTransformer,
    DeepLabStem,
    ResNet,
    build_backbone,
    build_resnet_backbone,
    build_resnet_deeplab_backbone,
    make_resnet_stages,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
FEATURES = ["res2", "res3", "res4", "res5"]

# Published backbones: (depth, norm) for ResNets, (embed_dim, depths, heads, window, pretrain size)
# for Swin, as in the original configs named by the key manifests.
RESNET_ARCHS = {"R50": (50, "FrozenBN"), "R101": (101, "FrozenBN"), "R50_SyncBN": (50, "SyncBN")}
SWIN_ARCHS = {
    "swin_T": (96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 224),
    "swin_S": (96, [2, 2, 18, 2], [3, 6, 12, 24], 7, 224),
    "swin_B": (128, [2, 2, 18, 2], [4, 8, 16, 32], 12, 384),
    "swin_L": (192, [2, 2, 18, 2], [6, 12, 24, 48], 12, 384),
}
MANIFEST_ARCHS = {
    "coco_panoptic_R50": "R50",
    "coco_panoptic_R101": "R101",
    "coco_instance_R50": "R50",
    "ade20k_semantic_R50": "R50",
    "ade20k_panoptic_R50": "R50",
    "cityscapes_semantic_R50": "R50_SyncBN",
    "coco_panoptic_swin_T": "swin_T",
    "coco_panoptic_swin_S": "swin_S",
    "coco_panoptic_swin_B": "swin_B",
    "coco_panoptic_swin_L": "swin_L",
    "coco_instance_swin_L": "swin_L",
    "ade20k_semantic_swin_L": "swin_L",
}


def _thin_resnet(r: dict, **overrides) -> ResNet:
    """ResNet from a ``MODEL.RESNETS`` mapping (plain YAML), built with explicit arguments."""
    args = dict(
        depth=r["DEPTH"],
        in_channels=r["STEM_OUT_CHANNELS"],
        res2_out_channels=r["RES2_OUT_CHANNELS"],
        num_groups=r["NUM_GROUPS"],
        width_per_group=r["WIDTH_PER_GROUP"],
        stride_in_1x1=r["STRIDE_IN_1X1"],
        norm=r["NORM"],
        res5_dilation=r["RES5_DILATION"],
    )
    args.update(overrides)
    stem = BasicStem(3, args["in_channels"], norm=args["norm"])
    return ResNet(stem, make_resnet_stages(args.pop("depth"), **args), out_features=FEATURES)


def _backbone_from_yaml(cfg: dict) -> Backbone:
    model = cfg["MODEL"]
    if model["BACKBONE"]["NAME"] == "build_resnet_backbone":
        return _thin_resnet(model["RESNETS"])
    s = model["SWIN"]
    return D2SwinTransformer(
        pretrain_img_size=s["PRETRAIN_IMG_SIZE"],
        patch_size=s["PATCH_SIZE"],
        embed_dim=s["EMBED_DIM"],
        depths=s["DEPTHS"],
        num_heads=s["NUM_HEADS"],
        window_size=s["WINDOW_SIZE"],
        mlp_ratio=s["MLP_RATIO"],
        qkv_bias=s["QKV_BIAS"],
        qk_scale=s["QK_SCALE"],
        drop_path_rate=s["DROP_PATH_RATE"],
        ape=s["APE"],
        patch_norm=s["PATCH_NORM"],
        out_features=s["OUT_FEATURES"],
    )


def _backbone_from_cfg(fixture: Path) -> Backbone:
    cfg = get_cfg()
    cfg.merge_from_file(str(fixture / "config.yaml"))
    return build_backbone(cfg)


def _check_parity(backbone: Backbone, fixture: Path, after_load=None) -> None:
    """Load the fixture's backbone weights, run the reference input, compare res2..res5;
    ``after_load(backbone)`` runs between loading and the forward pass."""
    with open(fixture / "model.pkl", "rb") as f:
        weights = pickle.load(f)["model"]
    state = {
        k[len("backbone."):]: torch.as_tensor(v)
        for k, v in weights.items()
        if k.startswith("backbone.")
    }
    for name, buffer in backbone.state_dict().items():
        if name.endswith("relative_position_index"):  # computed, not learned: must agree
            assert torch.equal(buffer, state[name]), name
    backbone.load_state_dict(state, strict=True)
    backbone.eval()
    if after_load is not None:
        after_load(backbone)

    cfg = yaml.safe_load((fixture / "config.yaml").read_text())
    sample = next(
        d for d in (np.load(p) for p in sorted(fixture.glob("*.npz"))) if "backbone_res2" in d.files
    )
    mean = torch.tensor(cfg["MODEL"]["PIXEL_MEAN"]).view(3, 1, 1)
    std = torch.tensor(cfg["MODEL"]["PIXEL_STD"]).view(3, 1, 1)
    x = (torch.from_numpy(sample["image"]).float() - mean) / std
    H, W = x.shape[-2:]
    x = F.pad(x, (0, -W % 32, 0, -H % 32))[None]
    assert backbone.size_divisibility in (0, 32)
    with torch.no_grad():
        out = backbone(x)
    assert list(out) == FEATURES
    for name in FEATURES:
        expected = torch.from_numpy(sample[f"backbone_{name}"])
        torch.testing.assert_close(out[name][0], expected, atol=1e-4, rtol=1e-3)
        shape = backbone.output_shape()[name]
        assert out[name].shape[1] == shape.channels
        assert x.shape[-1] // shape.stride == out[name].shape[-1]


@pytest.mark.parametrize(
    "fixture", ["thin_r50_coco_panoptic", "thin_r50_ade20k_semantic", "thin_swin_coco_instance"]
)
def test_parity_with_original_explicit_args(reference_dir, fixture):
    fixture = reference_dir / fixture
    cfg = yaml.safe_load((fixture / "config.yaml").read_text())
    _check_parity(_backbone_from_yaml(cfg), fixture)


@pytest.mark.parametrize(
    "fixture", ["thin_r50_coco_panoptic", "thin_r50_ade20k_semantic", "thin_swin_coco_instance"]
)
def test_parity_with_original_from_config(reference_dir, fixture):
    fixture = reference_dir / fixture
    _check_parity(_backbone_from_cfg(fixture), fixture)


@pytest.mark.parametrize("fixture", ["thin_r50_coco_panoptic", "thin_r50_ade20k_semantic"])
def test_folding_frozen_batchnorm_keeps_parity(reference_dir, fixture):
    def fold(backbone):
        frozen = sum(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
        assert frozen > 0 and fold_frozen_batchnorm(backbone) == frozen
        assert not any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
        keys = backbone.state_dict().keys()
        assert "stem.conv1.bias" in keys and not any(".norm." in k for k in keys)

    _check_parity(_backbone_from_cfg(reference_dir / fixture), reference_dir / fixture, after_load=fold)


def test_folding_frozen_batchnorm_equals_conv_then_norm():
    torch.manual_seed(0)
    frozen = FrozenBatchNorm2d(8)
    for name, value in (("weight", torch.randn(8)), ("bias", torch.randn(8)),
                        ("running_mean", torch.randn(8)), ("running_var", torch.rand(8) + 0.1)):
        getattr(frozen, name).copy_(value)
    conv = Conv2d(4, 8, kernel_size=3, padding=1, bias=True, norm=frozen)
    others = nn.Sequential(conv, Conv2d(8, 8, kernel_size=1, norm=nn.GroupNorm(2, 8)), Conv2d(8, 8, 1))
    x = torch.randn(2, 4, 9, 11)
    with torch.no_grad():
        expected = others(x)
        assert fold_frozen_batchnorm(others) == 1  # the GroupNorm and norm-free convs are kept
        assert conv.norm is None and isinstance(others[1].norm, nn.GroupNorm)
        torch.testing.assert_close(others(x), expected, rtol=1e-5, atol=1e-5)


def _published_backbone(arch: str) -> Backbone:
    if arch in RESNET_ARCHS:
        depth, norm = RESNET_ARCHS[arch]
        stages = make_resnet_stages(depth, in_channels=64, res2_out_channels=256, norm=norm)
        return ResNet(BasicStem(3, 64, norm=norm), stages, out_features=FEATURES)
    embed_dim, depths, heads, window, size = SWIN_ARCHS[arch]
    return D2SwinTransformer(
        embed_dim=embed_dim,
        depths=depths,
        num_heads=heads,
        window_size=window,
        pretrain_img_size=size,
    )


def _manifest_backbone_shapes(reference_dir: Path, manifest: str) -> dict:
    state = json.loads((reference_dir / "keys" / f"{manifest}.json").read_text())["state_dict"]
    return {k[len("backbone."):]: list(v) for k, v in state.items() if k.startswith("backbone.")}


@pytest.mark.parametrize(
    "manifest",
    [
        "coco_panoptic_R50",
        "coco_panoptic_R101",
        "cityscapes_semantic_R50",
        "coco_panoptic_swin_T",
        "coco_panoptic_swin_S",
        "coco_panoptic_swin_B",
        "coco_panoptic_swin_L",
    ],
)
def test_state_dict_matches_published_keys(reference_dir, manifest):
    with torch.device("meta"):
        backbone = _published_backbone(MANIFEST_ARCHS[manifest])
    shapes = {k: list(v.shape) for k, v in backbone.state_dict().items()}
    assert shapes == _manifest_backbone_shapes(reference_dir, manifest)


@pytest.mark.parametrize("manifest", sorted(MANIFEST_ARCHS))
def test_published_config_builds_published_keys(reference_dir, manifest):
    # Manifest "<dataset>_<task>_<arch>" is configs/<dataset>/<task>/<arch>.yaml in this repository.
    dataset, task, arch = manifest.split("_", 2)
    path = REPO_ROOT / "configs" / dataset / task / f"{arch}.yaml"
    if not path.is_file():
        pytest.skip(f"{path} not in the repository")
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    with torch.device("meta"):
        backbone = build_backbone(cfg)
    shapes = {k: list(v.shape) for k, v in backbone.state_dict().items()}
    assert shapes == _manifest_backbone_shapes(reference_dir, manifest)


def test_freeze_at_freezes_stem_and_stages_and_converts_batchnorm():
    r = dict(DEPTH=50, STEM_OUT_CHANNELS=16, RES2_OUT_CHANNELS=64, NUM_GROUPS=1, WIDTH_PER_GROUP=16,
             STRIDE_IN_1X1=False, NORM="BN", RES5_DILATION=1)
    backbone = _thin_resnet(r)
    assert all(p.requires_grad for p in backbone.parameters())
    backbone.freeze(2)
    for name in ["stem", "res2"]:
        module = getattr(backbone, name)
        assert not any(p.requires_grad for p in module.parameters())
        assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
        assert any(isinstance(m, FrozenBatchNorm2d) for m in module.modules())
    for name in ["res3", "res4", "res5"]:
        module = getattr(backbone, name)
        assert all(p.requires_grad for p in module.parameters())
        assert not any(isinstance(m, FrozenBatchNorm2d) for m in module.modules())
    # Frozen BN keeps the statistics, so the checkpoint layout only loses num_batches_tracked.
    assert "stem.conv1.norm.running_var" in backbone.state_dict()
    assert "stem.conv1.norm.num_batches_tracked" not in backbone.state_dict()
    assert "res3.0.conv1.norm.num_batches_tracked" in backbone.state_dict()


def test_freeze_at_from_config():
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 5
    cfg.MODEL.RESNETS.merge_from_list(["DEPTH", 18, "RES2_OUT_CHANNELS", 64, "NORM", "BN",
                                       "OUT_FEATURES", ["res2", "res5"]])
    with torch.device("meta"):
        backbone = build_backbone(cfg)
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())


@pytest.mark.parametrize("norm", ["FrozenBN", "BN", "SyncBN", "GN", ""])
def test_norm_variants_construct_and_run(norm):
    stages = make_resnet_stages(18, in_channels=64, res2_out_channels=64, norm=norm)
    backbone = ResNet(BasicStem(3, 64, norm=norm), stages, out_features=FEATURES).eval()
    if not norm:
        assert backbone.res2[0].conv1.norm is None
    if norm == "SyncBN":
        assert isinstance(backbone.stem.conv1.norm, nn.SyncBatchNorm)
        return  # SyncBatchNorm needs a process group to run
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 64, 16, 16),
        "res3": (1, 128, 8, 8),
        "res4": (1, 256, 4, 4),
        "res5": (1, 512, 2, 2),
    }


def test_bottleneck_options_stride_groups_dilation():
    stages = make_resnet_stages(50, in_channels=32, res2_out_channels=64, num_groups=4,
                                width_per_group=4, stride_in_1x1=True, res5_dilation=2)
    backbone = ResNet(BasicStem(3, 32, norm="FrozenBN"), stages, out_features=FEATURES)
    block = backbone.res3[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    assert block.conv2.groups == 4 and block.conv2.weight.shape == (32, 8, 3, 3)
    assert all(b.conv2.dilation == (2, 2) for b in backbone.res5)
    assert backbone.output_shape()["res5"].stride == 16
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 512, 4, 4)


def test_deeplab_stem_and_multi_grid():
    stages = make_resnet_stages(50, in_channels=32, res2_out_channels=64, width_per_group=16,
                                norm="BN", res5_dilation=2, res5_multi_grid=[1, 2, 4])
    backbone = ResNet(DeepLabStem(3, 32, norm="BN"), stages, out_features=FEATURES).eval()
    keys = backbone.state_dict()
    assert keys["stem.conv1.weight"].shape == (16, 3, 3, 3)
    assert keys["stem.conv2.weight"].shape == (16, 16, 3, 3)
    assert keys["stem.conv3.weight"].shape == (32, 16, 3, 3)
    assert "stem.conv3.norm.running_mean" in keys
    assert [b.conv2.dilation[0] for b in backbone.res5] == [2, 4, 8]
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 96))
    assert out["res5"].shape == (1, 512, 4, 6)


def test_deeplab_builder_reads_stem_type_and_multi_grid():
    # This package's builders, called directly (with Detectron2 installed, the registry holds
    # Detectron2's builders of the same names instead).
    cfg = get_cfg()
    cfg.MODEL.RESNETS.merge_from_list(["STEM_TYPE", "deeplab", "STEM_OUT_CHANNELS", 128,
                                       "RES5_DILATION", 2, "RES5_MULTI_GRID", [1, 2, 4],
                                       "OUT_FEATURES", FEATURES])
    with torch.device("meta"):
        backbone = build_resnet_deeplab_backbone(cfg, ShapeSpec(channels=3))
    assert isinstance(backbone.stem, DeepLabStem)
    assert [b.conv2.dilation[0] for b in backbone.res5] == [2, 4, 8]
    # The standard builder ignores both keys, as Detectron2's does.
    with torch.device("meta"):
        backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    assert isinstance(backbone.stem, BasicStem)
    assert [b.conv2.dilation[0] for b in backbone.res5] == [2, 2, 2]


def test_invalid_resnet_options_raise():
    with pytest.raises(ValueError, match="DEPTH=42"):
        make_resnet_stages(42, in_channels=64)
    with pytest.raises(ValueError, match="RES2_OUT_CHANNELS=64"):
        make_resnet_stages(18, in_channels=64, res2_out_channels=256)
    with pytest.raises(ValueError, match="RES5_MULTI_GRID"):
        make_resnet_stages(50, in_channels=64, res5_multi_grid=[1, 2])
    with pytest.raises(ValueError, match="out_features"):
        ResNet(BasicStem(3, 8), make_resnet_stages(18, in_channels=8, res2_out_channels=64),
               out_features=["res6"])


def test_deformable_conv_and_unknown_name_raise():
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, True, True, True]
    with pytest.raises(NotImplementedError, match="DEFORM_ON_PER_STAGE"):
        build_resnet_backbone(cfg, ShapeSpec(channels=3))  # this package's (not Detectron2's)
    cfg.MODEL.BACKBONE.NAME = "NoSuchBackbone"
    with pytest.raises(KeyError, match="MODEL.BACKBONE.NAME='NoSuchBackbone'"):
        build_backbone(cfg)


def test_resnet_out_features_drop_unused_stages():
    stages = make_resnet_stages(18, in_channels=64, res2_out_channels=64)
    backbone = ResNet(BasicStem(3, 64), stages, out_features=["stem", "res3"])
    assert not hasattr(backbone, "res4") and not hasattr(backbone, "res5")
    assert backbone.output_shape() == {"stem": ShapeSpec(channels=64, stride=4),
                                       "res3": ShapeSpec(channels=128, stride=8)}


def test_swin_arbitrary_input_size_and_output_shape():
    torch.manual_seed(0)
    swin = D2SwinTransformer(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
                             window_size=7, out_features=["res3", "res5"], ape=True).eval()
    assert swin.size_divisibility == 32
    assert swin.output_shape() == {"res3": ShapeSpec(channels=32, stride=8),
                                   "res5": ShapeSpec(channels=128, stride=32)}
    assert "norm0.weight" in swin.state_dict()  # all four output norms exist, as in the original
    with torch.no_grad():
        out = swin(torch.randn(2, 3, 50, 70))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"res3": (2, 32, 7, 9),
                                                          "res5": (2, 128, 2, 3)}
    assert torch.isfinite(out["res5"]).all()


def test_swin_drop_path_only_in_training():
    swin = D2SwinTransformer(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
                             drop_path_rate=0.5)
    assert swin.layers[0].blocks[0].drop_path.__class__.__name__ == "Identity"
    assert swin.layers[3].blocks[1].drop_path.drop_prob == pytest.approx(0.5)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        swin.train()
        assert not torch.equal(swin(x)["res5"], swin(x)["res5"])
        swin.eval()
        torch.testing.assert_close(swin(x)["res5"], swin(x)["res5"], rtol=0, atol=0)


def _load_tool(name: str):
    path = REPO_ROOT / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torchvision_resnet18_state_dict() -> "OrderedDict[str, torch.Tensor]":
    """Random weights under torchvision's ResNet-18 parameter names and shapes."""
    sd = OrderedDict()

    def bn(prefix, c):
        for k in ["weight", "bias", "running_mean", "running_var"]:
            sd[f"{prefix}.{k}"] = torch.randn(c)
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(7)

    sd["conv1.weight"] = torch.randn(64, 3, 7, 7)
    bn("bn1", 64)
    in_c = 64
    for layer, out_c in enumerate([64, 128, 256, 512], start=1):
        for b in range(2):
            p = f"layer{layer}.{b}"
            sd[f"{p}.conv1.weight"] = torch.randn(out_c, in_c if b == 0 else out_c, 3, 3)
            bn(f"{p}.bn1", out_c)
            sd[f"{p}.conv2.weight"] = torch.randn(out_c, out_c, 3, 3)
            bn(f"{p}.bn2", out_c)
            if b == 0 and layer > 1:
                sd[f"{p}.downsample.0.weight"] = torch.randn(out_c, in_c, 1, 1)
                bn(f"{p}.downsample.1", out_c)
        in_c = out_c
    sd["fc.weight"] = torch.randn(1000, 512)
    sd["fc.bias"] = torch.randn(1000)
    return sd


def test_convert_torchvision_to_d2(tmp_path):
    tool = _load_tool("convert-torchvision-to-d2")
    source = _torchvision_resnet18_state_dict()
    torch.save(source, tmp_path / "r18.pth")
    tool.main([str(tmp_path / "r18.pth"), str(tmp_path / "r18.pkl")])
    with open(tmp_path / "r18.pkl", "rb") as f:
        converted = pickle.load(f)
    assert converted["__author__"] == "torchvision" and converted["matching_heuristics"]
    model = converted["model"]
    assert all(isinstance(v, np.ndarray) for v in model.values())
    np.testing.assert_array_equal(model["stem.conv1.norm.running_mean"], source["bn1.running_mean"])
    np.testing.assert_array_equal(model["res3.0.shortcut.norm.weight"],
                                  source["layer2.0.downsample.1.weight"])
    np.testing.assert_array_equal(model["res5.1.conv2.weight"], source["layer4.1.conv2.weight"])

    backbone = ResNet(BasicStem(3, 64, norm="FrozenBN"),
                      make_resnet_stages(18, in_channels=64, res2_out_channels=64),
                      out_features=FEATURES)
    backbone.load_state_dict({k: torch.from_numpy(v) for k, v in model.items()}, strict=True)

    tool.main([str(tmp_path / "r18.pth"), str(tmp_path / "prefixed.pkl"), "--prefix", "backbone."])
    with open(tmp_path / "prefixed.pkl", "rb") as f:
        assert set(pickle.load(f)["model"]) == {"backbone." + k for k in model}
    with pytest.raises(ValueError, match="layer9"):
        tool.torchvision_to_d2_name("layer9.0.foo.weight")


def test_convert_pretrained_swin_to_d2(tmp_path):
    tool = _load_tool("convert-pretrained-swin-model-to-d2")
    swin = D2SwinTransformer(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4])
    # An official classification checkpoint: the backbone's keys except the per-output norms,
    # plus a classifier, a final norm and fixed attention masks.
    official = OrderedDict((k, v) for k, v in swin.state_dict().items() if not k.startswith("norm"))
    official["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    official["norm.weight"], official["norm.bias"] = torch.ones(128), torch.zeros(128)
    official["head.weight"], official["head.bias"] = torch.randn(1000, 128), torch.randn(1000)
    torch.save({"model": official}, tmp_path / "swin.pth")
    tool.main([str(tmp_path / "swin.pth"), str(tmp_path / "swin.pkl")])
    with open(tmp_path / "swin.pkl", "rb") as f:
        converted = pickle.load(f)
    assert converted["matching_heuristics"]
    model = converted["model"]
    expected = [k for k in swin.state_dict() if not k.startswith("norm")]
    assert list(model) == expected
    np.testing.assert_array_equal(model["patch_embed.proj.weight"],
                                  official["patch_embed.proj.weight"].numpy())
    torch.save(official, tmp_path / "bare.pth")
    with pytest.raises(ValueError, match="'model'"):
        tool.main([str(tmp_path / "bare.pth"), str(tmp_path / "bare.pkl")])
