"""Dataset mappers and augmentation policies on the real COCO / ADE20K samples."""
import numpy as np
import pytest
import torch
from fvcore.transforms.transform import HFlipTransform, NoOpTransform, TransformList
from PIL import Image

from mask2former.config import get_cfg
from mask2former.data.dataset_mappers import (
    COCOInstanceNewBaselineDatasetMapper,
    COCOPanopticNewBaselineDatasetMapper,
    ColorAugSSD,
    FixedSizeCrop,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    RandomCropCategoryAreaConstraint,
    RandomFlip,
    ResizeScale,
    apply_augmentations,
    build_dataset_mapper,
    mapper_names,
)
from mask2former.data.dataset_mappers.common import annotation_masks
from mask2former.data.datasets import get_builtin_metadata, load_coco_json, load_coco_panoptic_json
from mask2former.data.image_io import read_image

SIZE = 256  # small LSJ size to keep the tests fast


@pytest.fixture(scope="module")
def panoptic_dicts(datasets_root):
    return load_coco_panoptic_json(
        str(datasets_root / "coco/annotations/panoptic_val2017.json"),
        str(datasets_root / "coco/val2017"),
        str(datasets_root / "coco/panoptic_val2017"),
        get_builtin_metadata("coco_panoptic"),
    )


@pytest.fixture(scope="module")
def instance_dicts(datasets_root):
    return load_coco_json(
        str(datasets_root / "coco/annotations/instances_val2017.json"),
        str(datasets_root / "coco/val2017"),
        "coco_2017_val",
    )


@pytest.fixture
def cfg():
    cfg = get_cfg()
    cfg.INPUT.IMAGE_SIZE = SIZE
    cfg.INPUT.FORMAT = "RGB"
    return cfg


def _lsj_cfg(cfg, name):
    cfg.INPUT.DATASET_MAPPER_NAME = name
    return cfg


def _semantic_cfg(cfg, name="mask_former_semantic"):
    cfg.INPUT.DATASET_MAPPER_NAME = name
    cfg.INPUT.MIN_SIZE_TRAIN = (128, 160, 192)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MAX_SIZE_TRAIN = 512
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (128, 128)
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    cfg.INPUT.COLOR_AUG_SSD = True
    cfg.INPUT.SIZE_DIVISIBILITY = 128
    cfg.DATASETS.TRAIN = ("coco_2017_train_panoptic_with_sem_seg",)
    return cfg


def test_registry_names_and_build(cfg):
    assert mapper_names() == [
        "coco_instance_lsj", "coco_panoptic_lsj", "coco_pseudo_clip", "mask_former_instance",
        "mask_former_panoptic", "mask_former_semantic", "ytvis_clip",
    ]
    assert isinstance(build_dataset_mapper(_lsj_cfg(cfg, "coco_panoptic_lsj")), COCOPanopticNewBaselineDatasetMapper)
    cfg = _semantic_cfg(cfg, "mask_former_instance")
    assert isinstance(build_dataset_mapper(cfg), MaskFormerInstanceDatasetMapper)
    cfg.INPUT.DATASET_MAPPER_NAME = "nope"
    with pytest.raises(KeyError, match="nope"):
        build_dataset_mapper(cfg)


def test_coco_panoptic_lsj_output(cfg, panoptic_dicts):
    mapper = COCOPanopticNewBaselineDatasetMapper(_lsj_cfg(cfg, "coco_panoptic_lsj"), True)
    np.random.seed(0)
    for d in panoptic_dicts:
        out = mapper(d)
        image, inst = out["image"], out["instances"]
        assert image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE)
        n = sum(1 for s in d["segments_info"] if not s["iscrowd"])
        assert inst.gt_classes.dtype == torch.int64 and inst.gt_classes.shape == (n,)
        assert inst.gt_masks.dtype == torch.bool and inst.gt_masks.shape == (n, SIZE, SIZE)
        assert inst.gt_boxes.tensor.shape == (n, 4)
        assert (inst.gt_masks.sum(0) <= 1).all()  # segments do not overlap
        assert not inst.gt_masks[:, out["padding_mask"]].any()  # nothing in the padding
        assert (image[:, out["padding_mask"]] == 128).all()
        assert "pan_seg_file_name" not in out and "pan_seg_file_name" in d  # input untouched


def test_coco_instance_lsj_output(cfg, instance_dicts):
    mapper = COCOInstanceNewBaselineDatasetMapper(_lsj_cfg(cfg, "coco_instance_lsj"), True)
    np.random.seed(1)
    for d in instance_dicts:
        out = mapper(d)
        inst = out["instances"]
        assert out["image"].shape == (3, SIZE, SIZE)
        assert inst.gt_masks.shape[1:] == (SIZE, SIZE) and inst.gt_masks.dtype == torch.bool
        assert len(inst) <= sum(1 for a in d["annotations"] if not a.get("iscrowd", 0))
        assert inst.gt_masks.flatten(1).any(1).all()  # empty masks are dropped
        assert ((0 <= inst.gt_classes) & (inst.gt_classes < 80)).all()
        assert "annotations" not in out


def _flip_only(mapper):
    mapper.augmentations = [RandomFlip(prob=1.0)]
    return mapper


def test_panoptic_masks_follow_the_flip_exactly(cfg, panoptic_dicts):
    mapper = COCOPanopticNewBaselineDatasetMapper(_lsj_cfg(cfg, "coco_panoptic_lsj"), True)
    d = panoptic_dicts[0]
    plain = mapper.__class__(True, augmentations=[], image_format="RGB")(d)
    flipped = _flip_only(mapper)(d)
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    a, b = plain["instances"].gt_masks, flipped["instances"].gt_masks
    assert torch.equal(b, a.flip(-1))
    assert (b.sum((1, 2)) == a.sum((1, 2))).all() and a.sum() > 0


def test_polygon_masks_follow_the_flip(cfg, instance_dicts):
    d = max(instance_dicts, key=lambda x: len(x["annotations"]))
    mapper = COCOInstanceNewBaselineDatasetMapper(_lsj_cfg(cfg, "coco_instance_lsj"), True)
    plain = mapper.__class__(True, augmentations=[], image_format="RGB")(d)
    flipped = _flip_only(mapper)(d)
    a, b = plain["instances"].gt_masks, flipped["instances"].gt_masks.flip(-1)
    assert len(a) == len(b) > 0
    inter = (a & b).sum((1, 2)).float()
    union = (a | b).sum((1, 2)).float()
    big = a.sum((1, 2)) > 500
    assert (inter[big] / union[big] > 0.97).all()
    counts_a, counts_b = a.sum((1, 2)).float(), b.sum((1, 2)).float()
    assert ((counts_a - counts_b).abs()[big] / counts_a[big] < 0.02).all()


def test_annotation_masks_rle_padding_is_background():
    rle_mask = np.zeros((6, 8), dtype=np.uint8)
    rle_mask[1:3, 2:5] = 1
    import pycocotools.mask as mask_util

    anno = {"segmentation": mask_util.encode(np.asfortranarray(rle_mask))}
    tfm = FixedSizeCrop((10, 10)).get_transform(np.zeros((6, 8, 3), np.uint8))
    masks = annotation_masks([anno], tfm, (6, 8), (10, 10))
    assert masks.shape == (1, 10, 10) and masks.sum() == 6 and not masks[0, 6:].any()
    poly = {"segmentation": [[2.0, 1.0, 5.0, 1.0, 5.0, 3.0, 2.0, 3.0]]}
    masks = annotation_masks([poly], HFlipTransform(8), (6, 8), (6, 8))
    np.testing.assert_array_equal(masks[0], rle_mask[:, ::-1].astype(bool))


def test_empty_annotations_give_empty_targets(cfg, panoptic_dicts, instance_dicts, tmp_path):
    d = dict(panoptic_dicts[0], segments_info=[])
    out = COCOPanopticNewBaselineDatasetMapper(_lsj_cfg(cfg, "coco_panoptic_lsj"), True)(d)
    assert out["instances"].gt_masks.shape == (0, SIZE, SIZE)
    assert out["instances"].gt_classes.shape == (0,) and out["instances"].gt_classes.dtype == torch.int64
    d = dict(instance_dicts[0], annotations=[])
    out = COCOInstanceNewBaselineDatasetMapper(_lsj_cfg(cfg, "coco_instance_lsj"), True)(d)
    assert out["instances"].gt_masks.shape == (0, SIZE, SIZE)
    out = MaskFormerInstanceDatasetMapper(_semantic_cfg(cfg, "mask_former_instance"), True)(d)
    assert out["instances"].gt_masks.shape == (0,) + tuple(out["image"].shape[-2:])
    # a semantic label map that is all "ignore"
    label = tmp_path / "ignore.png"
    Image.fromarray(np.full((d["height"], d["width"]), 255, np.uint8)).save(label)
    sem = MaskFormerSemanticDatasetMapper(_semantic_cfg(cfg), True)
    out = sem({"file_name": d["file_name"], "sem_seg_file_name": str(label)})
    assert out["instances"].gt_masks.shape == (0, 128, 128)
    assert (out["sem_seg"] == 255).all()


def test_lsj_determinism_with_a_seed(cfg, panoptic_dicts):
    mapper = COCOPanopticNewBaselineDatasetMapper(_lsj_cfg(cfg, "coco_panoptic_lsj"), True)
    d = panoptic_dicts[1]
    runs = []
    for seed in (3, 3, 4):
        np.random.seed(seed)
        runs.append(mapper(d))
    assert torch.equal(runs[0]["image"], runs[1]["image"])
    assert torch.equal(runs[0]["instances"].gt_masks, runs[1]["instances"].gt_masks)
    assert not torch.equal(runs[0]["image"], runs[2]["image"])


def test_semantic_mapper(cfg, panoptic_dicts, tmp_path):
    d = panoptic_dicts[2]
    ids = np.asarray(read_image(d["pan_seg_file_name"], format="RGB")).astype(np.int64)
    ids = ids[..., 0] + 256 * ids[..., 1] + 65536 * ids[..., 2]
    label = np.full(ids.shape, 255, np.uint8)
    for s in d["segments_info"]:
        label[ids == s["id"]] = s["category_id"]
    Image.fromarray(label).save(tmp_path / "sem.png")
    dd = {"file_name": d["file_name"], "sem_seg_file_name": str(tmp_path / "sem.png"),
          "height": d["height"], "width": d["width"]}
    mapper = MaskFormerSemanticDatasetMapper(_semantic_cfg(cfg), True)
    np.random.seed(0)
    for _ in range(3):
        out = mapper(dd)
        image, sem, inst = out["image"], out["sem_seg"], out["instances"]
        assert image.dtype == torch.uint8 and image.shape == (3, 128, 128)
        assert sem.dtype == torch.int64 and sem.shape == (128, 128)
        present = sorted(set(torch.unique(sem).tolist()) - {255})
        assert inst.gt_classes.tolist() == present
        assert set(present) <= set(np.unique(label).tolist())
        for c, m in zip(inst.gt_classes, inst.gt_masks):
            assert torch.equal(m, sem == c)
    with pytest.raises(ValueError, match="sem_seg_file_name"):
        mapper({"file_name": d["file_name"]})
    with pytest.raises(ValueError, match="training only"):
        MaskFormerSemanticDatasetMapper(_semantic_cfg(cfg), False)


def test_semantic_padding_uses_ignore_label(cfg, panoptic_dicts, tmp_path):
    d = panoptic_dicts[0]
    Image.fromarray(np.zeros((d["height"], d["width"]), np.uint8)).save(tmp_path / "zero.png")
    mapper = MaskFormerSemanticDatasetMapper(
        True, augmentations=[], image_format="RGB", ignore_label=255, size_divisibility=100
    )
    out = mapper({"file_name": d["file_name"], "sem_seg_file_name": str(tmp_path / "zero.png")})
    h, w = d["height"], d["width"]
    assert out["image"].shape[-2:] == (-(-h // 100) * 100, -(-w // 100) * 100)
    assert (out["sem_seg"][h:] == 255).all() and (out["sem_seg"][:h, :w] == 0).all()
    assert (out["image"][:, h:] == 128).all()


def test_panoptic_mapper_with_sem_seg(cfg, panoptic_dicts, tmp_path):
    d = dict(panoptic_dicts[1])
    ids = np.asarray(read_image(d["pan_seg_file_name"], format="RGB")).astype(np.int64)
    ids = ids[..., 0] + 256 * ids[..., 1] + 65536 * ids[..., 2]
    label = np.full(ids.shape, 255, np.uint8)
    for s in d["segments_info"]:
        label[ids == s["id"]] = s["category_id"]
    Image.fromarray(label).save(tmp_path / "sem.png")
    d["sem_seg_file_name"] = str(tmp_path / "sem.png")
    cfg = _semantic_cfg(cfg, "mask_former_panoptic")
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.9
    mapper = MaskFormerPanopticDatasetMapper(cfg, True)
    np.random.seed(5)
    out = mapper(d)
    sem, inst = out["sem_seg"], out["instances"]
    assert out["image"].shape == (3, 128, 128) and sem.shape == (128, 128)
    for c, m in zip(inst.gt_classes, inst.gt_masks):
        assert (sem[m] == c).all()  # panoptic masks agree with the transformed semantic labels


def test_category_area_constraint():
    sem = np.zeros((100, 100), np.uint8)
    sem[:, 60:] = 1
    sem[:, :5] = 255  # ignored: not counted
    # 50x50 windows starting at x0 < 13 are (almost) all class 0; 10 tries find a valid one
    aug = RandomCropCategoryAreaConstraint("absolute", (50, 50), 0.95, ignored_category=255)
    np.random.seed(0)
    for _ in range(5):
        tfm = aug.get_transform(np.zeros((100, 100, 3), np.uint8), sem)
        crop = tfm.apply_segmentation(sem)
        assert crop.shape == (50, 50)
        counts = np.bincount(crop[crop != 255])
        assert counts.max() < 0.95 * counts.sum()
    with pytest.raises(ValueError, match="sem_seg"):
        aug.get_transform(np.zeros((100, 100, 3), np.uint8))


def test_resize_scale_and_fixed_size_crop():
    image = np.zeros((300, 400, 3), np.uint8)
    np.random.seed(0)
    for _ in range(5):
        out, _, tfm = apply_augmentations([ResizeScale(0.1, 2.0, 256, 256), FixedSizeCrop((256, 256))], image)
        assert out.shape == (256, 256, 3) and isinstance(tfm, TransformList)
    np.random.seed(0)
    scale = np.random.uniform(0.1, 2.0)
    np.random.seed(0)
    resize = ResizeScale(0.1, 2.0, 256, 256).get_transform(image)
    factor = min(scale * 256 / 300, scale * 256 / 400)
    assert (resize.new_h, resize.new_w) == (round(300 * factor), round(400 * factor))


def test_color_aug_ssd_changes_colours_only():
    image = (np.random.RandomState(0).rand(32, 48, 3) * 255).astype(np.uint8)
    seg = np.arange(32 * 48).reshape(32, 48)
    np.random.seed(2)
    changed = 0
    for _ in range(8):
        tfm = ColorAugSSD("RGB").get_transform(image)
        out = tfm.apply_image(image)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert tfm.apply_segmentation(seg) is seg
        changed += not np.array_equal(out, image)
    assert changed > 0
    assert isinstance(RandomFlip(prob=0.0).get_transform(image), NoOpTransform)
