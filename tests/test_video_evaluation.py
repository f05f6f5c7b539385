"""YouTube-VIS AP (spatio-temporal mask IoU, COCO thresholds) on hand-made clips whose AP is worked
out by hand, and on COCO pseudo-clips with the ground truth as prediction."""
import json

import numpy as np
import pytest
import torch

from mask2former.config import get_cfg
from mask2former.data.datasets import load_coco_json
from mask2former.video.data import COCOPseudoClipDatasetMapper
from mask2former.video.evaluation import YTVISEvaluator, mask_to_rle, evaluate_ytvis

H, W = 20, 20
VIDEOS = [{"id": 1, "height": H, "width": W}]
CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def _box(y0, y1, x0, x1):
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _gt(*frames, category=1):
    return {"video_id": 1, "category_id": category, "iscrowd": 0,
            "segmentations": [None if f is None else mask_to_rle(f) for f in frames]}


def _dt(score, *frames, category=1):
    return {"video_id": 1, "category_id": category, "score": score,
            "segmentations": [mask_to_rle(np.zeros((H, W), bool) if f is None else f) for f in frames]}


def _ap(gt, dt):
    stats = evaluate_ytvis(VIDEOS, gt, dt, CATEGORIES).stats
    return {"AP": stats[0], "AP50": stats[1], "AP75": stats[2], "AR100": stats[8]}


def test_exact_tube_gives_ap_1():
    a0, a1 = _box(0, 10, 0, 10), _box(0, 10, 2, 12)
    assert _ap([_gt(a0, a1)], [_dt(0.9, a0, a1)]) == pytest.approx({"AP": 1, "AP50": 1, "AP75": 1, "AR100": 1})


def test_iou_sums_intersections_and_unions_over_frames():
    # Frame 0 exact (100 px), frame 1 covers 24 of the 100 gt pixels: IoU = (100 + 24) / 200 = 0.62,
    # a true positive at thresholds 0.50, 0.55, 0.60 only -> AP = 3/10; AP50 = 1, AP75 = 0.
    g0, g1 = _box(0, 10, 0, 10), _box(5, 15, 5, 15)
    r = _ap([_gt(g0, g1)], [_dt(0.9, g0, _box(5, 7, 5, 17) & g1 | _box(7, 8, 5, 9))])
    assert r == pytest.approx({"AP": 0.3, "AP50": 1, "AP75": 0, "AR100": 0.3})


def test_frames_where_only_the_prediction_exists_count_in_the_union():
    # The instance is visible in frame 0 only; the prediction also covers 100 px in frame 1:
    # IoU = 100 / 200 = 0.5, a match at threshold 0.50 only -> AP = 1/10.
    g0 = _box(0, 10, 0, 10)
    assert _ap([_gt(g0, None)], [_dt(0.9, g0, _box(10, 20, 10, 20))])["AP"] == pytest.approx(0.1)


def test_ranking_a_false_positive_first_halves_precision():
    # Two instances; the best-scored prediction hits nothing, the second is exact on instance A.
    # Ranked: FP (P=0, R=0), TP (P=1/2, R=1/2); interpolated precision is 1/2 at the 51 recall
    # points 0.00..0.50 and 0 beyond -> AP = 51 * 0.5 / 101 at every threshold; AR = 1/2.
    a, b = _box(0, 5, 0, 5), _box(10, 15, 10, 15)
    r = _ap([_gt(a, a), _gt(b, b)], [_dt(0.9, _box(0, 5, 15, 20), _box(0, 5, 15, 20)), _dt(0.8, a, a)])
    assert r == pytest.approx({"AP": 51 * 0.5 / 101, "AP50": 51 * 0.5 / 101, "AP75": 51 * 0.5 / 101, "AR100": 0.5})


def test_wrong_class_is_no_match_and_classes_without_ground_truth_are_not_averaged():
    a = _box(0, 10, 0, 10)
    # Category 2 has no ground truth: it is left out of the mean, so AP is category 1's = 0.
    assert _ap([_gt(a, a)], [_dt(0.9, a, a, category=2)])["AP"] == 0
    # An exact category-1 tube next to the wrong-class one: category 1 has AP 1, category 2 is skipped.
    assert _ap([_gt(a, a)], [_dt(0.9, a, a, category=2), _dt(0.5, a, a)])["AP"] == pytest.approx(1)


@pytest.fixture(scope="module")
def pseudo_clips(datasets_root):
    coco = datasets_root / "coco"
    records = load_coco_json(str(coco / "annotations/instances_train2017.json"), str(coco / "train2017"),
                             "coco_2017_train")[:6]
    cfg = get_cfg()
    cfg.INPUT.SAMPLING_FRAME_NUM = 3
    cfg.INPUT.MIN_SIZE_TEST = 160
    mapper = COCOPseudoClipDatasetMapper(cfg, is_train=False)
    return [mapper(r) for r in records]


def _gt_as_output(clip):
    ids = torch.stack([inst.gt_ids for inst in clip["instances"]], dim=1)
    keep = (ids != -1).any(dim=1)
    masks = torch.stack([inst.gt_masks for inst in clip["instances"]], dim=1)[keep]
    return {"image_size": (clip["height"], clip["width"]), "pred_scores": [1.0] * int(keep.sum()),
            "pred_labels": clip["instances"][0].gt_classes[keep].tolist(), "pred_masks": list(masks)}


def test_ground_truth_as_prediction_on_coco_pseudo_clips_gives_100(pseudo_clips, tmp_path):
    evaluator = YTVISEvaluator("coco_2017_train", output_dir=str(tmp_path), gt_from_inputs=True)
    evaluator.reset()
    for clip in pseudo_clips:
        evaluator.process([clip], _gt_as_output(clip))
    metrics = evaluator.evaluate()["segm"]
    assert metrics["AP"] == pytest.approx(100) and metrics["AP75"] == pytest.approx(100)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved) == sum(len(_gt_as_output(c)["pred_scores"]) for c in pseudo_clips)
    assert {r["category_id"] for r in saved} <= set(range(1, 91))  # COCO dataset ids, not labels
    assert all(len(r["segmentations"]) == 3 for r in saved)

    # Rolling every predicted tube by a quarter of the frame width lowers AP well below 100.
    evaluator.reset()
    for clip in pseudo_clips:
        output = _gt_as_output(clip)
        output["pred_masks"] = [m.roll(shifts=m.shape[-1] // 4, dims=-1) for m in output["pred_masks"]]
        evaluator.process([clip], output)
    assert evaluator.evaluate()["segm"]["AP"] < 50


def test_no_ground_truth_annotations_saves_results_only(tmp_path):
    gt = tmp_path / "valid.json"
    gt.write_text(json.dumps({"videos": [{"id": 3, "height": H, "width": W, "length": 1, "file_names": ["a.jpg"]}],
                              "categories": CATEGORIES, "annotations": []}))
    evaluator = YTVISEvaluator(json_file=str(gt), output_dir=str(tmp_path),
                               thing_dataset_id_to_contiguous_id={1: 0, 2: 1})
    evaluator.process([{"video_id": 3}], {"image_size": (H, W), "pred_scores": [0.5], "pred_labels": [1],
                                          "pred_masks": [torch.ones(1, H, W, dtype=torch.bool)]})
    assert evaluator.evaluate() == {}
    (saved,) = json.loads((tmp_path / "results.json").read_text())
    assert saved["category_id"] == 2 and saved["video_id"] == 3
    with pytest.raises(FileNotFoundError, match="missing.json"):
        YTVISEvaluator(json_file=str(tmp_path / "missing.json")).evaluate()
