"""MaskFormer meta-architecture: end-to-end parity with the original implementation on the thin
fixtures (../shared/reference), published state-dict layouts, and the inference/training contract."""
import json
import pickle
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mask2former.config import get_cfg
from mask2former.layers import ShapeSpec
from mask2former.modeling.build import build_model
from mask2former.modeling.meta_arch import MaskFormer, MaskFormerHead
from mask2former.modeling.postprocessing import sem_seg_postprocess
from mask2former.modeling.precision import prepare_for_inference
from mask2former.structures import Boxes, Instances

REPO = Path(__file__).resolve().parents[1]
FIXTURES = ["thin_r50_coco_panoptic", "thin_swin_coco_instance", "thin_r50_ade20k_semantic"]
TIE_EPS = 1e-5
# The inference layout (prepare_for_inference: channels-last convolutions on the CPU) sums in another
# order: scores move by up to ~5e-5 from the original's (within the 1e-4 tolerance of raw outputs),
# so there a pixel may flip where its top two candidates are within that tolerance.
TIE_EPS_INFERENCE_LAYOUT = 1e-4


def _load_fixture_weights(model: nn.Module, model_pkl) -> None:
    with open(model_pkl, "rb") as f:
        weights = pickle.load(f)["model"]
    state = OrderedDict((k, torch.from_numpy(np.asarray(v))) for k, v in weights.items())
    state._metadata = weights._metadata  # keys are loaded as they are, whatever the versions say
    incompatible = model.load_state_dict(state, strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys


def _assert_close(name, actual, expected):
    expected = torch.from_numpy(expected)
    diff = (actual - expected).abs()
    bound = torch.maximum(torch.full_like(expected, 1e-4), 1e-3 * expected.abs())
    assert bool((diff <= bound).all()), f"{name}: max abs diff {diff.max().item():.3g}"


def _check_semantic(sem_seg, npz, where, tie_eps=TIE_EPS):
    top2 = sem_seg.topk(2, dim=0).values
    differ = sem_seg.argmax(0).numpy() != npz["sem_seg_argmax"]
    assert not (differ & ((top2[0] - top2[1]).numpy() > tie_eps)).any(), f"{where}: sem_seg argmax differs"
    np.testing.assert_allclose(sem_seg.max(0).values.numpy(), npz["sem_seg_max"], atol=1e-4, rtol=1e-3)


def _check_panoptic(model, panoptic, mask_cls, mask_prob, npz, where, tie_eps=TIE_EPS):
    seg, info = panoptic
    assert info == json.loads(npz["panoptic_segments_info"].tobytes().decode("utf-8")), where
    scores, labels = F.softmax(mask_cls, -1).max(-1)
    keep = labels.ne(mask_cls.shape[-1] - 1) & (scores > model.object_mask_threshold)
    prob = mask_prob[keep]
    # Near-ties: two kept queries within eps of each other, or a mask probability within eps of 0.5.
    ambiguous = (prob - 0.5).abs().le(tie_eps).any(0)
    if prob.shape[0] > 1:
        top2 = (scores[keep].view(-1, 1, 1) * prob).topk(2, dim=0).values
        ambiguous |= (top2[0] - top2[1]).le(tie_eps)
    differ = torch.from_numpy(seg.numpy() != npz["panoptic_seg"])
    unexplained = int((differ & ~ambiguous).sum())
    assert unexplained == 0, f"{where}: {unexplained} panoptic pixels differ away from near-ties"


def _check_instances(inst, mask_logits, npz, where, tie_eps=TIE_EPS):
    assert isinstance(inst, Instances) and isinstance(inst.pred_boxes, Boxes)
    np.testing.assert_array_equal(inst.pred_classes.numpy(), npz["instances_pred_classes"], err_msg=where)
    np.testing.assert_allclose(
        inst.scores.numpy(), npz["instances_scores"], atol=1e-4, rtol=1e-3, err_msg=where
    )
    np.testing.assert_array_equal(inst.pred_boxes.tensor.numpy(), npz["instances_pred_boxes"], err_msg=where)
    width = mask_logits.shape[-1]
    expected = np.unpackbits(npz["instances_pred_masks"], axis=-1)[..., :width].astype(bool)
    differ = torch.from_numpy(inst.pred_masks.numpy().astype(bool) != expected)
    # A mask pixel may only flip where some query's mask logit is within eps of the threshold 0.
    ambiguous = mask_logits.abs().le(tie_eps).any(0)
    assert not (differ & ~ambiguous).any(), f"{where}: instance masks differ away from near-ties"


@pytest.mark.parametrize("prepared", [False, True], ids=["as-built", "prepared-for-inference"])
@pytest.mark.parametrize("fixture", FIXTURES)
def test_end_to_end_parity_with_published_model(reference_dir, fixture, prepared):
    root = reference_dir / fixture
    cfg = get_cfg()
    cfg.merge_from_file(str(root / "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    assert isinstance(model, MaskFormer)
    _load_fixture_weights(model, root / "model.pkl")
    if prepared:  # what Predictor does: float32, convolution weights channels-last on the CPU
        prepare_for_inference(model, "float32")
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)

    raw = {}
    model.sem_seg_head.predictor.return_aux_outputs = True  # compared with the fixture's aux outputs
    model.sem_seg_head.register_forward_hook(lambda module, args, out: raw.update(out=out))
    paths = sorted(root.glob("*.npz"))
    assert len(paths) == 3
    for path in paths:
        npz, where = np.load(path), f"{fixture}/{path.stem}"
        height, width = int(npz["height"]), int(npz["width"])
        inputs = [{"image": torch.from_numpy(npz["image"]), "height": height, "width": width}]
        with torch.no_grad():
            result = model(inputs)[0]

        out = raw["out"]
        _assert_close(f"{where} pred_logits", out["pred_logits"][0], npz["pred_logits"])
        _assert_close(f"{where} pred_masks", out["pred_masks"][0], npz["pred_masks"])
        for i, aux in enumerate(out["aux_outputs"]):
            _assert_close(f"{where} aux{i}_pred_logits", aux["pred_logits"][0], npz[f"aux{i}_pred_logits"])
            _assert_close(f"{where} aux{i}_pred_masks", aux["pred_masks"][0], npz[f"aux{i}_pred_masks"])

        enabled = {
            "sem_seg": model.semantic_on, "panoptic_seg": model.panoptic_on, "instances": model.instance_on
        }
        assert set(result) == {k for k, on in enabled.items() if on}
        mask_cls = out["pred_logits"][0]
        padded = F.interpolate(out["pred_masks"], scale_factor=4, mode="bilinear", align_corners=False)[0]
        mask_logits = sem_seg_postprocess(padded, npz["image"].shape[-2:], height, width)
        eps = TIE_EPS_INFERENCE_LAYOUT if prepared else TIE_EPS
        if model.semantic_on:
            assert result["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, height, width)
            _check_semantic(result["sem_seg"], npz, where, eps)
        if model.panoptic_on:
            _check_panoptic(model, result["panoptic_seg"], mask_cls, mask_logits.sigmoid(), npz, where, eps)
        if model.instance_on:
            _check_instances(result["instances"], mask_logits, npz, where, eps)


def _manifests(reference_dir):
    """The image models' manifests (the video ones, ``ytvis*``, are covered by test_video_model)."""
    return sorted(p for p in (reference_dir / "keys").glob("*.json") if not p.stem.startswith("ytvis"))


def test_state_dict_matches_published_manifests(reference_dir):
    """Each published configuration builds a model with exactly the model-zoo keys and shapes."""
    manifests = _manifests(reference_dir)
    assert len(manifests) == 12
    for path in manifests:
        manifest = json.loads(path.read_text())
        dataset, task, backbone = path.stem.split("_", 2)
        cfg = get_cfg()
        cfg.merge_from_file(str(REPO / "configs" / dataset / task / f"{backbone}.yaml"))
        with torch.device("meta"):
            model = MaskFormer(cfg)
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert shapes == manifest["state_dict"], path.name
        assert sum(p.numel() for p in model.parameters()) == manifest["num_params"], path.name
        assert "pixel_mean" not in shapes and "pixel_std" not in shapes


class _ToyBackbone(nn.Module):
    """Stride-4 features: one conv, so outputs depend on the input image."""

    size_divisibility = 16

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=4, stride=4)

    def output_shape(self):
        return {"res2": ShapeSpec(channels=4, stride=4)}

    def forward(self, x):
        return {"res2": self.conv(x)}


class _ToyHead(nn.Module):
    """Q=2 queries over K=3 classes; query masks are fixed linear maps of the features."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.mask = nn.Conv2d(4, 2, kernel_size=1)
        self.cls = nn.Parameter(torch.tensor([[4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 4.0, 0.0]]))

    def forward(self, features):
        masks = self.mask(features["res2"])
        logits = self.cls[None].expand(masks.shape[0], -1, -1)
        return {"pred_logits": logits, "pred_masks": masks, "aux_outputs": []}


def _toy_model(**overrides):
    torch.manual_seed(0)
    kwargs = dict(
        backbone=_ToyBackbone(),
        sem_seg_head=_ToyHead(),
        num_queries=2,
        object_mask_threshold=0.5,
        overlap_threshold=0.5,
        metadata=SimpleNamespace(thing_dataset_id_to_contiguous_id={11: 0, 12: 1}),
        size_divisibility=-1,
        sem_seg_postprocess_before_inference=True,
        pixel_mean=[100.0, 110.0, 120.0],
        pixel_std=[50.0, 55.0, 60.0],
        semantic_on=True,
        panoptic_on=True,
        instance_on=True,
        test_topk_per_image=4,
    )
    kwargs.update(overrides)
    return MaskFormer(**kwargs).eval()


def test_inference_outputs_at_requested_resolution():
    model = _toy_model()
    assert model.size_divisibility == 16  # negative: the backbone's
    assert "pixel_mean" not in model.state_dict()
    images = [torch.randint(0, 256, size, dtype=torch.uint8) for size in [(3, 20, 30), (3, 24, 18)]]
    with torch.no_grad():
        results = model([{"image": images[0], "height": 40, "width": 60}, {"image": images[1]}])
    assert results[0]["sem_seg"].shape == (3, 40, 60)
    assert results[1]["sem_seg"].shape == (3, 24, 18)
    seg, info = results[0]["panoptic_seg"]
    assert seg.shape == (40, 60) and seg.dtype == torch.int32
    assert all(s["isthing"] == (s["category_id"] in (0, 1)) for s in info)
    inst = results[1]["instances"]
    assert inst.image_size == (24, 18) and inst.pred_masks.shape[1:] == (24, 18)
    assert set(inst.pred_classes.tolist()) <= {0, 1}  # panoptic model: thing classes only
    assert len(inst.pred_boxes) == len(inst.scores) == len(inst)

    # Padding is at the bottom/right with zeros after normalisation, to a multiple of 16.
    batch = model.preprocess_image([{"image": images[0]}, {"image": images[1]}])
    assert batch.tensor.shape == (2, 3, 32, 32) and batch.image_sizes == [(20, 30), (24, 18)]
    expected = (images[0].float() - model.pixel_mean) / model.pixel_std
    torch.testing.assert_close(batch.tensor[0, :, :20, :30], expected)
    assert batch.tensor[0, :, 20:].eq(0).all() and batch.tensor[1, :, :, 18:].eq(0).all()


def test_semantic_only_model_resizes_after_inference():
    model = _toy_model(panoptic_on=False, instance_on=False, sem_seg_postprocess_before_inference=False)
    with torch.no_grad():
        image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
        (result,) = model([{"image": image, "height": 10, "width": 15}])
    assert set(result) == {"sem_seg"} and result["sem_seg"].shape == (3, 10, 15)


def test_invalid_arguments_and_training_without_criterion():
    with pytest.raises(ValueError, match="sem_seg_postprocess_before_inference"):
        _toy_model(semantic_on=False, sem_seg_postprocess_before_inference=False)
    model = _toy_model().train()
    with pytest.raises(RuntimeError, match="criterion"):
        model([{"image": torch.zeros(3, 16, 16, dtype=torch.uint8)}])


def test_training_weights_losses_and_pads_targets():
    class RecordingCriterion(nn.Module):
        weight_dict = {"loss_ce": 2.0, "loss_mask": 5.0}

        def forward(self, outputs, targets):
            self.targets = targets
            return {
                "loss_ce": outputs["pred_masks"].mean() * 0 + 1.0,
                "loss_mask": torch.tensor(3.0),
                "loss_x": torch.tensor(7.0),  # not in weight_dict: dropped
            }

    criterion = RecordingCriterion()
    model = _toy_model(criterion=criterion).train()
    gt = Instances((20, 30))
    gt.gt_classes = torch.tensor([1, 2])
    gt.gt_masks = torch.ones(2, 20, 30, dtype=torch.bool)
    losses = model([{"image": torch.zeros(3, 20, 30, dtype=torch.uint8), "instances": gt}])
    assert {k: float(v.detach()) for k, v in losses.items()} == {"loss_ce": 2.0, "loss_mask": 15.0}
    (target,) = criterion.targets
    assert target["labels"].tolist() == [1, 2]
    assert target["masks"].shape == (2, 32, 32) and target["masks"].sum() == 2 * 20 * 30


def test_head_rejects_unsupported_transformer_input():
    with pytest.raises(ValueError, match="multi_scale_pixel_decoder"):
        MaskFormerHead(
            {"res2": ShapeSpec(channels=4, stride=4)},
            num_classes=3,
            pixel_decoder=nn.Identity(),
            transformer_predictor=nn.Identity(),
            transformer_in_feature="res5",
        )
