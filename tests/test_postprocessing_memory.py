"""Post-processing on the kept queries only, in bounded chunks, and the compact output format:
same results as the full-resolution path (and as the original implementation's fixtures), for
any chunk size, at large output sizes, with both output formats read by the evaluators."""
import contextlib
import io
import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.nn import functional as F

from mask2former.evaluation import COCOEvaluator, SemSegEvaluator
from mask2former.modeling import mask_upsampling
from mask2former.modeling.mask_upsampling import MaskLogits, resize_bilinear, resize_bilinear_rows
from mask2former.modeling.postprocessing import mask_classification_inference, sem_seg_postprocess
from mask2former.structures import instance_masks, semantic_labels
from test_postprocessing import (
    COCO_THING_CLASSES,
    FIXTURES,
    assert_instances_match,
    assert_panoptic_matches,
    assert_semantic_matches,
)

CHUNKS = (None, 1, 3 * 2**12, 2**20)  # unchunked, one query / row per chunk, a few, larger


def _inputs(reference_dir, fixture, index=0):
    path = sorted((reference_dir / fixture).glob("*.npz"))[index]
    npz = np.load(path)
    low = torch.from_numpy(npz["pred_masks"])
    return npz, torch.from_numpy(npz["pred_logits"]), low, (low.shape[-2] * 4, low.shape[-1] * 4)


def _kwargs(fixture, **overrides):
    semantic_on, panoptic_on, instance_on, object_thr, overlap_thr = FIXTURES[fixture]
    kwargs = dict(
        semantic_on=semantic_on, panoptic_on=panoptic_on, instance_on=instance_on,
        sem_seg_postprocess_before_inference=panoptic_on or instance_on,
        object_mask_threshold=object_thr, overlap_threshold=overlap_thr,
        thing_classes=COCO_THING_CLASSES if panoptic_on else None, test_topk_per_image=100,
    )
    kwargs.update(overrides)
    return kwargs


def _infer(npz, mask_cls, low, padded, kwargs, scale=1, **options):
    height, width = int(npz["height"]) * scale, int(npz["width"]) * scale
    image_size = tuple(npz["image"].shape[-2:])
    return mask_classification_inference(
        mask_cls, low, image_size, height, width, padded_size=padded, **kwargs, **options
    )


def _assert_same(a, b, where):
    """Same outputs; semantic scores to float rounding (band resize), argmax equal off near-ties."""
    assert set(a) == set(b), where
    if "sem_seg" in a:
        if a["sem_seg"].dim() == 3:
            torch.testing.assert_close(a["sem_seg"], b["sem_seg"], atol=1e-5, rtol=1e-4, msg=where)
            top2 = b["sem_seg"].topk(2, dim=0).values
            differ = semantic_labels(a["sem_seg"]) != semantic_labels(b["sem_seg"])
            assert not (differ & (top2[0] - top2[1] > 1e-5)).any(), where
        else:
            assert torch.equal(a["sem_seg"], b["sem_seg"]), where
    if "panoptic_seg" in a:
        assert torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0]), where
        assert a["panoptic_seg"][1] == b["panoptic_seg"][1], where
    if "instances" in a:
        x, y = a["instances"], b["instances"]
        assert np.array_equal(instance_masks(x), instance_masks(y)), where
        assert torch.equal(x.pred_classes, y.pred_classes), where
        torch.testing.assert_close(x.scores, y.scores, atol=1e-6, rtol=1e-5, msg=where)


@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_chunked_postprocessing_reproduces_fixtures(reference_dir, fixture):
    """Chunked post-processing gives the original implementation's outputs on every fixture image,
    and on the first image every chunk size (down to one query / one row at a time) gives the same
    outputs as no chunking."""
    kwargs = _kwargs(fixture)
    for index in range(3):
        npz, mask_cls, low, padded = _inputs(reference_dir, fixture, index)
        out = _infer(npz, mask_cls, low, padded, kwargs)
        where = f"{fixture}/{index}"
        if "sem_seg" in out:
            assert_semantic_matches(out["sem_seg"], npz, where)
        if "panoptic_seg" in out:
            assert_panoptic_matches(out["panoptic_seg"], npz, where)
        if "instances" in out:
            assert_instances_match(out["instances"], npz, where)
        if index == 0:
            unchunked = _infer(npz, mask_cls, low, padded, kwargs, chunk_bytes=None)
            _assert_same(out, unchunked, where)
            for chunk_bytes in CHUNKS[1:]:
                chunked = _infer(npz, mask_cls, low, padded, kwargs, chunk_bytes=chunk_bytes)
                _assert_same(chunked, unchunked, f"{where} chunk_bytes={chunk_bytes}")


def test_large_output_matches_full_resolution_path(reference_dir):
    """Output 3x the original size (about 1440 x 1920): the lazily upsampled, chunked path equals
    post-processing of all queries fully upsampled with F.interpolate (panoptic and instances bit
    for bit; semantic labels, compact, equal off near-ties)."""
    fixture = "thin_r50_coco_panoptic"
    npz, mask_cls, low, padded = _inputs(reference_dir, fixture)
    kwargs = _kwargs(fixture, test_topk_per_image=10, compact_outputs=True)
    height, width = int(npz["height"]) * 3, int(npz["width"]) * 3
    full = F.interpolate(low[None], size=padded, mode="bilinear", align_corners=False)[0]
    full = sem_seg_postprocess(full, tuple(npz["image"].shape[-2:]), height, width)
    reference = mask_classification_inference(
        mask_cls, full, (height, width), height, width, padded_size=None, **kwargs, chunk_bytes=None
    )
    del full
    chunked = _infer(npz, mask_cls, low, padded, kwargs, scale=3, chunk_bytes=2**22)
    assert chunked["sem_seg"].shape == (height, width) and len(chunked["panoptic_seg"][1]) > 0
    sem, ref_sem = chunked.pop("sem_seg"), reference.pop("sem_seg")
    torch.testing.assert_close(chunked.pop("sem_seg_score"), reference.pop("sem_seg_score"), atol=1e-5, rtol=1e-4)
    assert (sem != ref_sem).float().mean() < 1e-4
    _assert_same(chunked, reference, "3x output")


def test_band_resize_agrees_with_interpolate():
    """Row bands of the bilinear resize agree with F.interpolate to float rounding; channel
    subsets of :func:`resize_bilinear` agree bit for bit (3 channels included)."""
    torch.manual_seed(0)
    x = torch.randn(5, 37, 53) * 10
    for size in ((37, 53), (100, 160), (20, 30), (111, 7)):
        ref = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
        bands = torch.cat([resize_bilinear_rows(x, size, (s, min(s + 7, size[0]))) for s in range(0, size[0], 7)], 1)
        # a few units in the last place of the input's magnitude (rounding order, not formula)
        torch.testing.assert_close(bands, ref, atol=4 * torch.finfo(x.dtype).eps * x.abs().max(), rtol=0)
        for n in (1, 2, 3, 4):
            assert torch.equal(resize_bilinear(x[:n], size), ref[:n]), (size, n)


@pytest.fixture
def count_upsampling(monkeypatch):
    """Records the channel count and size of every resize done by the mask upsampling (calls of
    ``resize_bilinear``, whether it runs the compiled kernel or F.interpolate)."""
    calls = []
    original = mask_upsampling.resize_bilinear
    depth = [0]

    def counting(x, size):
        if depth[0] == 0:  # not the 2 + 1 split of 3 channels
            calls.append((x.shape[0], tuple(size)))
        depth[0] += 1
        try:
            return original(x, size)
        finally:
            depth[0] -= 1

    monkeypatch.setattr(mask_upsampling, "resize_bilinear", counting)
    return calls


def test_only_kept_queries_are_upsampled(reference_dir, count_upsampling):
    fixture = "thin_r50_coco_panoptic"
    npz, mask_cls, low, padded = _inputs(reference_dir, fixture)
    output = (int(npz["height"]), int(npz["width"]))
    panoptic_only = _kwargs(fixture, semantic_on=False, instance_on=False)

    # No query above the threshold: nothing is upsampled at all.
    seg, info = _infer(npz, mask_cls, low, padded, dict(panoptic_only, object_mask_threshold=0.9999))["panoptic_seg"]
    assert count_upsampling == [] and info == [] and seg.eq(0).all()

    # Panoptic: only the kept queries (threshold: the median score), at the padded then the
    # output size.
    probs = F.softmax(mask_cls, -1)
    scores, labels = probs.max(-1)
    threshold = float(scores.median())
    kept = int((labels.ne(133) & (scores > threshold)).sum())
    assert 0 < kept < len(mask_cls)
    _infer(npz, mask_cls, low, padded, dict(panoptic_only, object_mask_threshold=threshold), chunk_bytes=None)
    assert count_upsampling == [(kept, padded), (kept, output)]

    # Instances: each distinct top-k query once, although several (query, class) pairs share one.
    count_upsampling.clear()
    top = probs[:, :-1].flatten().topk(30).indices // 133
    instance_only = dict(panoptic_only, panoptic_on=False, instance_on=True, test_topk_per_image=30)
    inst = _infer(npz, mask_cls, low, padded, instance_only, chunk_bytes=None)["instances"]
    distinct = len(top.unique())
    assert distinct < len(inst) == 30
    assert count_upsampling == [(distinct, padded), (distinct, output)]


@pytest.mark.parametrize("fixture", ["thin_r50_coco_panoptic", "thin_r50_ade20k_semantic", "thin_swin_coco_instance"])
def test_compact_outputs_equal_default(reference_dir, fixture):
    """Compact semantic output is exactly the argmax/max of the default scores; compact instance
    masks decode to exactly the default masks; scores equal to float rounding."""
    npz, mask_cls, low, padded = _inputs(reference_dir, fixture)
    kwargs = _kwargs(fixture)
    default = _infer(npz, mask_cls, low, padded, kwargs)
    for chunk_bytes in (None, 1, 2**20):
        compact = _infer(npz, mask_cls, low, padded, kwargs, compact_outputs=True, chunk_bytes=chunk_bytes)
        if "sem_seg" in default:
            labels, scores = compact["sem_seg"], compact["sem_seg_score"]
            assert labels.dtype == torch.int32 and labels.shape == default["sem_seg"].shape[1:]
            best, argmax = default["sem_seg"].max(0)
            assert torch.equal(labels.long(), argmax) and torch.equal(scores, best)
        if "panoptic_seg" in default:
            assert torch.equal(compact["panoptic_seg"][0], default["panoptic_seg"][0])
        if "instances" in default:
            inst, ref = compact["instances"], default["instances"]
            assert not inst.has("pred_masks") and len(inst.pred_masks_rle) == len(ref) > 0
            decoded = mask_util.decode(inst.pred_masks_rle).transpose(2, 0, 1)
            assert np.array_equal(decoded, ref.pred_masks.numpy().astype(np.uint8))
            # mask sums reduced over other chunk shapes: equal to float rounding (threads split them)
            torch.testing.assert_close(inst.scores, ref.scores, atol=1e-7, rtol=1e-6)
            assert torch.equal(inst.pred_classes, ref.pred_classes)


def test_evaluators_accept_both_formats(reference_dir, datasets_root, tmp_path):
    """COCO mask AP (thin instance model on the 3 COCO samples) and ADE20K mIoU (thin semantic
    model on the 3 ADE20K samples) are the same from the default and the compact outputs."""
    instances_json = datasets_root / "coco" / "annotations" / "instances_val2017.json"
    ade_gt = datasets_root / "ADEChallengeData2016" / "annotations" / "validation"
    if not instances_json.exists() or not ade_gt.is_dir():
        pytest.skip(f"real samples not found under {datasets_root}")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(instances_json))
    thing_ids = sorted(coco.getCatIds())
    contiguous = {dataset_id: i for i, dataset_id in enumerate(thing_ids)}

    def load_ade_gt(path, dtype):  # 0 = "other" (ignored), 1..150 -> 0..149
        raw = np.asarray(Image.open(path)).astype(np.int64)
        return np.where(raw == 0, 255, raw - 1).astype(dtype)

    metrics = {}
    for compact in (False, True):
        coco_eval = COCOEvaluator(
            output_dir=str(tmp_path / f"coco{compact}"), json_file=str(instances_json), tasks=("segm",),
            thing_dataset_id_to_contiguous_id=contiguous, thing_classes=[str(i) for i in thing_ids],
        )
        sem_eval = SemSegEvaluator(
            distributed=False, stuff_classes=[f"class{i}" for i in range(150)], sem_seg_loading_fn=load_ade_gt,
            input_file_to_gt_file={f"{p.stem}.jpg": str(p) for p in ade_gt.glob("*.png")},
        )
        coco_eval.reset()
        sem_eval.reset()
        for index in range(3):
            npz, mask_cls, low, padded = _inputs(reference_dir, "thin_swin_coco_instance", index)
            image_id = int(sorted((reference_dir / "thin_swin_coco_instance").glob("*.npz"))[index].stem)
            out = _infer(npz, mask_cls, low, padded, _kwargs("thin_swin_coco_instance"), compact_outputs=compact)
            coco_eval.process([{"image_id": image_id}], [out])
            path = sorted((reference_dir / "thin_r50_ade20k_semantic").glob("*.npz"))[index]
            npz, mask_cls, low, padded = _inputs(reference_dir, "thin_r50_ade20k_semantic", index)
            out = _infer(npz, mask_cls, low, padded, _kwargs("thin_r50_ade20k_semantic"), compact_outputs=compact)
            sem_eval.process([{"file_name": f"{path.stem}.jpg"}], [out])
        with contextlib.redirect_stdout(io.StringIO()):
            metrics[compact] = (coco_eval.evaluate(), sem_eval.evaluate())
    (coco_default, sem_default), (coco_compact, sem_compact) = metrics[False], metrics[True]
    assert json.dumps(coco_default, sort_keys=True) == json.dumps(coco_compact, sort_keys=True)
    assert json.dumps(sem_default, sort_keys=True) == json.dumps(sem_compact, sort_keys=True)
    assert coco_default["segm"]["AP"] >= 0 and np.isfinite(sem_default["sem_seg"]["mIoU"])


def test_mask_logits_checks_shape():
    with pytest.raises(ValueError, match=r"pred_masks must be \[Q, H, W\]"):
        MaskLogits(torch.zeros(2, 3), None, (2, 3), (2, 3))


def test_model_compact_outputs_and_consumers(reference_dir):
    """``MODEL.MASK_FORMER.TEST.COMPACT_OUTPUTS`` on the thin COCO panoptic model: compact keys and
    dtypes, the fixture's panoptic map, and the demo visualisation of the compact instances equal
    to that of the default ones; test-time augmentation refuses the compact format."""
    from test_meta_arch import _load_fixture_weights

    from mask2former.config import get_cfg
    from mask2former.modeling.build import build_model
    from mask2former.modeling.test_time_augmentation import SemanticSegmentorWithTTA
    from mask2former.utils.visualizer import Visualizer

    root = reference_dir / "thin_r50_coco_panoptic"
    cfg = get_cfg()
    cfg.merge_from_file(str(root / "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    _load_fixture_weights(model, root / "model.pkl")
    npz = np.load(sorted(root.glob("*.npz"))[0])
    inputs = [{"image": torch.from_numpy(npz["image"]), "height": int(npz["height"]), "width": int(npz["width"])}]
    with torch.no_grad():
        default = model(inputs)[0]
        model.compact_outputs = True
        compact = model(inputs)[0]
    assert set(compact) == {"sem_seg", "sem_seg_score", "panoptic_seg", "instances"}
    assert compact["sem_seg"].dtype == torch.int32 and compact["sem_seg"].shape == npz["sem_seg_argmax"].shape
    assert torch.equal(compact["sem_seg"].long(), default["sem_seg"].argmax(0))
    assert_panoptic_matches(compact["panoptic_seg"], npz, "compact")
    image = np.ascontiguousarray(npz["image"].transpose(1, 2, 0))
    image = np.asarray(Image.fromarray(image).resize((int(npz["width"]), int(npz["height"]))))
    drawn = [Visualizer(image).draw_instance_predictions(out["instances"], 0.0) for out in (default, compact)]
    assert np.array_equal(drawn[0], drawn[1])
    cfg.MODEL.MASK_FORMER.TEST.COMPACT_OUTPUTS = True
    assert build_model(cfg).compact_outputs
    cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.FLIP = (320,), False
    tta = SemanticSegmentorWithTTA(cfg, model)
    with pytest.raises(ValueError, match="COMPACT_OUTPUTS"):
        tta(inputs)


@pytest.mark.parametrize("fixture", ["thin_r50_coco_panoptic", "thin_r50_ade20k_semantic"])
def test_bfloat16_semantic_product_is_rounding_of_float32(reference_dir, fixture):
    """The class product of a bfloat16 network (semantic_product_dtype) rounds the probabilities
    and the sums to bfloat16 (8-bit mantissa): scores move by at most a few bfloat16 steps, the
    argmax only where the two best classes are that close; any chunking gives the same result."""
    npz, mask_cls, low, padded = _inputs(reference_dir, fixture)
    kwargs = _kwargs(fixture, panoptic_on=False, instance_on=False)
    exact = _infer(npz, mask_cls, low, padded, kwargs)["sem_seg"]
    results = [
        _infer(npz, mask_cls, low, padded, kwargs, chunk_bytes=c, semantic_product_dtype=torch.bfloat16)["sem_seg"]
        for c in (None, 2**20)
    ]
    assert all(r.dtype == torch.float32 for r in results)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    rounded = results[0]
    step = 2.0 ** -8 * exact.abs().amax()
    assert float((rounded - exact).abs().max()) <= 2 * step
    top2 = exact.topk(2, dim=0).values
    differ = rounded.argmax(0) != exact.argmax(0)
    assert not bool((differ & (top2[0] - top2[1] > 4 * step)).any())
    assert float(differ.double().mean()) < 0.01
