"""Semantic / panoptic / instance inference from raw decoder outputs reproduce the original
implementation's post-processed fixtures (../shared/reference), plus unit checks."""
import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mask2former.modeling.postprocessing import (
    instance_inference,
    panoptic_inference,
    sem_seg_postprocess,
    semantic_inference,
)

# COCO panoptic lists its 80 thing categories first: their contiguous ids are 0..79.
COCO_THING_CLASSES = range(80)

# fixture -> (semantic_on, panoptic_on, instance_on, object_mask_threshold, overlap_threshold),
# as in each fixture's config.yaml.
FIXTURES = {
    "thin_r50_coco_panoptic": (True, True, True, 0.25, 0.5),
    "thin_swin_coco_instance": (False, False, True, 0.8, 0.8),
    "thin_r50_ade20k_semantic": (True, False, False, 0.8, 0.8),
}
TIE_EPS = 1e-5


def _fixture_images(reference_dir, name):
    paths = sorted((reference_dir / name).glob("*.npz"))
    assert len(paths) == 3, f"expected 3 images in {reference_dir / name}"
    return [(p.stem, np.load(p)) for p in paths]


def _top2_gap(scores: torch.Tensor) -> np.ndarray:
    top2 = scores.topk(2, dim=0).values
    return (top2[0] - top2[1]).numpy()


def assert_semantic_matches(sem_seg: torch.Tensor, npz, where: str) -> None:
    """``sem_seg`` [K, H, W] agrees with the fixture's argmax/max except on near-ties."""
    max_val, argmax = sem_seg.max(0)
    differ = argmax.numpy() != npz["sem_seg_argmax"]
    assert not (differ & (_top2_gap(sem_seg) > TIE_EPS)).any(), f"{where}: sem_seg argmax differs"
    np.testing.assert_allclose(max_val.numpy(), npz["sem_seg_max"], atol=1e-4, rtol=1e-3, err_msg=where)


def assert_panoptic_matches(panoptic, npz, where: str) -> None:
    seg, info = panoptic
    assert seg.dtype == torch.int32
    assert info == json.loads(npz["panoptic_segments_info"].tobytes().decode("utf-8")), where
    differ = int((seg.numpy() != npz["panoptic_seg"]).sum())
    assert differ == 0, f"{where}: {differ} panoptic pixels differ"


def assert_instances_match(inst, npz, where: str) -> None:
    assert len(inst) == len(npz["instances_scores"]), where
    np.testing.assert_allclose(
        inst.scores.numpy(), npz["instances_scores"], atol=1e-4, rtol=1e-3, err_msg=where
    )
    np.testing.assert_array_equal(inst.pred_classes.numpy(), npz["instances_pred_classes"], err_msg=where)
    np.testing.assert_allclose(inst.pred_boxes.tensor.numpy(), npz["instances_pred_boxes"], err_msg=where)
    packed = np.packbits(inst.pred_masks.numpy().astype(bool), axis=-1)
    assert packed.shape == npz["instances_pred_masks"].shape, where
    differ = np.unpackbits(packed ^ npz["instances_pred_masks"], axis=-1).sum()
    assert differ == 0, f"{where}: {differ} instance-mask pixels differ"


@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_postprocessing_reproduces_fixtures(reference_dir, fixture):
    semantic_on, panoptic_on, instance_on, object_thr, overlap_thr = FIXTURES[fixture]
    resize_first = panoptic_on or instance_on
    for stem, npz in _fixture_images(reference_dir, fixture):
        where = f"{fixture}/{stem}"
        height, width = int(npz["height"]), int(npz["width"])
        image_size = tuple(npz["image"].shape[-2:])
        mask_cls = torch.from_numpy(npz["pred_logits"])
        mask_pred = torch.from_numpy(npz["pred_masks"])
        padded = (mask_pred.shape[-2] * 4, mask_pred.shape[-1] * 4)
        mask_pred = F.interpolate(mask_pred[None], size=padded, mode="bilinear", align_corners=False)[0]
        if resize_first:
            mask_pred = sem_seg_postprocess(mask_pred, image_size, height, width)
        if semantic_on:
            sem_seg = semantic_inference(mask_cls, mask_pred)
            if not resize_first:
                sem_seg = sem_seg_postprocess(sem_seg, image_size, height, width)
            assert sem_seg.shape == (mask_cls.shape[1] - 1, height, width)
            assert_semantic_matches(sem_seg, npz, where)
        if panoptic_on:
            panoptic = panoptic_inference(
                mask_cls, mask_pred, object_mask_threshold=object_thr, overlap_threshold=overlap_thr,
                thing_classes=COCO_THING_CLASSES,
            )
            assert_panoptic_matches(panoptic, npz, where)
        if instance_on:
            inst = instance_inference(
                mask_cls, mask_pred, test_topk_per_image=100,
                thing_classes=COCO_THING_CLASSES if panoptic_on else None,
            )
            assert inst.image_size == (height, width)
            assert_instances_match(inst, npz, where)


def test_sem_seg_postprocess_crops_padding_then_resizes():
    result = torch.zeros(2, 8, 8)
    result[:, :4, :6] = 1.0
    out = sem_seg_postprocess(result, (4, 6), 8, 12)
    assert out.shape == (2, 8, 12)
    assert torch.all(out == 1.0)


def test_instance_inference_clamps_topk_and_keeps_things():
    torch.manual_seed(0)
    mask_cls, mask_pred = torch.randn(3, 5), torch.randn(3, 6, 7)
    inst = instance_inference(mask_cls, mask_pred, test_topk_per_image=100)
    assert len(inst) == 12  # k clamped to the Q * K candidates
    class_prob = F.softmax(mask_cls, -1)[:, :-1]
    # Every (query, class) pair appears once; score = class prob * mean mask prob inside the mask.
    pairs = set()
    for score, cls, masks in zip(inst.scores, inst.pred_classes, inst.pred_masks):
        query = next(q for q in range(3) if torch.equal(masks, (mask_pred[q] > 0).float()))
        pairs.add((query, int(cls)))
        inside = mask_pred[query] > 0
        expected = class_prob[query, cls] * mask_pred[query].sigmoid()[inside].sum() / (inside.sum() + 1e-6)
        torch.testing.assert_close(score, expected)
    assert len(pairs) == 12
    things = instance_inference(mask_cls, mask_pred, test_topk_per_image=100, thing_classes=[1, 3])
    assert set(things.pred_classes.tolist()) == {1, 3} and len(things) == 6
    assert torch.all(things.pred_boxes.tensor == 0)
    top2 = instance_inference(mask_cls, mask_pred, test_topk_per_image=2)
    best = class_prob.flatten().topk(2).indices
    assert sorted(top2.pred_classes.tolist()) == sorted((best % 4).tolist())


def test_instance_inference_boxes_from_masks():
    mask_pred = -torch.ones(2, 5, 6)
    mask_pred[0, 1:3, 2:5] = 1.0
    mask_cls = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    inst = instance_inference(mask_cls, mask_pred, test_topk_per_image=2, boxes_from_masks=True)
    boxes = {int(c): b.tolist() for c, b in zip(inst.pred_classes, inst.pred_boxes.tensor)}
    assert boxes == {0: [2.0, 1.0, 5.0, 3.0], 1: [0.0, 0.0, 0.0, 0.0]}


def test_panoptic_inference_merges_stuff_and_drops_low_scores():
    # 4 queries, 3 classes (class 0 = thing, 1 and 2 = stuff) + no-object.
    mask_cls = torch.tensor(
        [[9.0, 0, 0, 0], [0, 9.0, 0, 0], [0, 9.0, 0, 0], [0, 0, 0, 9.0]]
    )
    mask_pred = -10 * torch.ones(4, 4, 4)
    mask_pred[0, :2, :2] = 10
    mask_pred[1, 2:, :] = 10
    mask_pred[2, :2, 2:] = 10
    mask_pred[3] = 10  # predicted "no object": dropped
    seg, info = panoptic_inference(
        mask_cls, mask_pred, object_mask_threshold=0.5, overlap_threshold=0.8, thing_classes=[0]
    )
    assert info == [
        {"id": 1, "isthing": True, "category_id": 0},
        {"id": 2, "isthing": False, "category_id": 1},
    ]
    assert seg[:2, :2].eq(1).all() and seg[2:].eq(2).all() and seg[:2, 2:].eq(2).all()

    empty, none = panoptic_inference(
        mask_cls, mask_pred, object_mask_threshold=0.9999, overlap_threshold=0.8, thing_classes=[0]
    )
    assert none == [] and empty.eq(0).all() and empty.dtype == torch.int32


def test_shared_mask_prob_gives_identical_results(reference_dir):
    """The meta-architecture passes one ``sigmoid`` of the full-resolution masks to all three
    tasks; each function must return exactly what it computes on its own."""
    fixture = "thin_r50_coco_panoptic"
    _, npz = _fixture_images(reference_dir, fixture)[0]
    mask_cls = torch.from_numpy(npz["pred_logits"])
    mask_pred = torch.from_numpy(npz["pred_masks"])
    mask_prob = mask_pred.sigmoid()

    assert torch.equal(semantic_inference(mask_cls, mask_pred, mask_prob=mask_prob),
                       semantic_inference(mask_cls, mask_pred))

    kwargs = dict(object_mask_threshold=0.25, overlap_threshold=0.5, thing_classes=COCO_THING_CLASSES)
    shared = panoptic_inference(mask_cls, mask_pred, mask_prob=mask_prob, **kwargs)
    alone = panoptic_inference(mask_cls, mask_pred, **kwargs)
    assert torch.equal(shared[0], alone[0]) and shared[1] == alone[1] and len(alone[1]) > 0

    shared = instance_inference(mask_cls, mask_pred, test_topk_per_image=100, mask_prob=mask_prob)
    alone = instance_inference(mask_cls, mask_pred, test_topk_per_image=100)
    for field in ("pred_masks", "scores", "pred_classes"):
        assert torch.equal(getattr(shared, field), getattr(alone, field)), field
    # several of the 100 (query, class) candidates share a query: the per-query path is exercised
    queries = alone.pred_masks.flatten(1).unique(dim=0).shape[0]
    assert queries < len(alone)
