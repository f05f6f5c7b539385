"""Mask2Former for video instance segmentation: end-to-end parity with the original
``mask2former_video`` on the thin YouTube-VIS 2019 fixture (../shared/reference), the 3-D position
embedding, and the video meta-architecture's contract."""
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from mask2former.config import get_cfg
from mask2former.layers.position_encoding import PositionEmbeddingSine
from mask2former.modeling.build import build_model
from mask2former.video import PositionEmbeddingSine3D, VideoMaskFormer, VideoMultiScaleMaskedTransformerDecoder

FIXTURE = "thin_r50_ytvis2019_video"
TIE_EPS = 1e-5


def _assert_close(name, actual, expected):
    """The fixtures' tolerance: 1e-4 absolute, 1e-3 relative above 1."""
    expected = torch.from_numpy(np.asarray(expected))
    diff = (actual - expected).abs()
    bound = torch.maximum(torch.full_like(expected, 1e-4), 1e-3 * expected.abs())
    assert bool((diff <= bound).all()), f"{name}: max abs diff {diff.max().item():.3g}"


@pytest.fixture(scope="module")
def fixture_model(reference_dir):
    root = reference_dir / FIXTURE
    cfg = get_cfg()
    cfg.merge_from_file(str(root / "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    with open(root / "model.pkl", "rb") as f:
        weights = pickle.load(f)["model"]
    state = OrderedDict((k, torch.from_numpy(np.asarray(v))) for k, v in weights.items())
    state._metadata = weights._metadata
    incompatible = model.load_state_dict(state, strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    return model, np.load(root / "pan_000000039769.npz")


def test_end_to_end_parity_with_published_video_model(fixture_model):
    model, npz = fixture_model
    assert isinstance(model, VideoMaskFormer)
    assert isinstance(model.sem_seg_head.predictor, VideoMultiScaleMaskedTransformerDecoder)
    raw, attn_masks = {}, []
    model.sem_seg_head.predictor.return_aux_outputs = True  # compared with the fixture's aux outputs
    hooks = [model.sem_seg_head.register_forward_hook(lambda m, a, out: raw.update(out=out))]
    for layer in model.sem_seg_head.predictor.transformer_cross_attention_layers:
        hooks.append(layer.register_forward_hook(
            lambda m, a, kw, out: attn_masks.append(kw["memory_mask"]), with_kwargs=True
        ))
    height, width = int(npz["height"]), int(npz["width"])
    video = {"image": [torch.from_numpy(f) for f in npz["frames"]], "height": height, "width": width}
    with torch.no_grad():
        result = model([video])
    for hook in hooks:
        hook.remove()

    # Attention masks first: a flipped bit would move every later output.
    num_frames = npz["frames"].shape[0]
    for level, mask in enumerate(attn_masks):
        mask = mask.reshape(-1, *mask.shape[-2:])  # one video: the heads' shared [Q, S] mask
        assert bool((mask == mask[:1]).all()), "attention mask differs between heads"
        expected = np.unpackbits(npz[f"attn_mask_{level}"], axis=-1, count=mask.shape[-1]).astype(bool)
        assert mask.shape[-1] % num_frames == 0
        np.testing.assert_array_equal(mask[0].numpy(), expected, err_msg=f"attn_mask_{level}")

    out = raw["out"]
    _assert_close("pred_logits", out["pred_logits"][0], npz["pred_logits"])
    _assert_close("pred_masks", out["pred_masks"][0], npz["pred_masks"])
    assert len(out["aux_outputs"]) == 3
    for i, aux in enumerate(out["aux_outputs"]):
        _assert_close(f"aux{i}_pred_logits", aux["pred_logits"][0], npz[f"aux{i}_pred_logits"])
        _assert_close(f"aux{i}_pred_masks_frame0", aux["pred_masks"][0][:, 0], npz[f"aux{i}_pred_masks_frame0"])

    # Post-processed output, in the original's format.
    assert set(result) >= {"image_size", "pred_scores", "pred_labels", "pred_masks"}
    assert tuple(result["image_size"]) == tuple(npz["video_image_size"]) == (height, width)
    order = np.argsort(-np.asarray(result["pred_scores"]))
    expected_order = np.argsort(-npz["video_pred_scores"])
    np.testing.assert_allclose(np.asarray(result["pred_scores"])[order], npz["video_pred_scores"][expected_order],
                               atol=1e-5)
    pairs = {(q, l) for q, l in zip(result["pred_query_indices"], result["pred_labels"])}
    assert pairs == set(zip(npz["video_pred_query_indices"].tolist(), npz["video_pred_labels"].tolist()))

    # Masks: identical except where the final logit is within TIE_EPS of 0.
    from torch.nn import functional as F

    expected_masks = np.unpackbits(npz["video_pred_masks"], axis=-1, count=width).astype(bool)
    frame_h, frame_w = npz["frames"].shape[-2:]
    for i, j in zip(order, expected_order):
        mask = result["pred_masks"][i]
        assert mask.dtype == torch.bool and mask.shape == (num_frames, height, width)
        logits = F.interpolate(out["pred_masks"][0][result["pred_query_indices"][i]][None], scale_factor=4,
                               mode="bilinear", align_corners=False)[..., :frame_h, :frame_w]
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)[0]
        differ = mask.numpy() != expected_masks[j]
        assert not (differ & (logits.abs() > TIE_EPS).numpy()).any(), f"mask {j} differs away from near-ties"


def test_position_embedding_3d_adds_normalised_time_to_the_image_embedding():
    x = torch.zeros(2, 3, 5, 4, 6)
    pos = PositionEmbeddingSine3D(8, normalize=True)(x)
    assert pos.shape == (2, 3, 16, 4, 6) and pos.dtype == torch.float32
    image = PositionEmbeddingSine(8, normalize=True)(x[:, 0])
    # Frame t (1-based) at 2*pi*t/T; channel pair (2i, 2i+1) = sin/cos of it / 10000^(2i/16).
    for t in range(3):
        z = 2 * np.pi * (t + 1) / (3 + 1e-6)
        dim = 10000 ** (2 * (np.arange(16) // 2) / 16)
        time = np.where(np.arange(16) % 2 == 0, np.sin(z / dim), np.cos(z / dim)).astype(np.float32)
        expected = image + torch.from_numpy(time)[None, :, None, None]
        torch.testing.assert_close(pos[:, t], expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="B, T, C, H, W"):
        PositionEmbeddingSine3D(8, normalize=True)(x[:, 0])


def test_video_model_outputs_depend_on_all_frames(fixture_model):
    """Queries attend over the whole clip: changing the last frame changes frame 0's masks."""
    model, npz = fixture_model
    frames = [torch.from_numpy(f) for f in npz["frames"][:3]]
    outputs = []
    hook = model.sem_seg_head.register_forward_hook(lambda m, a, out: outputs.append(out))
    with torch.no_grad():
        model([{"image": frames}])
        model([{"image": frames[:2] + [frames[2].flip(-1)]}])
        with pytest.raises(ValueError, match="one video per call"):
            model([{"image": frames}, {"image": frames}])
    hook.remove()
    first, second = (o["pred_masks"][0, :, 0] for o in outputs)
    assert first.shape == (20, 80, 112)
    assert (first - second).abs().max() > 1e-3


def test_training_losses_are_finite_and_cover_every_layer(fixture_model):
    from mask2former.structures import Instances

    model, npz = fixture_model
    frames = [torch.from_numpy(f) for f in npz["frames"][:2]]
    h, w = frames[0].shape[-2:]
    per_frame = []
    for t in range(2):
        inst = Instances((h, w))
        masks = torch.zeros(2, h, w, dtype=torch.bool)
        masks[0, 50:150, 60 + 10 * t: 200 + 10 * t] = True
        masks[1, 200:300, 250:400] = t == 0  # the second instance only appears in frame 0
        inst.gt_masks = masks
        inst.gt_classes = torch.tensor([3, 7])
        inst.gt_ids = torch.tensor([0, 1 if t == 0 else -1])
        per_frame.append(inst)
    model.train()
    try:
        losses = model([{"image": frames, "instances": per_frame}] * 2)
    finally:
        model.eval()
    assert set(losses) == set(model.criterion.weight_dict)
    assert len(losses) == 3 * 4
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grad = model.sem_seg_head.predictor.query_feat.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_video_matcher_assigns_one_query_per_instance_over_the_whole_clip():
    from mask2former.modeling.matcher import HungarianMatcher
    from mask2former.video import VideoHungarianMatcher

    left, right = torch.zeros(16, 16), torch.zeros(16, 16)
    left[:, :8], right[:, 8:] = 1, 1
    targets = [{"labels": torch.tensor([0, 0]), "masks": torch.stack([torch.stack([left, left]),
                                                                        torch.stack([right, right])])}]
    logit = lambda m: (m * 2 - 1) * 20  # noqa: E731  (confident mask logits)
    # q0 follows the left instance in frame 0 and the right one in frame 1; q1, q2 follow one each.
    pred_masks = torch.stack([torch.stack([logit(left), logit(right)]), torch.stack([logit(left)] * 2),
                              torch.stack([logit(right)] * 2)])[None]
    outputs = {"pred_logits": torch.zeros(1, 3, 2), "pred_masks": pred_masks}
    torch.manual_seed(0)
    (queries, instances), = VideoHungarianMatcher(num_points=256)(outputs, targets)
    assert dict(zip(instances.tolist(), queries.tolist())) == {0: 1, 1: 2}

    # With one frame, the video matcher is the image matcher.
    frame0 = {"pred_logits": outputs["pred_logits"], "pred_masks": pred_masks[:, :, :1]}
    image_outputs = {"pred_logits": outputs["pred_logits"], "pred_masks": pred_masks[:, :, 0]}
    torch.manual_seed(1)
    video = VideoHungarianMatcher(num_points=256)(frame0, [{"labels": targets[0]["labels"],
                                                             "masks": targets[0]["masks"][:, :1]}])
    torch.manual_seed(1)
    image = HungarianMatcher(num_points=256)(image_outputs, [{"labels": targets[0]["labels"],
                                                               "masks": targets[0]["masks"][:, 0]}])
    assert [(a.tolist(), b.tolist()) for a, b in video] == [(a.tolist(), b.tolist()) for a, b in image]


def test_video_criterion_with_one_frame_equals_the_image_criterion():
    from mask2former.modeling.criterion import SetCriterion
    from mask2former.video import VideoSetCriterion

    cfg = get_cfg()
    cfg.merge_from_file("configs/youtubevis_2019/R50.yaml")
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 64
    video, image = VideoSetCriterion(cfg), SetCriterion(cfg)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 41, generator=generator)
    masks = torch.randn(2, 5, 1, 12, 12, generator=generator)
    targets = [
        {"labels": torch.tensor(labels), "masks": (torch.rand(len(labels), 1, 48, 48, generator=generator) > 0.5).float()}
        for labels in ([3, 9], [1])
    ]
    torch.manual_seed(0)
    video_losses = video({"pred_logits": logits, "pred_masks": masks}, targets)
    torch.manual_seed(0)
    image_losses = image({"pred_logits": logits, "pred_masks": masks[:, :, 0]},
                         [{"labels": t["labels"], "masks": t["masks"][:, 0]} for t in targets])
    assert video_losses.keys() == image_losses.keys()
    for name in video_losses:
        torch.testing.assert_close(video_losses[name], image_losses[name], msg=name)


@pytest.mark.parametrize("stride4_size", [(32, 48), (30, 46)])
def test_video_decoder_lean_eval_path_returns_identical_outputs(stride4_size):
    """In eval mode without auxiliary outputs, the earlier layers' masks are computed only where
    the attention masks read them; the returned mask tubes and logits are the same."""
    torch.manual_seed(0)
    decoder = VideoMultiScaleMaskedTransformerDecoder(
        16, num_frames=2, num_classes=5, hidden_dim=16, num_queries=6, nheads=4, dim_feedforward=32,
        dec_layers=4, pre_norm=False, mask_dim=8, enforce_input_project=False,
    ).eval()
    h, w = stride4_size
    frames = 3
    features = [torch.randn(frames, 16, -(-h // f), -(-w // f)) for f in (8, 4, 2)]
    mask_features = torch.randn(frames, 8, h, w)
    with torch.no_grad():
        lean = decoder(features, mask_features)
        decoder.return_aux_outputs = True
        full = decoder(features, mask_features)
    assert "aux_outputs" not in lean and len(full["aux_outputs"]) == 4
    assert lean["pred_masks"].shape == (1, 6, frames, h, w)
    assert torch.equal(lean["pred_logits"], full["pred_logits"])
    assert torch.equal(lean["pred_masks"], full["pred_masks"])
