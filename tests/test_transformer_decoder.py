"""MultiScaleMaskedTransformerDecoder: published state-dict layout and numerical parity with the
original implementation (fixtures under ../shared/reference)."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mask2former.modeling.transformer_decoder import MultiScaleMaskedTransformerDecoder
from mask2former.modeling.transformer_decoder.mask2former_transformer_decoder import mask_product
from mask2former.modeling.transformer_decoder.layers import CrossAttentionLayer, FFNLayer, SelfAttentionLayer

PREFIX = "sem_seg_head.predictor."
FIXTURES = ["thin_r50_coco_panoptic", "thin_swin_coco_instance", "thin_r50_ade20k_semantic"]


def _decoder_from_fixture_config(config_path: Path) -> MultiScaleMaskedTransformerDecoder:
    model = yaml.safe_load(config_path.read_text())["MODEL"]
    mf, head = model["MASK_FORMER"], model["SEM_SEG_HEAD"]
    return MultiScaleMaskedTransformerDecoder(
        head["CONVS_DIM"],
        True,
        num_classes=head["NUM_CLASSES"],
        hidden_dim=mf["HIDDEN_DIM"],
        num_queries=mf["NUM_OBJECT_QUERIES"],
        nheads=mf["NHEADS"],
        dim_feedforward=mf["DIM_FEEDFORWARD"],
        dec_layers=mf["DEC_LAYERS"] - 1,
        pre_norm=mf["PRE_NORM"],
        mask_dim=head["MASK_DIM"],
        enforce_input_project=mf["ENFORCE_INPUT_PROJ"],
    )


def _predictor_weights(model_pkl: Path) -> dict:
    with open(model_pkl, "rb") as f:
        weights = pickle.load(f)["model"]
    return {
        k[len(PREFIX):]: torch.from_numpy(np.asarray(v)) for k, v in weights.items() if k.startswith(PREFIX)
    }


def _assert_close(name, actual, expected):
    expected = torch.from_numpy(expected)
    diff = (actual - expected).abs()
    # 1e-4 absolute, relaxed to 1e-3 relative for magnitudes above 1 (fixture README).
    bound = torch.maximum(torch.full_like(expected, 1e-4), 1e-3 * expected.abs())
    assert bool((diff <= bound).all()), f"{name}: max abs diff {diff.max().item():.3g}"


@pytest.mark.parametrize("fixture", FIXTURES)
def test_predictor_parity_with_published_decoder(reference_dir, fixture):
    root = reference_dir / fixture
    decoder = _decoder_from_fixture_config(root / "config.yaml").eval()
    decoder.return_aux_outputs = True
    incompatible = decoder.load_state_dict(_predictor_weights(root / "model.pkl"), strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys

    # The first processed image carries the pixel-decoder outputs fed to the decoder.
    npz = next(np.load(p) for p in sorted(root.glob("*.npz")) if "multi_scale_0" in np.load(p).files)
    features = [torch.from_numpy(npz[f"multi_scale_{i}"])[None] for i in range(3)]
    with torch.no_grad():
        out = decoder(features, torch.from_numpy(npz["mask_features"])[None])

    _assert_close("pred_logits", out["pred_logits"][0], npz["pred_logits"])
    _assert_close("pred_masks", out["pred_masks"][0], npz["pred_masks"])
    assert len(out["aux_outputs"]) == 3
    for i, aux in enumerate(out["aux_outputs"]):
        _assert_close(f"aux{i}_pred_logits", aux["pred_logits"][0], npz[f"aux{i}_pred_logits"])
        _assert_close(f"aux{i}_pred_masks", aux["pred_masks"][0], npz[f"aux{i}_pred_masks"])


def test_state_dict_matches_published_manifest(reference_dir):
    """Full-size COCO panoptic R50 decoder: same keys and shapes as the model-zoo checkpoint."""
    manifest = json.loads((reference_dir / "keys" / "coco_panoptic_R50.json").read_text())["state_dict"]
    expected = {k[len(PREFIX):]: tuple(v) for k, v in manifest.items() if k.startswith(PREFIX)}
    decoder = MultiScaleMaskedTransformerDecoder(
        256, num_classes=133, hidden_dim=256, num_queries=100, nheads=8, dim_feedforward=2048,
        dec_layers=9, pre_norm=False, mask_dim=256, enforce_input_project=False,
    )
    assert {k: tuple(v.shape) for k, v in decoder.state_dict().items()} == expected


def test_input_projection_only_when_needed():
    kwargs = dict(num_classes=3, hidden_dim=16, num_queries=4, nheads=2, dim_feedforward=32,
                  dec_layers=2, pre_norm=False, mask_dim=8)
    same = MultiScaleMaskedTransformerDecoder(16, enforce_input_project=False, **kwargs)
    assert all(len(list(p.parameters())) == 0 for p in same.input_proj)
    forced = MultiScaleMaskedTransformerDecoder(16, enforce_input_project=True, **kwargs)
    assert [tuple(p.weight.shape) for p in forced.input_proj] == [(16, 16, 1, 1)] * 3
    wider = MultiScaleMaskedTransformerDecoder(24, enforce_input_project=False, **kwargs)
    assert [tuple(p.weight.shape) for p in wider.input_proj] == [(16, 24, 1, 1)] * 3


def test_forward_shapes_batch_and_attention_mask():
    torch.manual_seed(0)
    decoder = MultiScaleMaskedTransformerDecoder(
        16, num_classes=5, hidden_dim=16, num_queries=6, nheads=4, dim_feedforward=32,
        dec_layers=4, pre_norm=True, mask_dim=8, enforce_input_project=False,
    ).eval()
    decoder.return_aux_outputs = True
    features = [torch.randn(2, 16, 2, 3), torch.randn(2, 16, 4, 6), torch.randn(2, 16, 8, 12)]
    mask_features = torch.randn(2, 8, 16, 24)
    with torch.no_grad():
        out = decoder(features, mask_features)
        single = decoder([f[1:] for f in features], mask_features[1:])
    assert out["pred_logits"].shape == (2, 6, 6)
    assert out["pred_masks"].shape == (2, 6, 16, 24)
    assert len(out["aux_outputs"]) == 4
    # Batch elements are independent.
    torch.testing.assert_close(out["pred_masks"][1:], single["pred_masks"], atol=1e-5, rtol=1e-5)

    _, masks, attn_mask = decoder.forward_prediction_heads(
        decoder.query_feat.weight[:, None].repeat(1, 2, 1), mask_features, (4, 6)
    )
    assert attn_mask.shape == (2 * 4, 6, 24) and attn_mask.dtype == torch.bool
    resized = torch.nn.functional.interpolate(masks, size=(4, 6), mode="bilinear", align_corners=False)
    blocked = resized.flatten(2).sigmoid() < 0.5
    # every head gets the same mask; a query blocked everywhere attends everywhere instead
    assert torch.equal(attn_mask.view(2, 4, 6, 24), (blocked & ~blocked.all(-1, keepdim=True))[:, None].expand(-1, 4, -1, -1))


def test_attention_mask_lets_a_query_with_an_empty_mask_attend_everywhere():
    decoder = MultiScaleMaskedTransformerDecoder(
        16, num_classes=5, hidden_dim=16, num_queries=3, nheads=2, dim_feedforward=32,
        dec_layers=1, pre_norm=False, mask_dim=8, enforce_input_project=False,
    )
    logits = torch.tensor([[[-1.0, -2.0, -3.0], [1.0, -1.0, 2.0], [-5.0, 0.5, -0.5]]])  # [N=1, Q=3, S=3]
    expected = torch.tensor([[False, False, False], [False, True, False], [True, False, True]])
    assert torch.equal(decoder.attention_mask(logits), expected[None].expand(2, -1, -1))


def test_layers_post_and_pre_norm():
    torch.manual_seed(0)
    x, mem = torch.randn(5, 2, 8), torch.randn(7, 2, 8)
    cases = [(SelfAttentionLayer(8, 2), (x,)), (CrossAttentionLayer(8, 2), (x, mem)), (FFNLayer(8, 16), (x,))]
    for layer, args in cases:
        out = layer(*args)
        # Post-norm: the output is LayerNorm-ed (zero mean per token with default affine).
        assert out.shape == x.shape
        torch.testing.assert_close(out.mean(-1), torch.zeros(5, 2), atol=1e-5, rtol=0)
        layer.normalize_before = True
        assert not torch.allclose(layer(*args).mean(-1), torch.zeros(5, 2), atol=1e-3)


def _lean_and_full(decoder, features, mask_features):
    """Eval-mode outputs without and with the auxiliary outputs (the full computation)."""
    with torch.no_grad():
        decoder.return_aux_outputs = False
        lean = decoder(features, mask_features)
        decoder.return_aux_outputs = True
        full = decoder(features, mask_features)
    return lean, full


@pytest.mark.parametrize("fixture", FIXTURES)
def test_lean_eval_path_returns_identical_outputs_on_fixtures(reference_dir, fixture):
    root = reference_dir / fixture
    decoder = _decoder_from_fixture_config(root / "config.yaml").eval()
    decoder.load_state_dict(_predictor_weights(root / "model.pkl"), strict=True)
    npz = next(np.load(p) for p in sorted(root.glob("*.npz")) if "multi_scale_0" in np.load(p).files)
    features = [torch.from_numpy(npz[f"multi_scale_{i}"])[None] for i in range(3)]
    lean, full = _lean_and_full(decoder, features, torch.from_numpy(npz["mask_features"])[None])
    assert "aux_outputs" not in lean and len(full["aux_outputs"]) == decoder.num_layers
    assert torch.equal(lean["pred_logits"], full["pred_logits"])
    assert torch.equal(lean["pred_masks"], full["pred_masks"])


@pytest.mark.parametrize("stride4_size", [(32, 48), (28, 44), (30, 46)])
def test_lean_eval_path_identical_for_exact_and_inexact_level_ratios(stride4_size):
    """Levels at strides 8/16/32 of a stride-4 grid: exact even ratios read gathered pixels,
    other ratios (sizes not divisible) take the full einsum; the outputs are identical."""
    torch.manual_seed(0)
    decoder = MultiScaleMaskedTransformerDecoder(
        16, num_classes=5, hidden_dim=16, num_queries=6, nheads=4, dim_feedforward=32,
        dec_layers=5, pre_norm=False, mask_dim=8, enforce_input_project=False,
    ).eval()
    h, w = stride4_size
    features = [torch.randn(2, 16, -(-h // f), -(-w // f)) for f in (8, 4, 2)]
    lean, full = _lean_and_full(decoder, features, torch.randn(2, 8, h, w))
    assert torch.equal(lean["pred_logits"], full["pred_logits"])
    assert torch.equal(lean["pred_masks"], full["pred_masks"])
    decoder.train()
    assert len(decoder(features, torch.randn(2, 8, h, w))["aux_outputs"]) == 5


@pytest.mark.parametrize("factor", [4, 8])
def test_downsampling_reads_only_the_gathered_pixels(factor):
    """Bilinear downsampling by an even factor f equals the 2x downsampling of the pixels
    f*i + f/2 - 1 and f*i + f/2, bit for bit; what the lean path relies on."""
    torch.manual_seed(0)
    decoder = MultiScaleMaskedTransformerDecoder(
        16, num_classes=5, hidden_dim=16, num_queries=6, nheads=4, dim_feedforward=32,
        dec_layers=2, pre_norm=False, mask_dim=8, enforce_input_project=False,
    ).eval()
    queries, mask_features = torch.randn(6, 1, 16), torch.randn(1, 8, 5 * factor, 7 * factor)
    with torch.no_grad():
        _, _, expected = decoder.forward_prediction_heads(queries, mask_features, (5, 7))
        resized = decoder.resized_mask_logits(queries, mask_features, (5, 7))
    assert torch.equal(decoder.attention_mask(resized), expected)
    _, embedding = decoder.query_heads(queries)
    full = torch.einsum("bqc,bchw->bqhw", embedding, mask_features)
    reference = torch.nn.functional.interpolate(full, size=(5, 7), mode="bilinear", align_corners=False)
    assert torch.equal(resized, reference.flatten(2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("batch", [1, 2])
def test_mask_product_of_channels_last_features_has_the_einsum_values(dtype, batch):
    """bfloat16 features are read in place by a matrix product per image; its values are those
    of the einsum on contiguous features. Other dtypes run the einsum on the layout given."""
    torch.manual_seed(0)
    embedding = torch.randn(batch, 7, 16).to(dtype)
    features = torch.randn(batch, 16, 9, 11).to(dtype)
    channels_last = features.contiguous(memory_format=torch.channels_last)
    layout = features if dtype == torch.bfloat16 else channels_last
    expected = torch.einsum("bqc,bchw->bqhw", embedding, layout)
    with torch.no_grad():
        assert torch.equal(mask_product(embedding, channels_last), expected)
        assert torch.equal(mask_product(embedding, layout), expected)
    # with gradients the einsum runs (the in-place product has no autograd)
    embedding.requires_grad_(True)
    logits = mask_product(embedding, channels_last)
    logits.float().sum().backward()
    assert embedding.grad is not None and torch.equal(logits.detach(), expected)


def test_cross_attention_with_the_shared_mask_equals_the_per_head_mask():
    """For one image the decoder passes the heads' shared [Q, S] mask; same result bitwise."""
    torch.manual_seed(0)
    layer = CrossAttentionLayer(16, 4).eval()
    tgt, query_pos = torch.randn(6, 1, 16), torch.randn(6, 1, 16)
    memory, pos = torch.randn(40, 1, 16), torch.randn(40, 1, 16)
    shared = torch.rand(6, 40) < 0.5
    shared[:, 0] = False  # every query attends somewhere
    with torch.no_grad():
        per_head = layer(tgt, memory, memory_mask=shared[None].repeat(4, 1, 1), pos=pos, query_pos=query_pos)
        broadcast = layer(tgt, memory, memory_mask=shared, pos=pos, query_pos=query_pos)
    assert torch.equal(per_head, broadcast)
