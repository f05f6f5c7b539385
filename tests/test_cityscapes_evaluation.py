"""Cityscapes semantic, instance and panoptic evaluation by the official ``cityscapesscripts``
through the standalone engine (``evaluate_model``), on a small Cityscapes layout made here:
synthetic ``gtFine`` label / instance PNGs in the official naming, and the panoptic annotations
made from them by cityscapesscripts' own ``createPanopticImgs``."""
import contextlib
import io
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

import mask2former
from mask2former.data.catalog import DatasetCatalog, MetadataCatalog
from mask2former.data.datasets.builtin_meta import get_builtin_metadata
from mask2former.data.datasets.cityscapes import register_cityscapes, register_cityscapes_panoptic
from mask2former.data.panoptic_format import rgb2id
from mask2former.engine.evaluation import build_evaluator, evaluate_model
from mask2former.evaluation import CityscapesSemSegEvaluator, SemSegEvaluator
from mask2former.evaluation.evaluator import inference_on_dataset
from mask2former.structures import Instances

pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
                    reason="install with: pip install cityscapesscripts")
from cityscapesscripts.helpers.labels import id2label, name2label  # noqa: E402
from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic  # noqa: E402

H, W = 64, 128
NAMES = ("sem_seg", "instance_seg", "panoptic")


def _image_labels(k: int):
    """``(labelIds uint8, instanceIds int32)`` of synthetic image ``k``: sky, building, road,
    a void strip, two cars, a person (> 100 pixels each, the official minimum) and a car crowd."""
    labels = np.full((H, W), name2label["road"].id, np.uint8)
    labels[: 16 + k] = name2label["sky"].id
    labels[16 + k : 32] = name2label["building"].id
    labels[:, :4] = name2label["unlabeled"].id
    instances = labels.astype(np.int32)
    car = name2label["car"].id
    for i, (y, x) in enumerate([(34, 10 + 3 * k), (36, 60)]):
        labels[y : y + 14, x : x + 20] = car
        instances[y : y + 14, x : x + 20] = car * 1000 + i
    person = name2label["person"].id
    labels[20:50, 100 - k : 110 - k] = person
    instances[20:50, 100 - k : 110 - k] = person * 1000
    labels[52:62, 30:50] = car
    instances[52:62, 30:50] = car  # a crowd region: label id without instance number
    return labels, instances


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    image_dir, gt_dir = root / "leftImg8bit" / "val", root / "gtFine" / "val"
    rng = np.random.default_rng(0)
    for k, city in enumerate(["frankfurt", "frankfurt", "lindau"]):
        (image_dir / city).mkdir(parents=True, exist_ok=True)
        (gt_dir / city).mkdir(parents=True, exist_ok=True)
        stem = f"{city}_{k:06d}_000019"
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
            image_dir / city / f"{stem}_leftImg8bit.png")
        labels, instances = _image_labels(k)
        train_ids = np.vectorize(lambda v: id2label[int(v)].trainId)(labels)
        train_ids = np.where((train_ids < 0) | (train_ids > 18), 255, train_ids).astype(np.uint8)
        Image.fromarray(labels).save(gt_dir / city / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(train_ids).save(gt_dir / city / f"{stem}_gtFine_labelTrainIds.png")
        Image.fromarray(instances.astype(np.uint16)).save(gt_dir / city / f"{stem}_gtFine_instanceIds.png")
    with contextlib.redirect_stdout(io.StringIO()):
        convert2panoptic(str(root / "gtFine"), str(root / "gtFine"), setNames=["val"])
    register_cityscapes("cs_tmp_{task}", get_builtin_metadata("cityscapes"), str(image_dir), str(gt_dir))
    register_cityscapes_panoptic("cs_tmp_panoptic", get_builtin_metadata("cityscapes_panoptic"), str(image_dir),
                                 str(root / "gtFine" / "cityscapes_panoptic_val"),
                                 str(root / "gtFine" / "cityscapes_panoptic_val.json"))
    yield root
    for task in NAMES:
        DatasetCatalog.remove(f"cs_tmp_{task}")
        MetadataCatalog.remove(f"cs_tmp_{task}")


class _Oracle(torch.nn.Module):
    """Outputs made from each input's ground truth; ``perturb`` damages them (a block of sky
    labelled building, the first instance and the first thing segment dropped)."""

    def __init__(self, perturb: bool):
        super().__init__()
        self.perturb = perturb

    def forward(self, batched_inputs):
        return [self._outputs(record) for record in batched_inputs]

    def _outputs(self, record):
        out = {}
        if "sem_seg_file_name" in record:
            labels = np.asarray(Image.open(record["sem_seg_file_name"])).astype(np.int64).copy()
            if self.perturb:
                labels[:8, 40:80] = 2  # building
            scores = torch.zeros(19, H, W)
            scores.scatter_(0, torch.as_tensor(np.where(labels == 255, 0, labels))[None], 1.0)
            out["sem_seg"] = scores
        if "annotations" in record:
            things = [a for a in record["annotations"] if not a["iscrowd"]]
            masks = [mask_util.decode(a["segmentation"]).astype(bool) for a in things]
            out["instances"] = self._instances(masks, [a["category_id"] for a in things])
        if "pan_seg_file_name" in record:
            pan = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")))
            segments = [{"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
                        for s in record["segments_info"] if not s["iscrowd"]]
            if self.perturb:
                first_thing = next(s for s in segments if s["isthing"])
                pan = np.where(pan == first_thing["id"], 0, pan)
                segments.remove(first_thing)
            pan = np.where(np.isin(pan, [s["id"] for s in segments]), pan, 0)
            out["panoptic_seg"] = (torch.as_tensor(pan), segments)
            things = [s for s in segments if s["isthing"]]
            out["instances"] = self._instances([pan == s["id"] for s in things], [s["category_id"] for s in things])
        return out

    def _instances(self, masks, classes):
        if self.perturb:
            masks, classes = masks[1:], classes[1:]
        instances = Instances((H, W))
        instances.pred_masks = torch.as_tensor(np.stack(masks)) if masks else torch.zeros(0, H, W, dtype=torch.bool)
        instances.scores = torch.linspace(1.0, 0.5, len(masks))
        instances.pred_classes = torch.as_tensor(classes, dtype=torch.int64)
        return instances


def _cfg(name, output_dir):
    cfg = mask2former.get_cfg()
    cfg.merge_from_list(["DATASETS.TEST", f"('{name}',)", "INPUT.MIN_SIZE_TEST", "0", "INPUT.FORMAT", "RGB",
                         "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(output_dir)]
                        + [v for k in ("PANOPTIC", "INSTANCE", "SEMANTIC") for v in (f"MODEL.MASK_FORMER.TEST.{k}_ON", "True")])
    return cfg


@pytest.mark.parametrize("perturb", [False, True])
def test_engine_evaluates_cityscapes_with_cityscapesscripts(cityscapes, tmp_path, perturb, caplog):
    before = set(os.listdir(os.getcwd()))
    semantic = evaluate_model(_cfg("cs_tmp_sem_seg", tmp_path), _Oracle(perturb))["sem_seg"]
    instance = evaluate_model(_cfg("cs_tmp_instance_seg", tmp_path), _Oracle(perturb))["segm"]
    with caplog.at_level("INFO", logger="mask2former.evaluation.panoptic_evaluation"):
        panoptic = evaluate_model(_cfg("cs_tmp_panoptic", tmp_path), _Oracle(perturb))
    assert "computed by cityscapesscripts.evaluation.evalPanopticSemanticLabeling" in caplog.text
    assert set(os.listdir(os.getcwd())) == before  # no matches.json / gtInstances.json left behind
    assert {k for k in semantic if "-" not in k} == {"IoU", "iIoU", "IoU_sup", "iIoU_sup"}
    assert {k for k in instance if "-" not in k} == {"AP", "AP50"}
    assert semantic["IoU"] == pytest.approx(np.nanmean([v for k, v in semantic.items() if k.startswith("IoU-")]))
    # the perturbation drops the first instance of each image: the person (ids sort before cars)
    assert (instance["AP-car"], instance["AP-person"]) == pytest.approx((100.0, 0.0 if perturb else 100.0))
    assert panoptic.keys() == {"panoptic_seg", "segm", "sem_seg"}
    if not perturb:
        for value in (semantic["IoU"], semantic["iIoU"], instance["AP"], panoptic["panoptic_seg"]["PQ"],
                      panoptic["segm"]["AP"], panoptic["sem_seg"]["IoU"]):
            assert value == pytest.approx(100.0)
    else:
        assert 50 < semantic["IoU"] < 100 and 0 < instance["AP"] < 100
        assert 0 < panoptic["panoptic_seg"]["PQ"] < 100 and 50 < panoptic["sem_seg"]["IoU"] < 100


def test_official_iou_equals_project_miou_when_only_gt_classes_are_predicted(cityscapes):
    """With predictions limited to classes in the gt, Cityscapes' class IoU and this package's
    mIoU count the same pixels (labelIds vs labelTrainIds), so they agree."""
    cfg = _cfg("cs_tmp_sem_seg", cityscapes)
    evaluator = build_evaluator(cfg, "cs_tmp_sem_seg", str(cityscapes / "out"))
    assert isinstance(evaluator._evaluators[0], CityscapesSemSegEvaluator)
    from mask2former.engine.evaluation import TestMapper
    from mask2former.data.build import build_test_loader

    loader = build_test_loader(DatasetCatalog.get("cs_tmp_sem_seg"), TestMapper(cfg))
    official = inference_on_dataset(_Oracle(True), loader, evaluator)["sem_seg"]["IoU"]
    ours = inference_on_dataset(_Oracle(True), loader, SemSegEvaluator("cs_tmp_sem_seg"))["sem_seg"]["mIoU"]
    assert official == pytest.approx(ours, abs=1e-9)
    assert official < 100
