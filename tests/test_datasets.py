"""Dataset catalogs, built-in metadata, loaders and preparation scripts, on the real samples in
../shared/data/datasets (3 COCO val panoptic images, 80 COCO train images, 3 ADE20K val images)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mask2former.data.catalog import DatasetCatalog, Metadata, MetadataCatalog
from mask2former.data.datasets import (
    BUILTIN_DATASET_NAMES,
    get_builtin_metadata,
    load_cityscapes_instances,
    load_cityscapes_panoptic,
    load_cityscapes_semantic,
    load_coco_json,
    load_coco_panoptic_json,
    load_sem_seg,
    register_coco_instances,
)
from mask2former.data.datasets.box_mode import BoxMode
from mask2former.data.panoptic_format import id2rgb, rgb2id
from mask2former.data.datasets.builtin_meta import (
    ADE20K_150_CATEGORIES,
    ADE20K_INSTANCE_CATEGORIES,
    CITYSCAPES_CATEGORIES,
    COCO_PANOPTIC_CATEGORIES,
)
from mask2former.data.datasets.prepare import (
    ade20k_instance_json,
    ade20k_panoptic_from_instances,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "datasets"))
import prepare_ade20k_sem_seg  # noqa: E402
import prepare_coco_semantic_annos_from_panoptic_annos as prepare_coco_sem  # noqa: E402


# ----------------------------------------------------------------------------- catalogs
def test_dataset_catalog_register_get_list_remove():
    calls = []
    DatasetCatalog.register("_test_catalog_ds", lambda: calls.append(1) or [{"x": 1}])
    try:
        assert calls == []  # lazy
        assert "_test_catalog_ds" in DatasetCatalog.list()
        assert DatasetCatalog.get("_test_catalog_ds") == [{"x": 1}]
        assert calls == [1]
        with pytest.raises((ValueError, AssertionError), match="already registered"):
            DatasetCatalog.register("_test_catalog_ds", lambda: [])
    finally:
        DatasetCatalog.remove("_test_catalog_ds")
    assert "_test_catalog_ds" not in DatasetCatalog.list()
    with pytest.raises(KeyError, match="_test_catalog_ds"):
        DatasetCatalog.get("_test_catalog_ds")


def test_metadata_fields():
    meta = MetadataCatalog.get("_test_catalog_meta")
    try:
        assert MetadataCatalog.get("_test_catalog_meta") is meta
        assert meta.set(thing_classes=["a", "b"], ignore_label=255) is meta
        assert meta.thing_classes == ["a", "b"]
        assert meta.as_dict()["ignore_label"] == 255
        assert meta.get("missing_field", 7) == 7
        meta.ignore_label = 255  # same value: allowed
        with pytest.raises((ValueError, AssertionError)):
            meta.ignore_label = 0
        with pytest.raises(AttributeError, match="missing_field"):
            meta.missing_field
    finally:
        MetadataCatalog.remove("_test_catalog_meta")
    assert isinstance(meta, Metadata)


# ----------------------------------------------------------------------------- metadata
def test_builtin_tables_match_the_real_annotations(datasets_root):
    with open(datasets_root / "coco/annotations/panoptic_val2017.json") as f:
        cats = json.load(f)["categories"]
    assert [(c["id"], c["name"], c["isthing"], tuple(c["color"])) for c in cats] == [
        tuple(row) for row in COCO_PANOPTIC_CATEGORIES
    ]
    with open(datasets_root / "coco/annotations/instances_train2017.json") as f:
        inst_cats = json.load(f)["categories"]
    assert [c["id"] for c in inst_cats] == [r[0] for r in COCO_PANOPTIC_CATEGORIES if r[2]]
    rows = (datasets_root / "ADEChallengeData2016/objectInfo150.txt").read_text().splitlines()[1:]
    full_names = [r.split("\t")[-1] for r in rows]
    assert len(full_names) == len(ADE20K_150_CATEGORIES) == 150
    for full, (idx, short, _, _) in zip(full_names, ADE20K_150_CATEGORIES):
        # the published short name is the first synonym(s) of objectInfo150's name
        assert short.split(",")[0].strip() in full, (idx, short, full)


def test_builtin_table_facts():
    assert sum(r[2] for r in COCO_PANOPTIC_CATEGORIES) == 80
    assert sum(r[2] for r in ADE20K_150_CATEGORIES) == 100
    assert [r[0] for r in ADE20K_INSTANCE_CATEGORIES] == [r[0] for r in ADE20K_150_CATEGORIES if r[2]]
    assert [r[1] for r in CITYSCAPES_CATEGORIES] == list(range(19))
    assert [r[2] for r in CITYSCAPES_CATEGORIES if r[3]] == [
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"
    ]
    with pytest.raises(KeyError, match="no_such"):
        get_builtin_metadata("no_such")


def test_every_builtin_name_is_registered_with_metadata():
    assert len(BUILTIN_DATASET_NAMES) == 18
    for name in BUILTIN_DATASET_NAMES:
        assert name in DatasetCatalog.list(), name
        meta = MetadataCatalog.get(name)
        assert isinstance(meta.evaluator_type, str), name
        assert meta.get("thing_classes") or meta.get("stuff_classes"), name
        if "panoptic" in name:
            assert meta.label_divisor == 1000 and meta.ignore_label == 255, name
        if "sem_seg" in name:
            assert meta.ignore_label == 255, name


def test_coco_and_ade_metadata_values():
    pan = MetadataCatalog.get("coco_2017_val_panoptic_with_sem_seg")
    assert len(pan.stuff_classes) == len(pan.stuff_colors) == 133
    assert len(pan.thing_classes) == len(pan.thing_colors) == 80
    assert pan.thing_dataset_id_to_contiguous_id[1] == 0 and pan.stuff_dataset_id_to_contiguous_id[200] == 132
    assert len(pan.stuff_dataset_id_to_contiguous_id) == 133
    assert pan.evaluator_type == "coco_panoptic_seg"
    assert pan.sem_seg_root.endswith("panoptic_semseg_val2017")
    standard = MetadataCatalog.get("coco_2017_val_panoptic")
    assert len(standard.thing_classes) == 80 and len(standard.stuff_dataset_id_to_contiguous_id) == 53
    inst = MetadataCatalog.get("coco_2017_train")
    assert inst.thing_dataset_id_to_contiguous_id[90] == 79 and inst.evaluator_type == "coco"
    ade = MetadataCatalog.get("ade20k_sem_seg_val")
    assert len(ade.stuff_classes) == len(ade.stuff_colors) == 150 and ade.evaluator_type == "sem_seg"
    ade_pan = MetadataCatalog.get("ade20k_panoptic_val")
    assert len(ade_pan.thing_classes) == 100 and ade_pan.evaluator_type == "ade20k_panoptic_seg"
    ade_ins = MetadataCatalog.get("ade20k_instance_val")
    assert ade_ins.thing_dataset_id_to_contiguous_id[7] == 0 and len(ade_ins.thing_classes) == 100
    city = MetadataCatalog.get("cityscapes_fine_panoptic_val")
    assert city.thing_dataset_id_to_contiguous_id[24] == 11 and city.stuff_dataset_id_to_contiguous_id[7] == 0


def test_registration_reads_the_root_from_env(tmp_path):
    code = (
        "from mask2former.data.datasets import *\n"
        "from mask2former.data.catalog import DatasetCatalog, MetadataCatalog\n"
        # a name only this package registers (Detectron2, when installed, registers coco_2017_val)
        "print(MetadataCatalog.get('coco_2017_val_panoptic_with_sem_seg').image_root)\n"
        "try:\n    DatasetCatalog.get('coco_2017_val_panoptic_with_sem_seg')\n"
        "except FileNotFoundError as e:\n    print('ERR', e)\n"
    )
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "nowhere"))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == str(tmp_path / "nowhere" / "coco" / "val2017")
    assert out[1].startswith("ERR") and str(tmp_path / "nowhere") in out[1]
    assert "datasets/README.md" in out[1]


def test_missing_root_raises_naming_the_path(tmp_path):
    missing = tmp_path / "missing"
    register_coco_instances(
        "_test_missing_coco", get_builtin_metadata("coco"),
        str(missing / "instances.json"), str(missing / "images"),
    )
    try:
        with pytest.raises(FileNotFoundError, match="instances.json") as err:
            DatasetCatalog.get("_test_missing_coco")
        assert "README" in str(err.value)
    finally:
        DatasetCatalog.remove("_test_missing_coco")
        MetadataCatalog.remove("_test_missing_coco")
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_sem_seg(str(missing / "labels"), str(missing / "images"), layout="x")


# ----------------------------------------------------------------------------- loaders
def test_coco_panoptic_loader(datasets_root):
    meta = get_builtin_metadata("coco_panoptic")
    dicts = load_coco_panoptic_json(
        str(datasets_root / "coco/annotations/panoptic_val2017.json"),
        str(datasets_root / "coco/val2017"),
        str(datasets_root / "coco/panoptic_val2017"),
        meta,
    )
    assert len(dicts) == 3
    segments = [s for d in dicts for s in d["segments_info"]]
    assert len(segments) == 56 and sum(s["iscrowd"] for s in segments) == 3
    for d in dicts:
        assert os.path.isfile(d["file_name"]) and os.path.isfile(d["pan_seg_file_name"])
        assert isinstance(d["image_id"], int) and d["height"] > 0 and d["width"] > 0
        assert "sem_seg_file_name" not in d
        ids = rgb2id(np.asarray(Image.open(d["pan_seg_file_name"])))
        assert {s["id"] for s in d["segments_info"]} <= set(np.unique(ids).tolist())
    for s in segments:
        assert 0 <= s["category_id"] < 133
        assert s["isthing"] == (s["category_id"] < 80)


def test_coco_instances_loader(datasets_root):
    dicts = load_coco_json(
        str(datasets_root / "coco/annotations/instances_train2017.json"),
        str(datasets_root / "coco/train2017"),
        "coco_2017_train",
    )
    assert len(dicts) == 80
    annos = [a for d in dicts for a in d["annotations"]]
    assert len(annos) == 739
    assert [d["image_id"] for d in dicts] == sorted(d["image_id"] for d in dicts)
    for a in annos:
        assert a["bbox_mode"] == BoxMode.XYWH_ABS and len(a["bbox"]) == 4
        assert 0 <= a["category_id"] < 80 and a["iscrowd"] in (0, 1)
        assert isinstance(a["segmentation"], (list, dict))
    assert all(os.path.isfile(d["file_name"]) for d in dicts)


def test_registered_coco_names_load_lazily(datasets_root):
    root = str(datasets_root)
    register_coco_instances(
        "_test_coco_val", get_builtin_metadata("coco"),
        os.path.join(root, "coco/annotations/instances_val2017.json"), os.path.join(root, "coco/val2017"),
    )
    try:
        dicts = DatasetCatalog.get("_test_coco_val")
        assert len(dicts) == 3 and sum(len(d["annotations"]) for d in dicts) == 49
    finally:
        DatasetCatalog.remove("_test_coco_val")
        MetadataCatalog.remove("_test_coco_val")


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory, datasets_root):
    """A dataset root in tmp with the generated COCO semantic and ADE20K labels (inputs symlinked)."""
    out = tmp_path_factory.mktemp("prepared")
    prepare_coco_sem.main(
        ["--dataset-root", str(datasets_root), "--output-root", str(out), "--splits", "val2017",
         "--workers", "0"]
    )
    prepare_ade20k_sem_seg.main(
        ["--dataset-root", str(datasets_root), "--output-root", str(out), "--splits", "validation"]
    )
    return out


def test_prepare_coco_semantic_from_panoptic(prepared_root, datasets_root):
    meta = get_builtin_metadata("coco_panoptic")
    dicts = load_coco_panoptic_json(
        str(prepared_root / "coco/annotations/panoptic_val2017.json"),
        str(prepared_root / "coco/val2017"),
        str(prepared_root / "coco/panoptic_val2017"),
        meta,
        semseg_dir=str(prepared_root / "coco/panoptic_semseg_val2017"),
    )
    assert len(dicts) == 3
    for d in dicts:
        sem = np.asarray(Image.open(d["sem_seg_file_name"]))
        ids = rgb2id(np.asarray(Image.open(d["pan_seg_file_name"])))
        assert sem.dtype == np.uint8 and sem.shape == ids.shape == (d["height"], d["width"])
        expected = np.full(ids.shape, 255, dtype=np.uint8)
        for s in d["segments_info"]:
            expected[ids == s["id"]] = s["category_id"]
        np.testing.assert_array_equal(sem, expected)
        assert (sem[ids == 0] == 255).all()


def test_ade20k_semantic_loader_and_preparation(prepared_root, datasets_root):
    with pytest.raises(FileNotFoundError, match="annotations_detectron2"):
        load_sem_seg(
            str(datasets_root / "ADEChallengeData2016/annotations_detectron2/validation"),
            str(datasets_root / "ADEChallengeData2016/images/validation"),
            layout="ADEChallengeData2016/annotations_detectron2",
        )
    dicts = load_sem_seg(
        str(prepared_root / "ADEChallengeData2016/annotations_detectron2/validation"),
        str(prepared_root / "ADEChallengeData2016/images/validation"),
        layout="ADE20K",
    )
    assert [Path(d["file_name"]).stem for d in dicts] == [
        "ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"
    ]
    for d in dicts:
        raw = np.asarray(Image.open(datasets_root / "ADEChallengeData2016/annotations/validation"
                                    / Path(d["sem_seg_file_name"]).name))
        label = np.asarray(Image.open(d["sem_seg_file_name"]))
        assert (label[raw == 0] == 255).all()
        np.testing.assert_array_equal(label[raw > 0], raw[raw > 0] - 1)


def _fake_ade_instance_annotations(datasets_root, out_dir):
    """Instance PNGs for the 3 real ADE20K val images: each connected thing region of the raw
    semantic labels is one instance (R = instance class 1..100, G = instance id)."""
    from scipy import ndimage

    sem_to_instance_class = {row[0]: k + 1 for k, row in enumerate(ADE20K_INSTANCE_CATEGORIES)}
    out_dir.mkdir(parents=True)
    expected = {}
    for png in sorted((datasets_root / "ADEChallengeData2016/annotations/validation").glob("*.png")):
        cls = np.asarray(Image.open(png)).astype(int) - 1
        ins = np.zeros(cls.shape + (3,), dtype=np.uint8)
        n = 0
        for c in np.unique(cls):
            if c in sem_to_instance_class:
                comps, num = ndimage.label(cls == c)
                for k in range(1, num + 1):
                    n += 1
                    ins[comps == k] = (sem_to_instance_class[c], n, 0)
        Image.fromarray(ins).save(out_dir / png.name)
        expected[png.stem] = (n, cls)
    return expected


def test_ade20k_panoptic_and_instance_preparation(tmp_path, datasets_root):
    ade = datasets_root / "ADEChallengeData2016"
    expected = _fake_ade_instance_annotations(datasets_root, tmp_path / "annotations_instance")
    count = ade20k_panoptic_from_instances(
        str(ade / "images/validation"), str(ade / "annotations/validation"),
        str(tmp_path / "annotations_instance"), str(tmp_path / "pan"), str(tmp_path / "pan.json"),
    )
    assert count == 3
    meta = get_builtin_metadata("ade20k_panoptic")
    sem_dir = tmp_path / "sem"
    sem_dir.mkdir()
    for stem, (_, cls) in expected.items():
        Image.fromarray(cls.astype(np.uint8)).save(sem_dir / f"{stem}.png")
    dicts = load_coco_panoptic_json(
        str(tmp_path / "pan.json"), str(ade / "images/validation"), str(tmp_path / "pan"), meta,
        semseg_dir=str(sem_dir),
    )
    assert [d["image_id"] for d in dicts] == sorted(expected)
    for d in dicts:
        n_things, cls = expected[d["image_id"]]
        ids = rgb2id(np.asarray(Image.open(d["pan_seg_file_name"])))
        things = [s for s in d["segments_info"] if s["isthing"]]
        assert len(things) == n_things
        for s in d["segments_info"]:
            mask = ids == s["id"]
            assert mask.sum() == s["area"] > 0
            assert (cls[mask] == s["category_id"]).all()  # labels agree with the raw classes
        assert ((ids == 0) == (cls == -1)).all()  # "other" pixels are void
    n = ade20k_instance_json(
        str(ade / "images/validation"), str(tmp_path / "annotations_instance"), str(tmp_path / "ins.json")
    )
    assert n == sum(v[0] for v in expected.values())
    register_coco_instances(
        "_test_ade_ins", get_builtin_metadata("ade20k_instance"), str(tmp_path / "ins.json"),
        str(ade / "images/validation"),
    )
    try:
        ins = DatasetCatalog.get("_test_ade_ins")
    finally:
        DatasetCatalog.remove("_test_ade_ins")
        MetadataCatalog.remove("_test_ade_ins")
    assert len(ins) == 3 and sum(len(d["annotations"]) for d in ins) == n
    assert all(0 <= a["category_id"] < 100 for d in ins for a in d["annotations"])


def test_rgb_id_roundtrip():
    ids = np.array([[0, 1, 255], [256, 65535, 16777215]])
    np.testing.assert_array_equal(rgb2id(id2rgb(ids)), ids)


# ----------------------------------------------------------------------------- cityscapes
@pytest.fixture
def tiny_cityscapes(tmp_path):
    """A 1-image Cityscapes layout: 8x12 pixels with road, two cars and a crowd of persons."""
    root = tmp_path / "cityscapes"
    (root / "leftImg8bit/val/aachen").mkdir(parents=True)
    (root / "gtFine/val/aachen").mkdir(parents=True)
    stem = "aachen_000000_000019"
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(root / f"leftImg8bit/val/aachen/{stem}_leftImg8bit.png")
    inst = np.full((8, 12), 7, dtype=np.uint16)  # road (label 7), no instances
    inst[1:3, 1:4] = 26000  # car #0
    inst[4:7, 6:9] = 26001  # car #1
    inst[0, 10:12] = 24  # person crowd region
    Image.fromarray(inst).save(root / f"gtFine/val/aachen/{stem}_gtFine_instanceIds.png")
    train_ids = np.where(inst == 7, 0, np.where(inst >= 26000, 13, 11)).astype(np.uint8)
    Image.fromarray(train_ids).save(root / f"gtFine/val/aachen/{stem}_gtFine_labelTrainIds.png")
    pan_dir = root / "gtFine/cityscapes_panoptic_val"
    pan_dir.mkdir()
    pan_ids = np.where(inst >= 26000, inst, np.where(inst == 7, 7, 0))
    Image.fromarray(id2rgb(pan_ids)).save(pan_dir / f"{stem}_gtFine_panoptic.png")
    segments = [{"id": 7, "category_id": 7, "iscrowd": 0}, {"id": 26000, "category_id": 26, "iscrowd": 0},
                {"id": 26001, "category_id": 26, "iscrowd": 0}]
    with open(root / "gtFine/cityscapes_panoptic_val.json", "w") as f:
        json.dump({"annotations": [{"image_id": stem, "file_name": f"{stem}_gtFine_panoptic.png",
                                    "segments_info": segments}]}, f)
    return root


def test_cityscapes_loaders(tiny_cityscapes):
    root = tiny_cityscapes
    sem = load_cityscapes_semantic(str(root / "leftImg8bit/val"), str(root / "gtFine/val"))
    assert len(sem) == 1 and (sem[0]["height"], sem[0]["width"]) == (8, 12)
    assert os.path.isfile(sem[0]["sem_seg_file_name"])
    ins = load_cityscapes_instances(str(root / "leftImg8bit/val"), str(root / "gtFine/val"), num_workers=0)
    annos = ins[0]["annotations"]
    assert sorted((a["category_id"], a["iscrowd"]) for a in annos) == [(0, 1), (2, 0), (2, 0)]
    car = next(a for a in annos if a["bbox"][0] == 1)
    assert car["bbox"] == [1.0, 1.0, 3.0, 2.0] and car["bbox_mode"] == BoxMode.XYWH_ABS
    pan = load_cityscapes_panoptic(
        str(root / "leftImg8bit/val"), str(root / "gtFine/cityscapes_panoptic_val"),
        str(root / "gtFine/cityscapes_panoptic_val.json"), get_builtin_metadata("cityscapes_panoptic"),
    )
    assert [(s["category_id"], s["isthing"]) for s in pan[0]["segments_info"]] == [
        (0, False), (13, True), (13, True)
    ]
    with pytest.raises(FileNotFoundError, match="leftImg8bit/train"):
        load_cityscapes_semantic(str(root / "leftImg8bit/train"), str(root / "gtFine/train"))
