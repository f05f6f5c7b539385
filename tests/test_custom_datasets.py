"""Datasets without code: ``--dataset NAME TYPE PATH...`` registration, metadata read from the
annotations, the config fitted to the dataset type, the NUM_CLASSES check, Detectron2's Python
names, fine-tuning with another number of classes, and training + evaluation on the real samples
(the 80 COCO train images as a custom instance dataset; a semantic dataset from ADE20K)."""
import contextlib
import io
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import mask2former
from mask2former.checkpoint import Checkpointer
from mask2former.data.catalog import DatasetCatalog, MetadataCatalog
from mask2former.data.dataset_mappers import build_dataset_mapper
from mask2former.data.datasets import (
    register_coco_instances,
    register_coco_panoptic,
    register_coco_panoptic_separated,
    register_sem_seg,
)
from mask2former.data.datasets.custom import read_class_list, register_dataset
from mask2former.data.datasets.prepare import coco_panoptic_to_semantic
from mask2former.engine.custom_datasets import (
    adapt_config_to_datasets,
    check_num_classes,
    configure_datasets,
    read_definition_file,
    register_datasets,
)
from mask2former.data.panoptic_format import rgb2id
from mask2former.engine.defaults import default_argument_parser
from mask2former.engine.evaluation import evaluate_model
from mask2former.modeling.build import build_model
from mask2former.structures import Instances
from training_utils import REPO_ROOT

CLASS_HEAD = (
    "sem_seg_head.predictor.class_embed.weight",
    "sem_seg_head.predictor.class_embed.bias",
    "criterion.empty_weight",
)


@pytest.fixture
def registered():
    """Names registered by a test; removed afterwards (the catalogs are process-global)."""
    names = []
    yield names
    for name in names:
        for catalog in (DatasetCatalog, MetadataCatalog):
            if name in catalog.list():
                catalog.remove(name)


@pytest.fixture(scope="module")
def coco(datasets_root):
    return datasets_root / "coco"


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


# --------------------------------------------------------------------------------- the option


def test_dataset_option_is_repeatable_and_keeps_trailing_overrides():
    args = default_argument_parser().parse_args(
        ["--config-file", "c.yaml", "--dataset", "a", "sem_seg", "img", "lbl", "cls.txt",
         "--dataset", "b", "coco_instances", "b.json", "imgs", "DATASETS.TRAIN", "('b',)",
         "SOLVER.MAX_ITER", "3"]
    )
    assert args.datasets == [["a", "sem_seg", "img", "lbl", "cls.txt"],
                             ["b", "coco_instances", "b.json", "imgs"]]
    assert args.opts == ["DATASETS.TRAIN", "('b',)", "SOLVER.MAX_ITER", "3"]


@pytest.mark.parametrize(
    "values,message",
    [(["a", "voc", "x"], "TYPE one of"), (["a", "coco_panoptic", "p.json", "png"], "takes the paths")],
)
def test_dataset_option_errors(values, message, capsys):
    with pytest.raises(SystemExit):
        default_argument_parser().parse_args(["--config-file", "c.yaml", "--dataset", *values])
    assert message in capsys.readouterr().err


def test_definition_file_from_the_config(coco, tmp_path, registered):
    (tmp_path / "sets.yaml").write_text(
        f"def_val: {{type: coco_instances, paths: [{coco / 'annotations' / 'instances_val2017.json'}, "
        f"{coco / 'val2017'}]}}\n")
    cfg = mask2former.get_cfg()
    cfg.merge_from_file(str(REPO_ROOT / "configs/coco/panoptic/R50.yaml"))
    cfg.merge_from_list(["DATASETS.DEFINITION_FILES", f"('{tmp_path / 'sets.yaml'}',)", "DATASETS.TRAIN",
                         "('def_val',)", "DATASETS.TEST", "('def_val',)", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "80"])
    registered.append("def_val")
    changes = configure_datasets(cfg)
    assert len(DatasetCatalog.get("def_val")) == 3
    assert cfg.INPUT.DATASET_MAPPER_NAME == "coco_instance_lsj"
    assert (cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON, cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON) == (False, True)
    assert len(changes) == 3
    (tmp_path / "bad.yaml").write_text("x: {type: sem_seg}\n")
    with pytest.raises(ValueError, match="needs 'type'.*'paths'"):
        read_definition_file(str(tmp_path / "bad.yaml"))


def test_registration_errors_name_the_file(tmp_path, coco, registered):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        register_dataset("bad", "coco_instances", [str(tmp_path / "missing.json"), str(coco / "train2017")])
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        register_dataset("bad", "coco_instances", [str(tmp_path / "broken.json"), str(coco / "train2017")])
    (tmp_path / "classes.txt").write_text("a\nb\na\n")
    with pytest.raises(ValueError, match="more than once"):
        read_class_list(str(tmp_path / "classes.txt"))
    registered.append("twice")
    specs = [["twice", "coco_instances", str(coco / "annotations" / "instances_val2017.json"), str(coco / "val2017")]]
    register_datasets(specs)
    register_datasets(specs)  # the same files again (set-up run twice): skipped
    with pytest.raises(ValueError, match="already registered"):
        register_datasets([["twice", "coco_instances", specs[0][2], str(coco / "train2017")]])


# ---------------------------------------------------------------------- metadata and records


class _PanopticOracle(torch.nn.Module):
    """Panoptic, instance and semantic outputs made from each input's panoptic ground truth."""

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, batched_inputs):
        outputs = []
        for record in batched_inputs:
            ids = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")))
            segments = record["segments_info"]
            scores = torch.zeros(self.num_classes, *ids.shape)
            for s in segments:
                scores[s["category_id"]][torch.as_tensor(ids == s["id"])] = 1.0
            kept = [s for s in segments if not s["iscrowd"]]
            things = [s for s in kept if s["isthing"]]
            instances = Instances(ids.shape)
            instances.pred_masks = torch.as_tensor(np.stack([ids == s["id"] for s in things]))
            instances.scores = torch.ones(len(things))
            instances.pred_classes = torch.as_tensor([s["category_id"] for s in things])
            panoptic = np.where(np.isin(ids, [s["id"] for s in kept]), ids, 0)
            outputs.append({
                "sem_seg": scores,
                "instances": instances,
                "panoptic_seg": (torch.as_tensor(panoptic), [
                    {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]} for s in kept]),
            })
        return outputs


def test_coco_instances_metadata_from_the_json(coco, registered):
    json_file = coco / "annotations" / "instances_train2017.json"
    registered.append("mine_instances")
    register_datasets([["mine_instances", "coco_instances", str(json_file), str(coco / "train2017")]])
    meta = MetadataCatalog.get("mine_instances")
    categories = sorted(json.loads(json_file.read_text())["categories"], key=lambda c: c["id"])
    assert meta.thing_classes == [c["name"] for c in categories]
    assert meta.thing_dataset_id_to_contiguous_id == {c["id"]: i for i, c in enumerate(categories)}
    assert len(meta.thing_colors) == len(categories) and len(set(meta.thing_colors)) > len(categories) // 2
    assert (meta.evaluator_type, meta.dataset_type) == ("coco", "coco_instances")
    records = DatasetCatalog.get("mine_instances")
    assert len(records) == 80
    assert {a["category_id"] for r in records for a in r["annotations"]} <= set(range(len(categories)))


def test_coco_panoptic_metadata_and_mapper(coco, registered):
    panoptic_json = coco / "annotations" / "panoptic_val2017.json"
    registered.append("mine_panoptic")
    register_datasets([["mine_panoptic", "coco_panoptic", str(panoptic_json), str(coco / "panoptic_val2017"),
                        str(coco / "val2017")]])
    meta = MetadataCatalog.get("mine_panoptic")
    categories = json.loads(panoptic_json.read_text())["categories"]
    assert len(meta.stuff_classes) == 133 and len(meta.thing_classes) == 80
    assert meta.stuff_colors[0] == tuple(categories[0]["color"])  # colours from the json
    assert meta.thing_classes == [c["name"] for c in categories if c["isthing"]]
    assert meta.evaluator_type == "coco_panoptic_seg"
    records = DatasetCatalog.get("mine_panoptic")
    assert len(records) == 3 and all(r["segments_info"] for r in records)

    cfg = mask2former.get_cfg()
    cfg.merge_from_file(str(REPO_ROOT / "configs/ade20k/semantic/R50.yaml"))  # a semantic recipe
    cfg.merge_from_list(["DATASETS.TRAIN", "('mine_panoptic',)", "DATASETS.TEST", "('mine_panoptic',)",
                         "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "133", "INPUT.IMAGE_SIZE", "256"])
    changes = adapt_config_to_datasets(cfg)
    assert cfg.INPUT.DATASET_MAPPER_NAME == "coco_panoptic_lsj" and len(changes) == 1
    check_num_classes(cfg)
    sample = build_dataset_mapper(cfg, is_train=True)(records[0])
    assert sample["image"].shape == (3, 256, 256) and len(sample["instances"].gt_classes) > 0


def test_custom_panoptic_dataset_gets_pq_ap_and_miou(coco, registered, tmp_path):
    """Only panoptic JSON + PNGs: AP and mIoU use ground truth derived from them; predictions
    equal to the ground truth score 100 on all three."""
    registered.append("mine_pan_eval")
    register_datasets([["mine_pan_eval", "coco_panoptic", str(coco / "annotations" / "panoptic_val2017.json"),
                        str(coco / "panoptic_val2017"), str(coco / "val2017")]])
    cfg = mask2former.get_cfg()
    cfg.merge_from_list(["DATASETS.TEST", "('mine_pan_eval',)", "INPUT.MIN_SIZE_TEST", "0", "OUTPUT_DIR", str(tmp_path)]
                        + [v for k in ("PANOPTIC", "INSTANCE", "SEMANTIC") for v in (f"MODEL.MASK_FORMER.TEST.{k}_ON", "True")])
    results = evaluate_model(cfg, _PanopticOracle(133))
    assert results["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0) and results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["sem_seg"]["mIoU"] == pytest.approx(100.0)
    derived = json.loads((tmp_path / "inference" / "mine_pan_eval" / "instances_from_panoptic.json").read_text())
    panoptic = json.loads((coco / "annotations" / "panoptic_val2017.json").read_text())
    things = {c["id"] for c in panoptic["categories"] if c["isthing"]}
    expected = sorted((a["image_id"], s["category_id"], s["area"]) for a in panoptic["annotations"]
                      for s in a["segments_info"] if s["category_id"] in things)
    assert sorted((a["image_id"], a["category_id"], a["area"]) for a in derived["annotations"]) == expected


def test_num_classes_check_names_key_dataset_and_numbers(coco, registered):
    registered.append("mine_val")
    register_datasets([["mine_val", "coco_instances", str(coco / "annotations" / "instances_val2017.json"),
                        str(coco / "val2017")]])
    cfg = mask2former.get_cfg()
    cfg.merge_from_list(["DATASETS.TRAIN", "('mine_val',)", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "133"])
    with pytest.raises(ValueError, match=r"MODEL.SEM_SEG_HEAD.NUM_CLASSES is 133 but dataset 'mine_val' has 80"):
        check_num_classes(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 80
    check_num_classes(cfg)


def test_detectron2_python_names(coco, tmp_path, registered):
    registered += ["py_inst", "py_pan", "py_sep_separated", "py_sep_stuffonly", "py_sem"]
    register_coco_instances("py_inst", {}, str(coco / "annotations" / "instances_val2017.json"), str(coco / "val2017"))
    assert len(DatasetCatalog.get("py_inst")) == 3
    assert len(MetadataCatalog.get("py_inst").thing_classes) == 80  # derived from the json on loading

    panoptic_json = str(coco / "annotations" / "panoptic_val2017.json")
    register_coco_panoptic("py_pan", {}, str(coco / "val2017"), str(coco / "panoptic_val2017"), panoptic_json)
    assert len(DatasetCatalog.get("py_pan")) == 3 and len(MetadataCatalog.get("py_pan").stuff_classes) == 133

    sem_root = tmp_path / "semseg"
    coco_panoptic_to_semantic(panoptic_json, str(coco / "panoptic_val2017"), str(sem_root))
    register_coco_panoptic_separated(
        "py_sep", {}, str(coco / "val2017"), str(coco / "panoptic_val2017"), panoptic_json, str(sem_root),
        str(coco / "annotations" / "instances_val2017.json"),
    )
    merged = DatasetCatalog.get("py_sep_separated")
    assert len(merged) == 3 and all("annotations" in r and "sem_seg_file_name" in r for r in merged)
    assert len(DatasetCatalog.get("py_sep_stuffonly")) == 3
    assert MetadataCatalog.get("py_sep_stuffonly").evaluator_type == "sem_seg"

    register_sem_seg("py_sem", {"stuff_classes": ["a", "b"]}, str(coco / "val2017"), str(sem_root))
    assert len(DatasetCatalog.get("py_sem")) == 3


# ------------------------------------------------------------ fine-tuning with other classes


def test_checkpoint_with_other_number_of_classes_loads_all_but_the_class_head(reference_dir, caplog):
    fixture = reference_dir / "thin_r50_coco_panoptic"
    cfg = mask2former.get_cfg()
    cfg.merge_from_file(str(fixture / "config.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "80"])
    torch.manual_seed(0)
    model = build_model(cfg)
    fresh = {k: v.clone() for k, v in model.state_dict().items() if k in CLASS_HEAD}
    with caplog.at_level("INFO"):
        Checkpointer(model).load(str(fixture / "model.pkl"), checkpointables=[])
    with open(fixture / "model.pkl", "rb") as f:
        stored = pickle.load(f)["model"]
    state = model.state_dict()
    assert state.keys() == stored.keys()
    for key, value in state.items():
        if key in CLASS_HEAD:
            assert stored[key].shape[0] == 134 and value.shape[0] == 81
            assert torch.equal(value, fresh[key]), key
        else:
            assert torch.equal(value, torch.as_tensor(stored[key])), key
    assert "class_embed" in caplog.text  # the log says the class head was not loaded


# ------------------------------------------------------------------- training on real data


def _fixture_finetune_config(path, fixture, output_dir, num_classes, dataset, iters, lr=0.0001):
    path.write_text(
        f"_BASE_: {fixture / 'config.yaml'}\nOUTPUT_DIR: {output_dir}\n"
        f"MODEL: {{WEIGHTS: {fixture / 'model.pkl'}, DEVICE: cpu, SEM_SEG_HEAD: {{NUM_CLASSES: {num_classes}}},"
        " MASK_FORMER: {TRAIN_NUM_POINTS: 1024}}\n"
        "INPUT: {IMAGE_SIZE: 128, MIN_SCALE: 1.0, MAX_SCALE: 1.0, MIN_SIZE_TEST: 128, MAX_SIZE_TEST: 192}\n"
        f"DATASETS: {{TRAIN: [{dataset}], TEST: [{dataset}]}}\n"
        f"SOLVER: {{IMS_PER_BATCH: 2, BASE_LR: {lr}, MAX_ITER: {iters}, STEPS: [{iters - 1}],"
        " CHECKPOINT_PERIOD: 1000, WARMUP_ITERS: 2, AMP: {ENABLED: False}}\n"
        "TEST: {EVAL_PERIOD: 0}\nDATALOADER: {NUM_WORKERS: 0}\nSEED: 0\n"
    )
    return path


def _cocoeval_stats(gt_json, results_json, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_json))
        evaluation = COCOeval(gt, gt.loadRes(str(results_json)), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


def test_train_net_custom_instance_dataset_trains_and_ap_equals_pycocotools(coco, reference_dir, tmp_path):
    """The 80 COCO train images by path: fine-tuned from the 133-class panoptic fixture with 80
    classes for a few iterations, then evaluated by the same command on them and on the 3 val
    images (a second custom dataset); every AP equals COCOeval run on the written results."""
    gt = {"mine": coco / "annotations" / "instances_train2017.json",
          "mine_val": coco / "annotations" / "instances_val2017.json"}
    out = tmp_path / "run"
    config = _fixture_finetune_config(tmp_path / "cfg.yaml", reference_dir / "thin_r50_coco_panoptic", out,
                                      80, "mine", iters=4)
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_net.py"), "--config-file", str(config),
         "--dataset", "mine", "coco_instances", str(gt["mine"]), str(coco / "train2017"),
         "--dataset", "mine_val", "coco_instances", str(gt["mine_val"]), str(coco / "val2017"),
         "DATASETS.TEST", "('mine', 'mine_val')"],
        capture_output=True, text=True, env=_env(), timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert "INPUT.DATASET_MAPPER_NAME mask_former_semantic -> coco_instance_lsj" in log
    assert "class_embed" in log  # the class head was not loaded from the 133-class checkpoint
    metrics = json.loads((out / "metrics.json").read_text().splitlines()[-1])
    assert metrics["iteration"] == 3
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    for dataset, json_file in gt.items():
        results_json = out / "inference" / dataset / "coco_instances_results.json"
        predictions = json.loads(results_json.read_text())
        images = {r["id"] for r in json.loads(json_file.read_text())["images"]}
        assert len(predictions) == 100 * len(images) and {p["image_id"] for p in predictions} == images
        for task in ("segm", "bbox"):
            stats = _cocoeval_stats(json_file, results_json, task)
            for name, value in zip(names, stats):
                assert metrics[f"{dataset}/{task}/{name}"] == pytest.approx(100 * value, abs=1e-9), (dataset, task)


def test_train_net_custom_semantic_dataset_from_ade20k(datasets_root, reference_dir, tmp_path):
    """A 10-class semantic dataset made from the ADE20K samples (PNG images, label PNGs with
    255 = other classes, a class-list file), defined in a file named by the config, fine-tuned
    from the 150-class ADE20K fixture for 40 iterations and evaluated by ``train_net.py``."""
    ade = datasets_root / "ADEChallengeData2016"
    names = [line.split("\t")[-1].split(",")[0].strip()
             for line in (ade / "objectInfo150.txt").read_text().splitlines()[1:11]]
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for jpg in sorted((ade / "images" / "validation").glob("*.jpg")):
        Image.open(jpg).convert("RGB").save(images / (jpg.stem + ".png"))
        raw = np.asarray(Image.open(ade / "annotations" / "validation" / (jpg.stem + ".png")))
        label = np.where((raw >= 1) & (raw <= 10), raw.astype(np.int64) - 1, 255).astype(np.uint8)
        Image.fromarray(label).save(labels / (jpg.stem + ".png"))
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "datasets.yaml").write_text(  # a definition file; paths relative to it
        "ade_mini: {type: sem_seg, paths: [images, labels, classes.txt]}\n")
    out = tmp_path / "run"
    config = _fixture_finetune_config(tmp_path / "cfg.yaml", reference_dir / "thin_r50_ade20k_semantic", out,
                                      10, "ade_mini", iters=40, lr=0.001)
    command = [sys.executable, str(REPO_ROOT / "train_net.py"), "--config-file", str(config),
               "DATASETS.DEFINITION_FILES", f"('{tmp_path / 'datasets.yaml'}',)"]
    wrong = subprocess.run(command + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "150"], capture_output=True, text=True,
                           env=_env(), timeout=900)
    assert wrong.returncode != 0
    assert "MODEL.SEM_SEG_HEAD.NUM_CLASSES is 150 but dataset 'ade_mini' has 10 classes" in wrong.stderr
    run = subprocess.run(command + ["INPUT.CROP.SIZE", "(128, 128)", "INPUT.MIN_SIZE_TRAIN", "(128,)",
                                    "INPUT.MAX_SIZE_TRAIN", "192"],
                         capture_output=True, text=True, env=_env(), timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text().splitlines()[-1])
    per_class = [metrics[f"sem_seg/IoU-{name}"] for name in names]
    assert 0 <= metrics["sem_seg/mIoU"] <= 100 and len(per_class) == 10
    assert metrics["sem_seg/mIoU"] == pytest.approx(np.nanmean(per_class), abs=1e-6)
    assert metrics["sem_seg/pACC"] > 50  # it learnt: 73.5 measured (0 after 3 iterations)


def test_demo_and_benchmark_take_dataset_option(coco, reference_dir, tmp_path):
    fixture = reference_dir / "thin_r50_coco_panoptic"
    dataset = ["--dataset", "mine", "coco_panoptic", str(coco / "annotations" / "panoptic_val2017.json"),
               str(coco / "panoptic_val2017"), str(coco / "val2017")]
    overrides = ["MODEL.WEIGHTS", str(fixture / "model.pkl"), "MODEL.DEVICE", "cpu", "DATASETS.TEST", "('mine',)",
                 "DATASETS.TRAIN", "('mine',)", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192"]
    image = coco / "val2017" / "000000039769.jpg"
    demo = subprocess.run(
        [sys.executable, str(REPO_ROOT / "demo" / "demo.py"), "--config-file", str(fixture / "config.yaml"), *dataset,
         "--input", str(image), "--output", str(tmp_path / "demo"), "--opts", *overrides],
        capture_output=True, text=True, env=_env(), timeout=600,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert (tmp_path / "demo" / "000000039769.png").is_file()
    benchmark = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "benchmark.py"), "--config-file", str(fixture / "config.yaml"),
         "--task", "inference", "--device", "cpu", "--num-images", "1", "--warmup", "0", "--iters", "1",
         "--output", str(tmp_path / "bench.json"), *dataset, *overrides],
        capture_output=True, text=True, env=_env(), timeout=600,
    )
    assert benchmark.returncode == 0, benchmark.stderr[-3000:]
    first = json.loads((coco / "annotations" / "panoptic_val2017.json").read_text())["annotations"][0]
    assert first["file_name"].replace(".png", ".jpg") in benchmark.stderr  # the custom dataset's images
