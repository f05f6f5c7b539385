"""The project's Panoptic Quality against the official ``panopticapi.evaluation.pq_compute`` on the
real COCO panoptic samples: ground truth as prediction and seeded perturbations of it."""
import json
import logging

import numpy as np
import pytest
from PIL import Image

import mask2former
from mask2former.data.panoptic_format import id2rgb, rgb2id
from mask2former.engine.evaluation import build_evaluator
from mask2former.evaluation import COCOPanopticEvaluator, pq_compute
from mask2former.evaluation.official_pq import pq_compute_official

panopticapi_evaluation = pytest.importorskip(
    "panopticapi.evaluation", reason="install with: pip install --no-deps panopticapi-lite"
)


@pytest.fixture(scope="module")
def coco_panoptic(datasets_root):
    coco = datasets_root / "coco"
    gt_json = coco / "annotations" / "panoptic_val2017.json"
    with open(gt_json) as f:
        gt = json.load(f)
    return gt_json, coco / "panoptic_val2017", gt


def _perturb(pan: np.ndarray, segments: list, categories: dict, rng: np.random.Generator, kind: str):
    """A predicted (id map, segments_info) made from the gt of one image by one perturbation."""
    pan = pan.copy()
    segments = [{"id": s["id"], "category_id": s["category_id"]} for s in segments]
    same_kind = {
        flag: [c for c, info in categories.items() if info["isthing"] == flag] for flag in (0, 1)
    }
    if kind == "shift":  # IoUs below 1, some below 0.5
        pan = np.roll(pan, shift=(int(rng.integers(5, 40)), int(rng.integers(5, 40))), axis=(0, 1))
    elif kind == "drop_and_relabel":  # false negatives, and FP + FN pairs
        for s in segments:
            r = rng.random()
            if r < 0.25:
                pan[pan == s["id"]] = 0
            elif r < 0.5:
                s["category_id"] = int(rng.choice(same_kind[categories[s["category_id"]]["isthing"]]))
        present = set(np.unique(pan).tolist())
        segments = [s for s in segments if s["id"] in present]
    elif kind == "split_and_spurious":  # halves of segments; new segments over void and crowd
        next_id = int(pan.max()) + 1
        for s in segments[:]:
            ys, xs = np.nonzero(pan == s["id"])
            if len(xs) > 50 and rng.random() < 0.5:
                cut = np.quantile(xs, rng.uniform(0.2, 0.8))
                half = (pan == s["id"]) & (np.arange(pan.shape[1])[None, :] > cut)
                pan[half] = next_id
                segments.append({"id": next_id, "category_id": s["category_id"]})
                next_id += 1
        h, w = pan.shape
        for _ in range(3):
            y, x = int(rng.integers(0, h - 40)), int(rng.integers(0, w - 40))
            pan[y : y + int(rng.integers(10, 40)), x : x + int(rng.integers(10, 40))] = next_id
            segments.append({"id": next_id, "category_id": int(rng.choice(list(categories)))})
            next_id += 1
        present = set(np.unique(pan).tolist())
        segments = [s for s in segments if s["id"] in present]
    return pan, segments


def _write_predictions(tmp_path, gt, gt_folder, kind, seed):
    rng = np.random.default_rng(seed)
    categories = {c["id"]: c for c in gt["categories"]}
    pred_folder = tmp_path / f"pred_{kind}_{seed}"
    pred_folder.mkdir(parents=True)
    annotations = []
    for ann in gt["annotations"]:
        pan = rgb2id(np.asarray(Image.open(gt_folder / ann["file_name"]).convert("RGB")))
        if kind == "gt":
            segments = [{"id": s["id"], "category_id": s["category_id"]} for s in ann["segments_info"]]
        else:
            pan, segments = _perturb(pan, ann["segments_info"], categories, rng, kind)
        Image.fromarray(id2rgb(pan)).save(pred_folder / ann["file_name"])
        annotations.append({"image_id": ann["image_id"], "file_name": ann["file_name"],
                            "segments_info": segments})
    pred_json = tmp_path / f"pred_{kind}_{seed}.json"
    pred_json.write_text(json.dumps(dict(gt, annotations=annotations)))
    return pred_json, pred_folder


def _assert_same(ours: dict, official: dict, tol=1e-9):
    for name in ("All", "Things", "Stuff"):
        assert ours[name]["n"] == official[name]["n"]
        for metric in ("pq", "sq", "rq"):
            assert ours[name][metric] == pytest.approx(official[name][metric], abs=tol), (name, metric)
    assert ours["per_class"].keys() == official["per_class"].keys()
    for category_id, values in official["per_class"].items():
        for metric in ("pq", "sq", "rq"):
            assert ours["per_class"][category_id][metric] == pytest.approx(values[metric], abs=tol)


@pytest.mark.parametrize(
    "kind,seed", [("gt", 0), ("shift", 1), ("drop_and_relabel", 2), ("drop_and_relabel", 3),
                  ("split_and_spurious", 4), ("split_and_spurious", 5)]
)
def test_pq_equals_panopticapi(coco_panoptic, tmp_path, kind, seed):
    gt_json, gt_folder, gt = coco_panoptic
    pred_json, pred_folder = _write_predictions(tmp_path, gt, gt_folder, kind, seed)
    official = panopticapi_evaluation.pq_compute(str(gt_json), str(pred_json), str(gt_folder), str(pred_folder))
    ours = pq_compute(str(gt_json), str(pred_json), str(gt_folder), str(pred_folder))
    _assert_same(ours, official)
    if kind == "gt":
        assert ours["All"]["pq"] == 1.0 and ours["All"]["n"] == official["All"]["n"] > 0
    else:  # the perturbation changed the result, so the comparison is not of trivial values
        assert 0.0 < ours["All"]["pq"] < 0.95
    # The evaluator's selectable official path gives the same numbers and statistics.
    wrapped = pq_compute_official("panopticapi", str(gt_json), str(pred_json), str(gt_folder), str(pred_folder))
    _assert_same(wrapped, official, tol=0.0)
    for category_id, stat in ours["stat"].pq_per_cat.items():
        other = wrapped["stat"][category_id]
        assert (stat.tp, stat.fp, stat.fn) == (other.tp, other.fp, other.fn)
        assert stat.iou == pytest.approx(other.iou, abs=1e-9)


def _evaluate(coco_panoptic, tmp_path, caplog, **kwargs):
    gt_json, gt_folder, gt = coco_panoptic
    pred_json, pred_folder = _write_predictions(tmp_path, gt, gt_folder, "split_and_spurious", 7)
    with open(pred_json) as f:
        predictions = json.load(f)["annotations"]
    evaluator = COCOPanopticEvaluator(panoptic_json=str(gt_json), panoptic_root=str(gt_folder), **kwargs)
    evaluator.reset()
    for ann in predictions:
        pan = rgb2id(np.asarray(Image.open(pred_folder / ann["file_name"]).convert("RGB")))
        evaluator.process([{"image_id": ann["image_id"], "file_name": ann["file_name"]}],
                          [{"panoptic_seg": (pan, ann["segments_info"])}])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mask2former.evaluation.panoptic_evaluation"):
        results = evaluator.evaluate()["panoptic_seg"]
    return results, caplog.text


def test_evaluator_default_and_panopticapi_agree_and_log_which_ran(coco_panoptic, tmp_path, caplog):
    default, log = _evaluate(coco_panoptic, tmp_path / "a", caplog)
    assert "computed by mask2former.evaluation.panoptic_quality" in log
    assert "panopticapi is installed too: TEST.PQ_IMPLEMENTATION panopticapi" in log
    official, log = _evaluate(coco_panoptic, tmp_path / "b", caplog, pq_implementation="panopticapi")
    assert "computed by panopticapi.evaluation" in log
    assert default.keys() == official.keys()
    for key, value in default.items():
        assert value == pytest.approx(official[key], abs=1e-7, nan_ok=True), key


def test_config_selects_the_pq_implementation(tmp_path):
    cfg = mask2former.get_cfg()
    assert cfg.TEST.PQ_IMPLEMENTATION == "mask2former"
    cfg.merge_from_list(["TEST.PQ_IMPLEMENTATION", "panopticapi", "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "True",
                         "MODEL.MASK_FORMER.TEST.INSTANCE_ON", "False", "MODEL.MASK_FORMER.TEST.SEMANTIC_ON", "False"])
    (evaluator,) = build_evaluator(cfg, "coco_2017_val_panoptic", str(tmp_path))._evaluators
    assert isinstance(evaluator, COCOPanopticEvaluator) and evaluator._pq_implementation == "panopticapi"


def test_unknown_pq_implementation_raises():
    with pytest.raises(ValueError, match="pq_implementation"):
        COCOPanopticEvaluator(panoptic_json="x.json", panoptic_root="x", pq_implementation="pqapi")
