"""Pixel decoders: parity with the original implementation's outputs, published state-dict names."""
import json
import pickle

import numpy as np
import pytest
import torch
from fvcore.common.config import CfgNode

from mask2former.config import get_cfg
from mask2former.layers import ShapeSpec
from mask2former.modeling.pixel_decoder import BasePixelDecoder, MSDeformAttnPixelDecoder, build_pixel_decoder

PREFIX = "sem_seg_head.pixel_decoder."
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def _fixture_features(fixture):
    """The backbone features and pixel-decoder outputs stored with the fixture's first image."""
    arrays = next(a for a in map(np.load, sorted(fixture.glob("*.npz"))) if "backbone_res2" in a.files)
    features = {name: torch.from_numpy(arrays[f"backbone_{name}"])[None] for name in STRIDES}
    return features, arrays


def _shape_specs(channels):
    """name -> ShapeSpec(channels, stride) for backbone features ``res2..res5``."""
    return {name: ShapeSpec(channels=c, stride=STRIDES[name]) for name, c in channels.items()}


def _random_features(specs, n, height=64, width=96):
    """Random backbone maps [n, C, height / stride, width / stride] for name -> ShapeSpec."""
    sizes = {name: (s.channels, height // s.stride, width // s.stride) for name, s in specs.items()}
    return {name: torch.randn(n, *size) for name, size in sizes.items()}


def _fixture_state_dict(fixture):
    with open(fixture / "model.pkl", "rb") as f:
        weights = pickle.load(f)["model"]
    return {k[len(PREFIX):]: torch.from_numpy(v) for k, v in weights.items() if k.startswith(PREFIX)}


@pytest.mark.parametrize(
    "name", ["thin_r50_coco_panoptic", "thin_swin_coco_instance", "thin_r50_ade20k_semantic"]
)
def test_msdeformattn_matches_reference_outputs(reference_dir, name):
    fixture = reference_dir / name
    cfg = get_cfg()
    cfg.merge_from_file(str(fixture / "config.yaml"))
    features, expected = _fixture_features(fixture)
    decoder = build_pixel_decoder(cfg, _shape_specs({name: x.shape[1] for name, x in features.items()}))
    assert isinstance(decoder, MSDeformAttnPixelDecoder)
    decoder.load_state_dict(_fixture_state_dict(fixture), strict=True)
    decoder.eval()

    with torch.no_grad():
        mask_features, encoder_features, multi_scale = decoder.forward_features(features)

    # README tolerances: 1e-4 absolute, 1e-3 relative
    outputs = {"mask_features": mask_features, **{f"multi_scale_{i}": f for i, f in enumerate(multi_scale)}}
    assert len(multi_scale) == 3
    for key, actual in outputs.items():
        torch.testing.assert_close(actual[0], torch.from_numpy(expected[key]), atol=1e-4, rtol=1e-3, msg=key)
    # the encoder's coarsest level is also the first multi-scale feature
    torch.testing.assert_close(encoder_features, multi_scale[0])


# the published configs' pixel decoder: CONVS_DIM = MASK_DIM = 256, GN, 6 encoder layers, 8 heads
PUBLISHED_KWARGS = dict(
    transformer_dropout=0.0,
    transformer_nheads=8,
    transformer_dim_feedforward=1024,
    transformer_enc_layers=6,
    conv_dim=256,
    mask_dim=256,
    norm="GN",
    transformer_in_features=["res3", "res4", "res5"],
    common_stride=4,
)
# channels of res2..res5 of the published backbones
BACKBONE_CHANNELS = {
    "R50": (256, 512, 1024, 2048),
    "R101": (256, 512, 1024, 2048),
    "swin_T": (96, 192, 384, 768),
    "swin_S": (96, 192, 384, 768),
    "swin_B": (128, 256, 512, 1024),
    "swin_L": (192, 384, 768, 1536),
}


def test_state_dict_matches_published_manifests(reference_dir):
    manifests = sorted((reference_dir / "keys").glob("*.json"))
    assert manifests
    for path in manifests:
        backbone = next(b for b in BACKBONE_CHANNELS if path.stem.endswith("_" + b))
        input_shape = _shape_specs(dict(zip(STRIDES, BACKBONE_CHANNELS[backbone])))
        with torch.device("meta"):  # shapes only
            decoder = MSDeformAttnPixelDecoder(input_shape, **PUBLISHED_KWARGS)
        published = json.loads(path.read_text())["state_dict"]
        expected = {k[len(PREFIX):]: tuple(v) for k, v in published.items() if k.startswith(PREFIX)}
        actual = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
        assert actual == expected, path.name


THIN_SHAPES = _shape_specs({"res2": 8, "res3": 16, "res4": 32, "res5": 64})
THIN_KWARGS = {
    **PUBLISHED_KWARGS,
    "transformer_nheads": 4,
    "transformer_dim_feedforward": 64,
    "transformer_enc_layers": 1,
    "conv_dim": 32,
    "mask_dim": 16,
}


def _thin_decoder(**overrides):
    decoder = MSDeformAttnPixelDecoder(THIN_SHAPES, **{**THIN_KWARGS, **overrides}).eval()
    return decoder, _random_features(THIN_SHAPES, 2)


def test_msdeformattn_shapes_and_float32_under_autocast():
    torch.manual_seed(0)
    decoder, features = _thin_decoder()
    with torch.no_grad():
        mask_features, encoder_features, multi_scale = decoder.forward_features(features)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast_outputs = decoder.forward_features(features)
    assert mask_features.shape == (2, 16, 16, 24)
    assert encoder_features.shape == (2, 32, 2, 3)
    assert [tuple(f.shape) for f in multi_scale] == [(2, 32, 2, 3), (2, 32, 4, 6), (2, 32, 8, 12)]
    assert autocast_outputs[0].dtype == torch.float32
    torch.testing.assert_close(autocast_outputs[0], mask_features)


def test_msdeformattn_input_errors():
    decoder, features = _thin_decoder()
    del features["res2"]
    with pytest.raises(KeyError, match="res2"):
        decoder.forward_features(features)
    with pytest.raises(ValueError, match="res6"):
        _thin_decoder(transformer_in_features=["res5", "res6"])
    with pytest.raises(ValueError, match="common_stride=16"):
        _thin_decoder(common_stride=16)


def test_base_pixel_decoder_layout_and_outputs():
    """MaskFormer's FPN names: adapter_1..3 (1x1) and layer_1..4 (3x3) from fine to coarse."""
    cfg = CfgNode(
        {
            "MODEL": {
                "SEM_SEG_HEAD": {
                    "PIXEL_DECODER_NAME": "BasePixelDecoder",
                    "IN_FEATURES": ["res2", "res3", "res4", "res5"],
                    "CONVS_DIM": 32,
                    "MASK_DIM": 16,
                    "NORM": "GN",
                }
            }
        }
    )
    stem = ShapeSpec(channels=4, stride=2)  # not in IN_FEATURES, ignored
    decoder = build_pixel_decoder(cfg, {**THIN_SHAPES, "stem": stem})
    assert isinstance(decoder, BasePixelDecoder)
    state = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    expected = {"mask_features.weight": (16, 32, 3, 3), "mask_features.bias": (16,)}
    for i, c in enumerate((8, 16, 32), start=1):
        expected.update({f"adapter_{i}.weight": (32, c, 1, 1), f"adapter_{i}.norm.weight": (32,)})
        expected.update({f"adapter_{i}.norm.bias": (32,)})
    for i, c in enumerate((32, 32, 32, 64), start=1):
        expected.update({f"layer_{i}.weight": (32, c, 3, 3), f"layer_{i}.norm.weight": (32,)})
        expected.update({f"layer_{i}.norm.bias": (32,)})
    assert state == expected

    features = _random_features(THIN_SHAPES, 1)
    with torch.no_grad():
        mask_features, encoder_features, multi_scale = decoder.forward_features(features)
    assert mask_features.shape == (1, 16, 16, 24)
    assert encoder_features is None
    assert [tuple(f.shape) for f in multi_scale] == [(1, 32, 2, 3), (1, 32, 4, 6), (1, 32, 8, 12)]
    # the coarsest level is layer_4 applied to res5 alone
    torch.testing.assert_close(multi_scale[0], decoder.layer_4(features["res5"]))


def test_unknown_decoder_name_names_the_key():
    cfg = CfgNode({"MODEL": {"SEM_SEG_HEAD": {"PIXEL_DECODER_NAME": "NoSuchDecoder"}}})
    with pytest.raises(KeyError, match="MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME='NoSuchDecoder'"):
        build_pixel_decoder(cfg, {})
