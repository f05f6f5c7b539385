"""Visualizer: colours, thresholds and class lookup of the panoptic/instance/semantic overlays."""

import json
import types

import numpy as np
import pytest
import torch

from mask2former.structures import Boxes, Instances
from mask2former.utils.visualizer import Visualizer

H, W = 120, 160
GREY = 100


def _image():
    return np.full((H, W, 3), GREY, np.uint8)


def _blend(color, alpha=0.5):
    return np.round(GREY * (1 - alpha) + np.asarray(color, np.float64) * alpha)


def _meta(**kwargs):
    defaults = dict(
        thing_classes=["cat", "dog"],
        thing_colors=[[250, 0, 0], [0, 250, 0]],
        stuff_classes=["cat", "dog", "sky"],
        stuff_colors=[[250, 0, 0], [0, 250, 0], [0, 0, 250]],
    )
    defaults.update(kwargs)
    return types.SimpleNamespace(**defaults)


def test_semantic_colours_and_ignore():
    labels = np.full((H, W), 255, np.int64)
    labels[:60] = 2
    out = Visualizer(_image(), _meta()).draw_sem_seg(torch.from_numpy(labels))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[5, 5], _blend([0, 0, 250]))  # away from the label and border
    np.testing.assert_array_equal(out[110, 150], [GREY] * 3)  # ignore label 255 is not drawn


def test_panoptic_stuff_thing_and_void():
    ids = np.zeros((H, W), np.int32)
    ids[:, :50] = 1
    ids[80:, 100:] = 7
    info = [
        {"id": 1, "category_id": 2, "isthing": False},
        {"id": 7, "category_id": 1, "isthing": True},
    ]
    image = _image()
    out = Visualizer(image, _meta()).draw_panoptic_seg(ids, info)
    np.testing.assert_array_equal(out[3, 3], _blend([0, 0, 250]))  # stuff: exact stuff colour
    thing = out[85, 105].astype(int)
    assert (
        np.abs(thing - _blend([0, 250, 0])).max() <= 20 and thing[1] > thing[0]
    )  # jittered dog colour
    np.testing.assert_array_equal(out[40, 75], [GREY] * 3)  # void
    np.testing.assert_array_equal(image, _image())  # input untouched


def test_instances_threshold_and_boxes():
    masks = torch.zeros(2, H, W)
    masks[0, 10:50, 10:50] = 1
    masks[1, 70:110, 100:150] = 1
    instances = Instances(
        (H, W),
        pred_masks=masks,
        scores=torch.tensor([0.9, 0.2]),
        pred_classes=torch.tensor([0, 1]),
        pred_boxes=Boxes(torch.tensor([[10.0, 10.0, 49.0, 49.0], [0.0, 0.0, 0.0, 0.0]])),
    )
    out = Visualizer(_image(), _meta()).draw_instance_predictions(instances, score_threshold=0.5)
    drawn = out[15, 40].astype(int)
    assert drawn[0] > GREY + 50  # the cat (red) instance is drawn
    np.testing.assert_array_equal(out[75, 140], [GREY] * 3)  # score 0.2 < 0.5: not drawn
    everything = Visualizer(_image(), _meta()).draw_instance_predictions(
        instances, score_threshold=0.1
    )
    assert everything[75, 140, 1] > GREY + 50


def test_thing_lookup_when_thing_lists_are_shorter_than_class_ids():
    """ADE20K-panoptic-like metadata: things are classes 3 and 5 of 6, listed in their own order."""
    meta = _meta(
        thing_classes=["person", "car"],
        thing_colors=[[250, 0, 0], [0, 250, 0]],
        stuff_classes=list("abcdef"),
        stuff_colors=[[0, 0, 250]] * 6,
        thing_dataset_id_to_contiguous_id={13: 3, 15: 5},
    )
    ids = np.ones((H, W), np.int32)
    out = Visualizer(_image(), meta).draw_panoptic_seg(
        ids, [{"id": 1, "category_id": 5, "isthing": True}]
    )
    pixel = out[3, 3].astype(int)
    assert (
        pixel[1] > GREY + 50 and pixel[0] < GREY
    )  # "car" colour (thing position 1), not a stuff colour


def test_no_metadata_uses_generic_names_and_palette():
    labels = np.zeros((H, W), np.int64)
    labels[:, 80:] = 4
    out = Visualizer(_image(), None).draw_sem_seg(labels)
    assert not np.array_equal(out[5, 5], out[5, 150])


def test_input_validation():
    with pytest.raises(ValueError, match="uint8"):
        Visualizer(np.zeros((H, W, 3), np.float32))
    with pytest.raises(ValueError, match="sem_seg has shape"):
        Visualizer(_image()).draw_sem_seg(np.zeros((H + 1, W), np.int64))


def test_reference_panoptic_with_builtin_metadata(reference_dir, datasets_root):
    from mask2former.data import MetadataCatalog
    from mask2former.data.image_io import read_image

    reference = np.load(reference_dir / "thin_r50_coco_panoptic" / "000000039769.npz")
    segments_info = json.loads(bytes(reference["panoptic_segments_info"]).decode("utf-8"))
    image = read_image(datasets_root / "coco" / "val2017" / "000000039769.jpg", format="RGB")
    metadata = MetadataCatalog.get("coco_2017_val_panoptic_with_sem_seg")
    out = Visualizer(image, metadata).draw_panoptic_seg(reference["panoptic_seg"], segments_info)
    assert out.shape == image.shape
    changed = (np.abs(out.astype(int) - image.astype(int)).max(axis=2) > 10).mean()
    covered = (reference["panoptic_seg"] > 0).mean()
    assert covered > 0.3 and changed > 0.5 * covered
