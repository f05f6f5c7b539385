"""Evaluators: PQ (COCO panoptic definition), COCO instance AP, semantic mIoU, inference loop."""
import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage

from mask2former.data.catalog import MetadataCatalog
from mask2former.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    SemSegEvaluator,
    inference_on_dataset,
    pq_compute,
)
from mask2former.data.panoptic_format import id2rgb, rgb2id

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "datasets"
REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
COCO_ROOT = DATASETS / "coco"
PANOPTIC_JSON = COCO_ROOT / "annotations" / "panoptic_val2017.json"
PANOPTIC_ROOT = COCO_ROOT / "panoptic_val2017"
INSTANCES_JSON = COCO_ROOT / "annotations" / "instances_val2017.json"
ADE_ROOT = DATASETS / "ADEChallengeData2016"


def _require(*paths: Path) -> None:
    for path in paths:
        if not path.exists():
            pytest.skip(f"real sample data not found: {path} (expected ../shared beside the repo)")


# --------------------------------------------------------------------------------------------
# PQ on a hand-made image
# --------------------------------------------------------------------------------------------
# Categories: 1 person (thing), 2 car (thing), 3 sky (stuff), 4 road (stuff, absent everywhere).
# 10 x 12 image. Ground truth (segment id / category):
#   rows 0-3, all cols ............ id 30, sky                     48 px
#   rows 4-9, cols 0-3 ............ id 11, person                  24 px
#   rows 4-9, cols 4-5 ............ VOID (0)                       12 px
#   rows 4-9, cols 6-9 ............ id 12, person, iscrowd=1       24 px
#   rows 4-9, cols 10-11 .......... id 21, car                     12 px
# Prediction:
#   P1 sky    rows 0-2 all cols (36) + rows 4-5 cols 4-5 (4, on VOID)      area 40
#   P2 person rows 4-9 cols 0-2 (18) + rows 6-9 col 4 (4, on VOID)         area 22
#   P3 person rows 4-9 cols 7-9 (18, all on the person crowd region)       area 18
#   P4 person rows 4-9 cols 10-11 (12, all on the car)                     area 12
#   P5 car    rows 4-9 col 6 (6, on the *person* crowd region)             area  6
#   row 3, col 3 of rows 4-9 and col 5 of rows 6-9 are unassigned (0).
# Matching:
#   sky:    IoU(30, P1) = 36 / (40 + 48 - 36 - 4 void) = 36/48 = 0.75 > 0.5  -> TP
#   person: IoU(11, P2) = 18 / (22 + 24 - 18 - 4 void) = 18/24 = 0.75       -> TP
#           P3 unmatched, (0 void + 18 person-crowd) / 18 = 1 > 0.5         -> ignored
#           P4 unmatched (its class differs from the car it covers), 0 / 12 -> FP person
#   car:    gt 21 unmatched -> FN car; P5 unmatched, crowd of *another* class does not count,
#           0 / 6 -> FP car
# Per class (PQ = sum IoU / (TP + FP/2 + FN/2), SQ = sum IoU / TP, RQ = TP / (TP + FP/2 + FN/2)):
#   person: TP 1, FP 1, FN 0 -> PQ 0.75/1.5 = 0.5,  SQ 0.75, RQ 1/1.5 = 2/3
#   car:    TP 0, FP 1, FN 1 -> PQ 0,              SQ 0,    RQ 0
#   sky:    TP 1              -> PQ 0.75,          SQ 0.75, RQ 1
#   road:   nothing -> not counted (n excludes it), per-class zeros
# Things (n=2): PQ 0.25, SQ 0.375, RQ 1/3. Stuff (n=1): PQ 0.75, SQ 0.75, RQ 1.
# All (n=3): PQ 1.25/3, SQ 1.5/3 = 0.5, RQ (2/3 + 1)/3 = 5/9.
TOY_CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 2, "name": "car", "isthing": 1},
    {"id": 3, "name": "sky", "isthing": 0},
    {"id": 4, "name": "road", "isthing": 0},
]


def _toy_gt():
    gt = np.zeros((10, 12), dtype=np.int64)
    gt[0:4, :] = 30
    gt[4:10, 0:4] = 11
    gt[4:10, 6:10] = 12
    gt[4:10, 10:12] = 21
    segments = [
        {"id": 30, "category_id": 3, "iscrowd": 0, "area": 48},
        {"id": 11, "category_id": 1, "iscrowd": 0, "area": 24},
        {"id": 12, "category_id": 1, "iscrowd": 1, "area": 24},
        {"id": 21, "category_id": 2, "iscrowd": 0, "area": 12},
    ]
    return gt, segments


def _toy_pred():
    pred = np.zeros((10, 12), dtype=np.int64)
    pred[0:3, :] = 1
    pred[4:6, 4:6] = 1
    pred[4:10, 0:3] = 2
    pred[6:10, 4] = 2
    pred[4:10, 7:10] = 3
    pred[4:10, 10:12] = 4
    pred[4:10, 6] = 5
    # dataset category ids
    segments = [
        {"id": 1, "category_id": 3},
        {"id": 2, "category_id": 1},
        {"id": 3, "category_id": 1},
        {"id": 4, "category_id": 1},
        {"id": 5, "category_id": 2},
    ]
    return pred, segments


def _write_png(path: Path, id_map: np.ndarray) -> None:
    Image.fromarray(id2rgb(id_map)).save(path)


def _write_toy_gt(root: Path) -> Path:
    gt, gt_segments = _toy_gt()
    (root / "gt").mkdir()
    _write_png(root / "gt" / "toy.png", gt)
    gt_json = {
        "images": [{"id": 7, "file_name": "toy.jpg", "height": 10, "width": 12}],
        "annotations": [{"image_id": 7, "file_name": "toy.png", "segments_info": gt_segments}],
        "categories": TOY_CATEGORIES,
    }
    (root / "gt.json").write_text(json.dumps(gt_json))
    return root / "gt.json"


def _check_toy_results(res: dict) -> None:
    assert res["All"]["n"] == 3 and res["Things"]["n"] == 2 and res["Stuff"]["n"] == 1
    assert res["All"]["pq"] == pytest.approx(1.25 / 3)
    assert res["All"]["sq"] == pytest.approx(0.5)
    assert res["All"]["rq"] == pytest.approx(5 / 9)
    assert res["Things"]["pq"] == pytest.approx(0.25)
    assert res["Things"]["sq"] == pytest.approx(0.375)
    assert res["Things"]["rq"] == pytest.approx(1 / 3)
    assert res["Stuff"]["pq"] == pytest.approx(0.75)
    assert res["Stuff"]["sq"] == pytest.approx(0.75)
    assert res["Stuff"]["rq"] == pytest.approx(1.0)
    per_class = res["per_class"]
    assert per_class[1] == pytest.approx({"pq": 0.5, "sq": 0.75, "rq": 2 / 3})
    assert per_class[2] == pytest.approx({"pq": 0.0, "sq": 0.0, "rq": 0.0})
    assert per_class[3] == pytest.approx({"pq": 0.75, "sq": 0.75, "rq": 1.0})
    assert per_class[4] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    stat = res["stat"]
    assert (stat[1].tp, stat[1].fp, stat[1].fn) == (1, 1, 0)
    assert (stat[2].tp, stat[2].fp, stat[2].fn) == (0, 1, 1)
    assert (stat[3].tp, stat[3].fp, stat[3].fn) == (1, 0, 0)
    assert stat[1].iou == pytest.approx(0.75) and stat[3].iou == pytest.approx(0.75)


def test_rgb2id_id2rgb_roundtrip():
    ids = np.array([[0, 1, 255], [256, 65536 + 2, 256**3 - 1]])
    rgb = id2rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert rgb[1, 1].tolist() == [2, 0, 1]
    np.testing.assert_array_equal(rgb2id(rgb), ids)
    with pytest.raises(ValueError, match="Panoptic ids"):
        id2rgb(np.array([256**3]))


def test_pq_hand_made_case(tmp_path):
    gt_json_file = _write_toy_gt(tmp_path)
    pred, pred_segments = _toy_pred()
    (tmp_path / "pred").mkdir()
    _write_png(tmp_path / "pred" / "toy.png", pred)
    pred_ann = {"image_id": 7, "file_name": "toy.png", "segments_info": pred_segments}
    pred_json = {"annotations": [pred_ann]}
    (tmp_path / "pred.json").write_text(json.dumps(pred_json))
    # Default folders: the json paths without ".json" (panopticapi convention).
    _check_toy_results(pq_compute(str(gt_json_file), str(tmp_path / "pred.json")))


def test_pq_prediction_sanity_checks(tmp_path):
    gt_json_file = _write_toy_gt(tmp_path)
    pred, pred_segments = _toy_pred()
    (tmp_path / "pred").mkdir()
    _write_png(tmp_path / "pred" / "toy.png", pred)

    def run(segments):
        ann = {"image_id": 7, "file_name": "toy.png", "segments_info": segments}
        (tmp_path / "pred.json").write_text(json.dumps({"annotations": [ann]}))
        return pq_compute(str(gt_json_file), str(tmp_path / "pred.json"))

    with pytest.raises(KeyError, match="present in the PNG and not in the JSON"):
        run(pred_segments[:-1])
    with pytest.raises(KeyError, match="present in the JSON and not in the PNG"):
        run(pred_segments + [{"id": 99, "category_id": 1}])
    with pytest.raises(KeyError, match="unknown category_id 5"):
        run(pred_segments[:-1] + [{"id": 5, "category_id": 5}])
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(KeyError, match="No prediction for the image with ID 7"):
        pq_compute(str(gt_json_file), str(tmp_path / "pred.json"))


def test_panoptic_evaluator_hand_made_case(tmp_path, caplog):
    gt_json_file = _write_toy_gt(tmp_path)
    pred, pred_segments = _toy_pred()
    # Model-style output: contiguous ids (person 0, car 1, sky 2, road 3) plus "isthing".
    to_contiguous = {1: 0, 2: 1, 3: 2, 4: 3}
    model_segments = [
        {"id": s["id"], "category_id": to_contiguous[s["category_id"]], "isthing": s["category_id"] < 3}
        for s in pred_segments
    ]
    evaluator = COCOPanopticEvaluator(
        output_dir=str(tmp_path / "out"),
        panoptic_json=str(gt_json_file),
        panoptic_root=str(tmp_path / "gt"),
        thing_dataset_id_to_contiguous_id={1: 0, 2: 1},
        stuff_dataset_id_to_contiguous_id=to_contiguous,
    )
    evaluator.reset()
    evaluator.process(
        [{"image_id": 7, "file_name": "/images/toy.jpg"}],
        [{"panoptic_seg": (torch.from_numpy(pred).int(), model_segments)}],
    )
    with caplog.at_level(logging.INFO, logger="mask2former.evaluation.panoptic_evaluation"):
        results = evaluator.evaluate()["panoptic_seg"]
    assert "Panoptic Evaluation Results" in caplog.text and "person" in caplog.text
    assert results["PQ"] == pytest.approx(100 * 1.25 / 3)
    assert results["SQ"] == pytest.approx(50.0)
    assert results["RQ"] == pytest.approx(500 / 9)
    assert results["PQ_th"] == pytest.approx(25.0)
    assert results["PQ_st"] == pytest.approx(75.0)
    assert results["PQ-person"] == pytest.approx(50.0)
    assert results["RQ-person"] == pytest.approx(200 / 3)
    assert results["PQ-car"] == 0.0
    assert results["SQ-sky"] == pytest.approx(75.0)
    assert math.isnan(results["PQ-road"])

    # The written files are the COCO panoptic result format and give the same PQ.
    written = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert written["categories"] == TOY_CATEGORIES
    assert written["annotations"] == [
        {"image_id": 7, "file_name": "toy.png", "segments_info": pred_segments}
    ]
    png = np.asarray(Image.open(tmp_path / "out" / "predictions" / "toy.png"))
    np.testing.assert_array_equal(rgb2id(png), pred)
    out = tmp_path / "out"
    _check_toy_results(pq_compute(str(gt_json_file), str(out / "predictions.json"), str(tmp_path / "gt")))


def test_panoptic_evaluator_label_divisor_output(tmp_path):
    """Outputs without segments_info: ``class * label_divisor + instance``, -1 = VOID."""
    gt_json_file = _write_toy_gt(tmp_path)
    pred, pred_segments = _toy_pred()
    to_contiguous = {1: 0, 2: 1, 3: 2, 4: 3}
    label_map = np.full(pred.shape, -1, dtype=np.int64)
    for s in pred_segments:
        label_map[pred == s["id"]] = to_contiguous[s["category_id"]] * 1000 + s["id"]
    evaluator = COCOPanopticEvaluator(
        panoptic_json=str(gt_json_file),
        panoptic_root=str(tmp_path / "gt"),
        thing_dataset_id_to_contiguous_id={1: 0, 2: 1},
        stuff_dataset_id_to_contiguous_id=to_contiguous,
        label_divisor=1000,
    )
    evaluator.reset()
    evaluator.process(
        [{"image_id": 7, "file_name": "toy.jpg"}],
        [{"panoptic_seg": (torch.from_numpy(label_map), None)}],
    )
    results = evaluator.evaluate()["panoptic_seg"]
    assert results["PQ"] == pytest.approx(100 * 1.25 / 3)
    assert results["PQ-person"] == pytest.approx(50.0)


def test_panoptic_evaluator_errors(tmp_path):
    with pytest.raises(ValueError, match="'panoptic_json'"):
        COCOPanopticEvaluator(panoptic_root=str(tmp_path))
    gt_json_file = _write_toy_gt(tmp_path)
    evaluator = COCOPanopticEvaluator(
        panoptic_json=str(gt_json_file),
        panoptic_root=str(tmp_path / "gt"),
        thing_dataset_id_to_contiguous_id={1: 0, 2: 1},
        stuff_dataset_id_to_contiguous_id={3: 2, 4: 3},
    )
    pred, _ = _toy_pred()
    segments = [{"id": 1, "category_id": 7, "isthing": True}]
    with pytest.raises(KeyError, match="contiguous category_id 7"):
        evaluator.process(
            [{"image_id": 7, "file_name": "toy.jpg"}],
            [{"panoptic_seg": (torch.from_numpy(pred), segments)}],
        )


# --------------------------------------------------------------------------------------------
# PQ on the real COCO panoptic samples, checked against a literal re-computation
# --------------------------------------------------------------------------------------------
def _literal_pq(gt_json: dict, gt_root: Path, predictions: dict) -> dict:
    """PQ following the COCO panoptic definition literally, one boolean mask per segment.

    ``predictions``: image_id -> (id map [H, W], segments [{"id", "category_id"}] in dataset ids).
    Returns ``{category_id: (sum IoU, TP, FP, FN)}``.
    """
    stats = {}

    def add(cat, iou=0.0, tp=0, fp=0, fn=0):
        s = stats.get(cat, (0.0, 0, 0, 0))
        stats[cat] = (s[0] + iou, s[1] + tp, s[2] + fp, s[3] + fn)

    for ann in gt_json["annotations"]:
        gt = rgb2id(np.asarray(Image.open(gt_root / ann["file_name"])))
        pred, pred_segments = predictions[ann["image_id"]]
        void = gt == 0
        gt_masks = {s["id"]: gt == s["id"] for s in ann["segments_info"]}
        pred_masks = {s["id"]: pred == s["id"] for s in pred_segments}
        matched_pred = set()
        for g in ann["segments_info"]:
            if g["iscrowd"]:
                continue
            match = None
            for p in pred_segments:
                if p["category_id"] != g["category_id"]:
                    continue
                gm, pm = gt_masks[g["id"]], pred_masks[p["id"]]
                iou = (gm & pm).sum() / ((gm | pm).sum() - (pm & void).sum())
                if iou > 0.5:
                    match = (p["id"], iou)
            if match is None:
                add(g["category_id"], fn=1)
            else:
                matched_pred.add(match[0])
                add(g["category_id"], iou=match[1], tp=1)
        for p in pred_segments:
            if p["id"] in matched_pred:
                continue
            crowd = np.zeros_like(void)
            for g in ann["segments_info"]:
                if g["iscrowd"] and g["category_id"] == p["category_id"]:
                    crowd |= gt_masks[g["id"]]
            pm = pred_masks[p["id"]]
            if ((pm & (void | crowd)).sum()) / pm.sum() > 0.5:
                continue
            add(p["category_id"], fp=1)
    return stats


def _literal_averages(stats: dict, categories: list) -> dict:
    out = {}
    for name, kind in (("PQ", None), ("PQ_th", 1), ("PQ_st", 0)):
        pq, sq, rq = [], [], []
        for c in categories:
            if kind is not None and c["isthing"] != kind or c["id"] not in stats:
                continue
            iou, tp, fp, fn = stats[c["id"]]
            pq.append(iou / (tp + fp / 2 + fn / 2))
            sq.append(iou / tp if tp else 0.0)
            rq.append(tp / (tp + fp / 2 + fn / 2))
        suffix = name[2:]
        out["PQ" + suffix] = 100 * float(np.mean(pq))
        out["SQ" + suffix] = 100 * float(np.mean(sq))
        out["RQ" + suffix] = 100 * float(np.mean(rq))
    return out


@pytest.fixture(scope="module")
def coco_panoptic():
    _require(PANOPTIC_JSON, PANOPTIC_ROOT)
    gt_json = json.loads(PANOPTIC_JSON.read_text())
    categories = gt_json["categories"]
    # Mask2Former's COCO panoptic metadata: contiguous id = index in the category list.
    thing_map = {c["id"]: i for i, c in enumerate(categories) if c["isthing"]}
    stuff_map = {c["id"]: i for i, c in enumerate(categories)}
    return SimpleNamespace(
        json=gt_json, categories=categories, thing_map=thing_map, stuff_map=stuff_map
    )


def _run_panoptic(coco_panoptic, predictions: dict, **kwargs) -> dict:
    """Feed ``predictions`` (image_id -> (id map, dataset-id segments)) as model outputs."""
    evaluator = COCOPanopticEvaluator(**kwargs)
    evaluator.reset()
    for image in coco_panoptic.json["images"]:
        pred, segments = predictions[image["id"]]
        model_segments = [
            {
                "id": s["id"],
                "category_id": coco_panoptic.stuff_map[s["category_id"]],
                "isthing": s["category_id"] in coco_panoptic.thing_map,
            }
            for s in segments
        ]
        evaluator.process(
            [{"image_id": image["id"], "file_name": str(COCO_ROOT / "val2017" / image["file_name"])}],
            [{"panoptic_seg": (torch.from_numpy(pred.astype(np.int32)), model_segments)}],
        )
    return evaluator.evaluate()["panoptic_seg"]


def _gt_as_prediction(ann: dict):
    """Ground truth relabelled with fresh ids 1..N, crowd regions predicted as plain segments."""
    gt = rgb2id(np.asarray(Image.open(PANOPTIC_ROOT / ann["file_name"])))
    pred = np.zeros_like(gt)
    segments = []
    for new_id, s in enumerate(ann["segments_info"], start=1):
        pred[gt == s["id"]] = new_id
        segments.append({"id": new_id, "category_id": s["category_id"]})
    return pred, segments


def test_panoptic_real_prediction_equals_gt(coco_panoptic, tmp_path):
    predictions = {a["image_id"]: _gt_as_prediction(a) for a in coco_panoptic.json["annotations"]}
    MetadataCatalog.get("_test_evaluation_coco_panoptic").set(
        panoptic_json=str(PANOPTIC_JSON),
        panoptic_root=str(PANOPTIC_ROOT),
        thing_dataset_id_to_contiguous_id=coco_panoptic.thing_map,
        stuff_dataset_id_to_contiguous_id=coco_panoptic.stuff_map,
    )
    try:
        results = _run_panoptic(
            coco_panoptic,
            predictions,
            dataset_name="_test_evaluation_coco_panoptic",
            output_dir=str(tmp_path),
        )
    finally:
        MetadataCatalog.remove("_test_evaluation_coco_panoptic")
    for metric in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"):
        assert results[metric] == pytest.approx(100.0), metric
    present = {s["category_id"] for a in coco_panoptic.json["annotations"] for s in a["segments_info"]}
    for c in coco_panoptic.categories:
        if c["id"] in present:
            assert results[f"PQ-{c['name']}"] == pytest.approx(100.0), c["name"]
        else:
            assert math.isnan(results[f"PQ-{c['name']}"]), c["name"]
    assert len(list((tmp_path / "predictions").glob("*.png"))) == 3


def _perturbed_predictions(gt_json: dict) -> dict:
    """Per image: the gt with two things eroded (a little / a lot), the smallest segment removed,
    the largest stuff segment's class swapped and a spurious "dog" square added."""
    names = {c["name"]: c["id"] for c in gt_json["categories"]}
    thing_ids = {c["id"] for c in gt_json["categories"] if c["isthing"]}
    predictions = {}
    for ann in gt_json["annotations"]:
        pred, segments = _gt_as_prediction(ann)
        infos = ann["segments_info"]
        non_crowd = [i for i, s in enumerate(infos) if not s["iscrowd"]]
        things = sorted(
            (i for i in non_crowd if infos[i]["category_id"] in thing_ids),
            key=lambda i: -infos[i]["area"],
        )
        for index, iterations in ((things[0], 3), (things[1], 25)):
            mask = pred == segments[index]["id"]
            pred[mask & ~ndimage.binary_erosion(mask, iterations=iterations)] = 0
        # remove the smallest non-crowd segment
        smallest = min(non_crowd, key=lambda i: infos[i]["area"])
        pred[pred == segments[smallest]["id"]] = 0
        segments[smallest] = None
        # swap the class of the largest stuff segment
        stuff = max(
            (i for i in non_crowd if infos[i]["category_id"] not in thing_ids),
            key=lambda i: infos[i]["area"],
        )
        segments[stuff]["category_id"] = names["wall-other-merged"]
        # a spurious thing prediction over the bottom-left corner
        spurious = len(segments) + 1
        pred[-20:, :20] = spurious
        segments.append({"id": spurious, "category_id": names["dog"]})
        present = set(np.unique(pred).tolist())
        kept = [s for s in segments if s is not None and s["id"] in present]
        predictions[ann["image_id"]] = (pred, kept)
    return predictions


def test_panoptic_real_perturbed_matches_literal_definition(coco_panoptic):
    predictions = _perturbed_predictions(coco_panoptic.json)
    results = _run_panoptic(
        coco_panoptic,
        predictions,
        panoptic_json=str(PANOPTIC_JSON),
        panoptic_root=str(PANOPTIC_ROOT),
        thing_dataset_id_to_contiguous_id=coco_panoptic.thing_map,
        stuff_dataset_id_to_contiguous_id=coco_panoptic.stuff_map,
    )
    stats = _literal_pq(coco_panoptic.json, PANOPTIC_ROOT, predictions)
    expected = _literal_averages(stats, coco_panoptic.categories)
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, abs=1e-9), key
    assert 20 < results["PQ"] < 95  # the perturbations matter
    for c in coco_panoptic.categories:
        if c["id"] in stats:
            iou, tp, fp, fn = stats[c["id"]]
            expected_pq = 100 * iou / (tp + fp / 2 + fn / 2)
            assert results[f"PQ-{c['name']}"] == pytest.approx(expected_pq, abs=1e-9), c["name"]


def test_panoptic_real_model_outputs_match_literal_definition(coco_panoptic):
    fixture = REFERENCE / "thin_r50_coco_panoptic"
    _require(fixture)
    contiguous_to_dataset = {v: k for k, v in coco_panoptic.stuff_map.items()}
    predictions = {}
    for image in coco_panoptic.json["images"]:
        data = np.load(fixture / f"{image['id']:012d}.npz")
        segments = json.loads(bytes(data["panoptic_segments_info"]).decode("utf-8"))
        predictions[image["id"]] = (
            data["panoptic_seg"].astype(np.int64),
            [{"id": s["id"], "category_id": contiguous_to_dataset[s["category_id"]]} for s in segments],
        )
    results = _run_panoptic(
        coco_panoptic,
        predictions,
        panoptic_json=str(PANOPTIC_JSON),
        panoptic_root=str(PANOPTIC_ROOT),
        thing_dataset_id_to_contiguous_id=coco_panoptic.thing_map,
        stuff_dataset_id_to_contiguous_id=coco_panoptic.stuff_map,
    )
    stats = _literal_pq(coco_panoptic.json, PANOPTIC_ROOT, predictions)
    expected = _literal_averages(stats, coco_panoptic.categories)
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, abs=1e-9), key


# --------------------------------------------------------------------------------------------
# Instance AP
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco_instances():
    _require(INSTANCES_JSON)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(INSTANCES_JSON))
    cats = coco.loadCats(coco.getCatIds())
    thing_map = {c["id"]: i for i, c in enumerate(cats)}
    return SimpleNamespace(coco=coco, thing_map=thing_map, thing_classes=[c["name"] for c in cats])


def _direct_cocoeval(coco: COCO, results_file: Path, iou_type: str) -> np.ndarray:
    results = json.loads(results_file.read_text())
    if iou_type == "segm":
        for r in results:
            r.pop("bbox")
    coco_eval = COCOeval(coco, coco.loadRes(results), iou_type)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval.stats


def _instance_outputs(coco_instances, perturb: bool):
    coco, thing_map = coco_instances.coco, coco_instances.thing_map
    rng = np.random.default_rng(0)
    batches = []
    for image_id in sorted(coco.getImgIds()):
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)) if not a["iscrowd"]]
        masks = np.stack([coco.annToMask(a).astype(bool) for a in anns])
        classes = np.array([thing_map[a["category_id"]] for a in anns])
        scores = np.linspace(0.9, 0.5, len(anns))
        if perturb:
            keep = rng.random(len(anns)) > 0.2
            masks, classes, scores = masks[keep], classes[keep], rng.random(keep.sum())
            masks[::3] = ndimage.binary_erosion(masks[::3], iterations=2, structure=np.ones((1, 3, 3)))
            classes[1::5] = (classes[1::5] + 1) % 80
        instances = SimpleNamespace(
            pred_masks=torch.from_numpy(masks).float(),
            scores=torch.from_numpy(scores).float(),
            pred_classes=torch.from_numpy(classes),
            pred_boxes=torch.zeros(len(masks), 4),
        )
        batches.append(([{"image_id": image_id}], [{"instances": instances}]))
    return batches


def _run_coco_evaluator(coco_instances, batches, output_dir) -> dict:
    evaluator = COCOEvaluator(
        output_dir=str(output_dir),
        json_file=str(INSTANCES_JSON),
        thing_dataset_id_to_contiguous_id=coco_instances.thing_map,
        thing_classes=coco_instances.thing_classes,
    )
    evaluator.reset()
    for inputs, outputs in batches:
        evaluator.process(inputs, outputs)
    return evaluator.evaluate()


def test_instance_ap_gt_masks_are_perfect(coco_instances, tmp_path):
    results = _run_coco_evaluator(coco_instances, _instance_outputs(coco_instances, False), tmp_path)
    # pycocotools marks "no match" with gt id 0, and this sample's first person annotation has
    # id 0: its (perfect) detection counts as a false positive, so only "person" stays below 100.
    present = {a["category_id"] for a in coco_instances.coco.dataset["annotations"]}
    for name, category_id in zip(coco_instances.thing_classes, coco_instances.thing_map):
        if category_id in present and name != "person":
            assert results["segm"][f"AP-{name}"] == pytest.approx(100.0), name
    assert 90 < results["segm"]["AP-person"] < 100
    written = json.loads((tmp_path / "coco_instances_results.json").read_text())
    coco = coco_instances.coco
    first = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=min(coco.getImgIds()))) if not a["iscrowd"]][0]
    mask = coco.annToMask(first)
    ys, xs = np.nonzero(mask)
    result = written[0]
    assert result["category_id"] == first["category_id"]  # dataset id, not contiguous
    assert result["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert isinstance(result["segmentation"]["counts"], str)


def test_instance_ap_equals_direct_cocoeval(coco_instances, tmp_path):
    results = _run_coco_evaluator(coco_instances, _instance_outputs(coco_instances, True), tmp_path)
    results_file = tmp_path / "coco_instances_results.json"
    for task in ("segm", "bbox"):
        stats = _direct_cocoeval(coco_instances.coco, results_file, task)
        for i, metric in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl")):
            expected = stats[i] * 100 if stats[i] >= 0 else float("nan")
            assert results[task][metric] == pytest.approx(expected, nan_ok=True), (task, metric)
    assert 30 < results["segm"]["AP"] < 95


def test_instance_ap_model_outputs_equal_direct_cocoeval(coco_instances, tmp_path):
    fixture = REFERENCE / "thin_swin_coco_instance"
    _require(fixture)
    batches = []
    for image_id in sorted(coco_instances.coco.getImgIds()):
        data = np.load(fixture / f"{image_id:012d}.npz")
        width = int(data["width"])
        masks = np.unpackbits(data["instances_pred_masks"], axis=-1)[..., :width].astype(bool)
        instances = SimpleNamespace(
            pred_masks=torch.from_numpy(masks),
            scores=torch.from_numpy(data["instances_scores"]),
            pred_classes=torch.from_numpy(data["instances_pred_classes"]),
        )
        batches.append(([{"image_id": image_id}], [{"instances": instances}]))
    results = _run_coco_evaluator(coco_instances, batches, tmp_path)
    stats = _direct_cocoeval(coco_instances.coco, tmp_path / "coco_instances_results.json", "segm")
    assert results["segm"]["AP"] == pytest.approx(stats[0] * 100)
    assert results["segm"]["AP50"] == pytest.approx(stats[1] * 100)


def test_instance_evaluator_errors(coco_instances):
    with pytest.raises(ValueError, match="Unsupported tasks"):
        COCOEvaluator(tasks=("keypoints",), json_file=str(INSTANCES_JSON))
    with pytest.raises(ValueError, match="'json_file'"):
        COCOEvaluator()
    evaluator = COCOEvaluator(json_file=str(INSTANCES_JSON), thing_dataset_id_to_contiguous_id={1: 0})
    bad = SimpleNamespace(
        pred_masks=torch.ones(1, 4, 4), scores=torch.ones(1), pred_classes=torch.tensor([5])
    )
    with pytest.raises(KeyError, match="class 5"):
        evaluator.process([{"image_id": 1}], [{"instances": bad}])


# --------------------------------------------------------------------------------------------
# Semantic segmentation
# --------------------------------------------------------------------------------------------
def _sem_seg_evaluator(**kwargs) -> SemSegEvaluator:
    return SemSegEvaluator(
        distributed=False,
        stuff_classes=["a", "b", "c", "d"],
        sem_seg_loading_fn=lambda path, dtype: np.array(SEM_SEG_GT[path], dtype=dtype),
        **kwargs,
    )


# gt (255 = ignore) and prediction, 3 x 4; class d (3) never occurs in the gt but is predicted once.
SEM_SEG_GT = {"img": [[0, 0, 1, 1], [0, 0, 1, 2], [255, 255, 2, 2]]}
SEM_SEG_PRED = np.array([[0, 1, 1, 1], [0, 0, 2, 2], [3, 1, 2, 3]])
# Valid gt pixels: 10 (two 255 ignored, whatever is predicted there).
#   class a: gt 4 px, predicted a on 3 of them; predicted a elsewhere: 0  -> IoU 3/4, ACC 3/4
#   class b: gt 3 px (0,2) (0,3) (1,2); pred b at (0,1) (0,2) (0,3) (2,1 ignored) -> TP 2,
#            pred-on-valid 3 -> IoU 2/(3+3-2) = 1/2, ACC 2/3
#   class c: gt 3 px (1,3) (2,2) (2,3); pred c at (1,2) (1,3) (2,2) -> TP 2, pred 3
#            -> IoU 2/4 = 1/2, ACC 2/3  ((2,3) predicted d)
#   class d: absent from gt -> IoU/ACC NaN, not averaged (its FP pixel still lowers c's ACC)
# mIoU = (3/4 + 1/2 + 1/2)/3 = 7/12; fwIoU = (4*3/4 + 3*1/2 + 3*1/2)/10 = 0.6
# mACC = (3/4 + 2/3 + 2/3)/3 = 25/36; pACC = (3 + 2 + 2)/10 = 0.7


def test_sem_seg_hand_made_case(tmp_path):
    evaluator = _sem_seg_evaluator(output_dir=str(tmp_path), input_file_to_gt_file={"img.jpg": "img"})
    evaluator.reset()
    evaluator.process([{"file_name": "img.jpg"}], [{"sem_seg": torch.from_numpy(SEM_SEG_PRED)}])
    res = evaluator.evaluate()["sem_seg"]
    assert res["mIoU"] == pytest.approx(100 * 7 / 12)
    assert res["fwIoU"] == pytest.approx(60.0)
    assert res["mACC"] == pytest.approx(100 * 25 / 36)
    assert res["pACC"] == pytest.approx(70.0)
    assert res["IoU-a"] == pytest.approx(75.0) and res["ACC-b"] == pytest.approx(200 / 3)
    assert math.isnan(res["IoU-d"]) and math.isnan(res["ACC-d"])
    predictions = json.loads((tmp_path / "sem_seg_predictions.json").read_text())
    assert sorted(p["category_id"] for p in predictions) == [0, 1, 2, 3]
    assert torch.load(tmp_path / "sem_seg_evaluation.pth")["mIoU"] == pytest.approx(100 * 7 / 12)

    # Scores [K, H, W] give the same result through argmax; the gt path may come with the input.
    scores = torch.nn.functional.one_hot(torch.from_numpy(SEM_SEG_PRED), 4).permute(2, 0, 1).float()
    evaluator = _sem_seg_evaluator()
    evaluator.reset()
    evaluator.process([{"file_name": "x.jpg", "sem_seg_file_name": "img"}], [{"sem_seg": scores}])
    assert evaluator.evaluate()["sem_seg"] == pytest.approx(res, nan_ok=True)


def test_sem_seg_errors():
    evaluator = _sem_seg_evaluator(input_file_to_gt_file={"img.jpg": "img"})
    with pytest.raises(KeyError, match="other.jpg"):
        evaluator.process([{"file_name": "other.jpg"}], [{"sem_seg": torch.from_numpy(SEM_SEG_PRED)}])
    with pytest.raises(ValueError, match="shape"):
        evaluator.process(
            [{"file_name": "img.jpg"}], [{"sem_seg": torch.zeros(2, 2, dtype=torch.long)}]
        )
    with pytest.raises(ValueError, match="Predicted labels"):
        evaluator.process([{"file_name": "img.jpg"}], [{"sem_seg": torch.from_numpy(SEM_SEG_PRED + 1)}])
    with pytest.raises(ValueError, match="'stuff_classes'"):
        SemSegEvaluator(distributed=False)


def test_sem_seg_real_ade20k_matches_per_class_counts():
    fixture = REFERENCE / "thin_r50_ade20k_semantic"
    _require(ADE_ROOT, fixture)
    gt_dir = ADE_ROOT / "annotations" / "validation"

    def load_ade_gt(path, dtype):
        # ADE20K: 0 = "other" (ignored), classes 1..150 -> contiguous 0..149
        raw = np.asarray(Image.open(path)).astype(np.int64)
        return np.where(raw == 0, 255, raw - 1).astype(dtype)

    evaluator = SemSegEvaluator(
        distributed=False,
        stuff_classes=[f"class{i}" for i in range(150)],
        sem_seg_loading_fn=load_ade_gt,
        input_file_to_gt_file={f"{p.stem}.jpg": str(p) for p in gt_dir.glob("*.png")},
    )
    evaluator.reset()
    tp, gt_count, pred_count = np.zeros(150), np.zeros(150), np.zeros(150)
    rng = np.random.default_rng(0)
    for path in sorted(gt_dir.glob("*.png")):
        gt = load_ade_gt(path, int)
        model_pred = np.load(fixture / f"{path.stem}.npz")["sem_seg_argmax"].astype(np.int64)
        # half of the pixels from the (random-weight) model, half from the gt with noise
        noisy_gt = np.where(rng.random(gt.shape) < 0.2, rng.integers(0, 150, gt.shape), gt)
        noisy_gt[gt == 255] = 0
        pred = np.where(rng.random(gt.shape) < 0.5, model_pred, noisy_gt)
        evaluator.process([{"file_name": f"{path.stem}.jpg"}], [{"sem_seg": torch.from_numpy(pred)}])
        valid = gt != 255
        for c in range(150):
            tp[c] += np.sum((pred == c) & (gt == c))
            gt_count[c] += np.sum(gt == c)
            pred_count[c] += np.sum((pred == c) & valid)
    res = evaluator.evaluate()["sem_seg"]
    present = gt_count > 0
    iou = tp[present] / (gt_count + pred_count - tp)[present]
    assert res["mIoU"] == pytest.approx(100 * iou.mean())
    assert res["fwIoU"] == pytest.approx(100 * np.sum(iou * gt_count[present]) / gt_count.sum())
    assert res["mACC"] == pytest.approx(100 * np.mean(tp[present] / gt_count[present]))
    assert res["pACC"] == pytest.approx(100 * tp.sum() / gt_count.sum())


# --------------------------------------------------------------------------------------------
# Inference loop and distributed gathering
# --------------------------------------------------------------------------------------------
class _RecordingModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)
        self.calls = []

    def forward(self, batch):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return [{"value": x * 2} for x in batch]


class _SumEvaluator(DatasetEvaluator):
    def __init__(self, key):
        self.key = key

    def reset(self):
        self.total = 0

    def process(self, inputs, outputs):
        self.total += sum(o["value"] for o in outputs)

    def evaluate(self):
        return {self.key: {"sum": self.total}}


def test_inference_on_dataset(caplog):
    model = _RecordingModel().train()
    loader = [[1, 2], [3], [4, 5]]
    with caplog.at_level(logging.INFO, logger="mask2former.evaluation.evaluator"):
        results = inference_on_dataset(model, loader, [_SumEvaluator("a"), _SumEvaluator("b")])
    assert results == {"a": {"sum": 30}, "b": {"sum": 30}}
    assert model.calls == [(False, False)] * 3
    assert model.training
    assert "Inference done 3/3" in caplog.text and "ETA=" in caplog.text
    assert inference_on_dataset(model, loader, None) == {}
    with pytest.raises(ValueError, match="same key 'a'"):
        inference_on_dataset(model, loader, [_SumEvaluator("a"), _SumEvaluator("a")])


def _distributed_worker(rank, world_size, out_dir):
    import torch.distributed as dist

    from mask2former.engine.launch import exit_now
    from mask2former.utils import comm

    # A file rendezvous: no TCP store whose server thread could outlive a rank at exit.
    init_method = f"file://{Path(out_dir, 'rendezvous')}"
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        assert comm.get_world_size() == 2 and comm.get_rank() == rank
        assert comm.all_gather({"rank": rank}) == [{"rank": 0}, {"rank": 1}]
        assert comm.gather(rank * 10) == ([0, 10] if rank == 0 else [])
        reduced = comm.reduce_dict({"loss": torch.tensor(float(rank + 1))})
        if rank == 0:
            assert reduced["loss"].item() == pytest.approx(1.5)
        comm.synchronize()
        # Each rank sees one row of the hand-made semantic case; rank 0 evaluates all.
        evaluator = SemSegEvaluator(
            distributed=True,
            stuff_classes=["a", "b", "c", "d"],
            sem_seg_loading_fn=lambda row, dtype: np.array(SEM_SEG_GT["img"], dtype=dtype)[[int(row)]],
        )
        evaluator.reset()
        for row in range(rank, 3, 2):
            evaluator.process(
                [{"file_name": "x", "sem_seg_file_name": str(row)}],
                [{"sem_seg": torch.from_numpy(SEM_SEG_PRED[row][None])}],
            )
        result = evaluator.evaluate()
        if rank == 0:
            Path(out_dir, "result.json").write_text(json.dumps(result["sem_seg"]))
        else:
            assert result is None
        # No rank may tear its gloo connections down while the other still uses them.
        comm.synchronize()
    finally:
        dist.destroy_process_group()
    exit_now()


def test_distributed_gather_two_processes(tmp_path):
    torch.multiprocessing.spawn(_distributed_worker, args=(2, str(tmp_path)), nprocs=2)
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["mIoU"] == pytest.approx(100 * 7 / 12)
    assert res["pACC"] == pytest.approx(70.0)
