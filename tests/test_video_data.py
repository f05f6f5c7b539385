"""Video data: the YouTube-VIS json loader and clip mapper (hand-made videos), and COCO pseudo-clips
cut from the real COCO train images (../shared/data)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from mask2former.config import get_cfg
from mask2former.data import DatasetCatalog, MetadataCatalog
from mask2former.data.datasets import load_coco_json
from mask2former.video.data import (
    COCOPseudoClipDatasetMapper,
    YTVISDatasetMapper,
    load_ytvis_json,
    moving_crop_boxes,
    sample_frame_indices,
)


def test_builtin_ytvis_names_and_metadata():
    for year in (2019, 2021):
        for split in ("train", "val"):
            name = f"ytvis_{year}_{split}"
            assert name in DatasetCatalog.list()
            meta = MetadataCatalog.get(name)
            assert len(meta.thing_classes) == 40 and meta.evaluator_type == "ytvis"
            assert meta.thing_dataset_id_to_contiguous_id == {i: i - 1 for i in range(1, 41)}
            folder = "train" if split == "train" else "valid"
            assert meta.json_file.endswith(f"ytvis_{year}/{folder}.json")
            assert meta.image_root.endswith(f"ytvis_{year}/{folder}/JPEGImages")
    # The fixture's labels 11, 12, 29 are rabbit, duck, zebra (README of the fixture).
    assert [MetadataCatalog.get("ytvis_2019_val").thing_classes[i] for i in (11, 12, 29)] == ["rabbit", "duck", "zebra"]
    assert MetadataCatalog.get("ytvis_2021_train").thing_classes[0] == "airplane"


def _write_video(tmp_path, frames=4, h=24, w=32):
    root = tmp_path / "JPEGImages" / "v1"
    root.mkdir(parents=True)
    names = []
    for t in range(frames):
        Image.fromarray(np.full((h, w, 3), 40 * t, np.uint8)).save(root / f"{t:05d}.jpg")
        names.append(f"v1/{t:05d}.jpg")
    box = np.zeros((h, w), np.uint8)
    box[2:10, 3:13] = 1
    rle = mask_util.encode(np.asfortranarray(box))
    rle["counts"] = rle["counts"].decode()
    poly = [[20.0, 12.0, 30.0, 12.0, 30.0, 22.0, 20.0, 22.0]]
    data = {
        "videos": [{"id": 7, "height": h, "width": w, "length": frames, "file_names": names}],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "lizard"}],
        "annotations": [
            {"id": 11, "video_id": 7, "category_id": 3, "iscrowd": 0, "areas": [80] * frames,
             "segmentations": [rle] * frames, "bboxes": [[3, 2, 10, 8]] * frames},
            {"id": 12, "video_id": 7, "category_id": 1, "iscrowd": 0,
             "segmentations": [None, poly, poly, None], "bboxes": [None, [20, 12, 10, 10], [20, 12, 10, 10], None]},
        ],
    }
    (tmp_path / "train.json").write_text(json.dumps(data))
    return tmp_path / "train.json", tmp_path / "JPEGImages", box


def test_ytvis_json_loader_and_clip_mapper(tmp_path):
    json_file, image_root, box = _write_video(tmp_path)
    (video,) = load_ytvis_json(str(json_file), str(image_root), "ytvis_2019_train")
    assert (video["video_id"], video["length"], video["height"], video["width"]) == (7, 4, 24, 32)
    assert [len(frame) for frame in video["annotations"]] == [1, 2, 2, 1]
    # Dataset ids 3 (lizard) and 1 (person) -> contiguous 2 and 0 of YouTube-VIS 2019.
    assert [a["category_id"] for a in video["annotations"][1]] == [2, 0]

    cfg = get_cfg()
    cfg.merge_from_file("configs/youtubevis_2019/Base.yaml")
    cfg.INPUT.MIN_SIZE_TRAIN = (48,)
    cfg.INPUT.SAMPLING_FRAME_NUM = 3
    np.random.seed(0)
    mapper = YTVISDatasetMapper(cfg, is_train=True)
    for _ in range(5):
        clip = mapper(video)
        assert len(clip["image"]) == len(clip["instances"]) == 3
        assert all(im.shape == (3, 48, 64) for im in clip["image"])
        for t, inst in zip(clip["frame_indices"], clip["instances"]):
            assert inst.gt_masks.shape == (2, 48, 64)
            assert inst.gt_classes.tolist() == [2, 0]
            assert inst.gt_ids.tolist() == [11, 12 if t in (1, 2) else -1]
            assert inst.gt_masks[1].any() == (t in (1, 2))
            # The same flip for the whole clip: the rle box (x 3..12 of 32) at x 6..25 or 38..57 of 64.
            cols = inst.gt_masks[0].any(0).nonzero().flatten()
            assert (cols.min().item(), cols.max().item()) in ((6, 25), (38, 57))
        first = [inst.gt_masks[0] for inst in clip["instances"]]
        assert all(torch.equal(first[0], m) for m in first)

    test_clip = YTVISDatasetMapper(cfg, is_train=False)(video)
    assert len(test_clip["image"]) == 4 and "instances" not in test_clip
    assert test_clip["image"][0].shape == (3, 360, 480)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_ytvis_json(str(tmp_path / "missing.json"), str(image_root))


def test_frame_sampling_stays_in_range():
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = sample_frame_indices(100, 5, 3, False, rng)
        assert len(idx) == 5 and idx == sorted(idx) and max(idx) - min(idx) <= 6
    assert sample_frame_indices(1, 2, 20, False, rng) == [0, 0]


def test_moving_crop_boxes():
    boxes = moving_crop_boxes(480, 640, 6, 0.75, 0.05, np.random.default_rng(3))
    assert boxes.shape == (6, 4)
    assert ((boxes[:, 2] - boxes[:, 0]) == 480).all() and ((boxes[:, 3] - boxes[:, 1]) == 360).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 640).all() and (boxes[:, 3] <= 480).all()
    steps = np.abs(np.diff(boxes[:, :2], axis=0))
    assert (steps[:, 0] <= 0.05 * 640 + 1).all() and (steps[:, 1] <= 0.05 * 480 + 1).all()
    with pytest.raises(ValueError, match="crop_fraction"):
        moving_crop_boxes(10, 10, 2, 1.5, 0.1, np.random.default_rng(0))


@pytest.fixture(scope="module")
def coco_train(datasets_root):
    coco = datasets_root / "coco"
    json_file = str(coco / "annotations/instances_train2017.json")
    return load_coco_json(json_file, str(coco / "train2017"), "coco_2017_train")[:4], COCO(json_file)


def test_pseudo_clip_frames_and_masks_are_the_moving_crops_of_the_image(coco_train):
    records, api = coco_train
    cfg = get_cfg()
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.SAMPLING_FRAME_NUM = 4
    cfg.INPUT.MIN_SIZE_TEST = 0  # no resize: frames are the crops themselves
    mapper = COCOPseudoClipDatasetMapper(cfg, is_train=False)
    for record in records:
        clip = mapper(record)
        assert mapper(record)["crop_boxes"].tolist() == clip["crop_boxes"].tolist()  # deterministic
        image = np.asarray(Image.open(record["file_name"]).convert("RGB"))
        annos = [a for a in api.imgToAnns[record["image_id"]] if not a["iscrowd"]]
        full = np.stack([api.annToMask(a).astype(bool) for a in annos])
        assert len(clip["image"]) == 4 and (clip["height"], clip["width"]) == clip["image"][0].shape[1:]
        assert len({tuple(b[:2]) for b in clip["crop_boxes"].tolist()}) > 1  # the window moves
        for frame, inst, (x0, y0, x1, y1) in zip(clip["image"], clip["instances"], clip["crop_boxes"]):
            np.testing.assert_array_equal(frame.permute(1, 2, 0).numpy(), image[y0:y1, x0:x1])
            crop = full[:, y0:y1, x0:x1]
            # Polygons re-rasterised after the shift: all but a thin border agree with the crop.
            agree = (inst.gt_masks.numpy() == crop).mean(axis=(1, 2))
            assert (agree > 0.99).all()
            np.testing.assert_array_equal(inst.gt_ids.numpy() != -1, inst.gt_masks.numpy().any(axis=(1, 2)))
            np.testing.assert_array_equal(inst.gt_classes.numpy(),
                                          [MetadataCatalog.get("coco_2017_train").thing_dataset_id_to_contiguous_id[a["category_id"]] for a in annos])


def test_pseudo_clip_training_augments_the_clip_as_a_whole(coco_train):
    records, _ = coco_train
    cfg = get_cfg()
    cfg.merge_from_file("configs/youtubevis_2019/Base.yaml")
    cfg.INPUT.MIN_SIZE_TRAIN = (96,)
    cfg.INPUT.SAMPLING_FRAME_NUM = 3
    np.random.seed(1)
    clip = COCOPseudoClipDatasetMapper(cfg, is_train=True)(records[0])
    sizes = {tuple(im.shape) for im in clip["image"]}
    assert len(sizes) == 1 and min(next(iter(sizes))[1:]) == 96
    for inst, image in zip(clip["instances"], clip["image"]):
        assert inst.gt_masks.shape[1:] == image.shape[1:] and inst.gt_masks.dtype == torch.bool


def test_filtering_empty_videos(tmp_path):
    from mask2former.data.build import get_dataset_dicts
    from mask2former.video.data import register_ytvis_instances, ytvis_metadata

    json_file, image_root, _ = _write_video(tmp_path)
    data = json.loads(json_file.read_text())
    data["videos"].append(dict(data["videos"][0], id=8))  # a video without annotations
    json_file.write_text(json.dumps(data))
    name = "ytvis_test_filtering"
    register_ytvis_instances(name, ytvis_metadata(2019), str(json_file), str(image_root))
    try:
        assert len(get_dataset_dicts([name], filter_empty=False)) == 2
        assert [v["video_id"] for v in get_dataset_dicts([name], filter_empty=True)] == [7]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
