"""Instances / Boxes / ImageList: the Detectron2 API subset the model relies on."""
import pytest
import torch

from mask2former.structures import Boxes, ImageList, Instances, masks_to_boxes


def _instances():
    inst = Instances((10, 20))
    inst.scores = torch.tensor([0.9, 0.5, 0.1])
    inst.pred_boxes = Boxes(torch.tensor([[0, 0, 4, 2], [1, 1, 3, 5], [2, 2, 30, 3]], dtype=torch.float32))
    inst.set("labels", torch.tensor([7, 8, 9]))
    return inst


def test_instances_fields_and_indexing():
    inst = _instances()
    assert inst.image_size == (10, 20) and len(inst) == 3
    assert inst.has("scores") and not inst.has("masks")
    assert inst.get("labels").tolist() == [7, 8, 9]
    assert set(inst.get_fields()) == {"scores", "pred_boxes", "labels"}
    with pytest.raises(AttributeError, match="masks"):
        inst.masks
    with pytest.raises((ValueError, AssertionError)):  # Detectron2's class asserts
        inst.masks = torch.zeros(2, 1, 1)

    one = inst[1]
    assert len(one) == 1 and one.scores.tolist() == [0.5] and one.labels.tolist() == [8]
    assert inst[-1].pred_boxes.tensor.tolist() == [[2, 2, 30, 3]]
    with pytest.raises(IndexError):
        inst[3]
    assert inst[1:].scores.tolist() == pytest.approx([0.5, 0.1])
    kept = inst[inst.scores > 0.3]
    assert len(kept) == 2 and kept.pred_boxes.tensor[1].tolist() == [1, 1, 3, 5]
    picked = inst[torch.tensor([2, 0])]
    assert picked.scores.tolist() == pytest.approx([0.1, 0.9])

    if not Instances.__module__.startswith("detectron2."):  # Detectron2's Boxes.to takes a device only
        moved = inst.to(torch.float64)
        assert moved.scores.dtype == torch.float64 and moved.labels.tolist() == [7, 8, 9]
    moved = inst.to("cpu")
    assert moved.scores.tolist() == inst.scores.tolist() and len(moved.pred_boxes) == 3

    both = Instances.cat([inst, inst[:1]])
    assert len(both) == 4 and both.labels.tolist() == [7, 8, 9, 7] and len(both.pred_boxes) == 4
    with pytest.raises((ValueError, AssertionError)):
        other = Instances((1, 1), scores=torch.zeros(1), labels=torch.zeros(1))
        other.pred_boxes = Boxes(torch.zeros(1, 4))
        Instances.cat([inst, other])


    # List fields support int/slice indexing and concatenation.
    named = Instances((1, 1), names=["a", "b", "c"])
    assert named[1:].names == ["b", "c"] and named[0].names == ["a"]
    assert Instances.cat([named, named[2:]]).names == ["a", "b", "c", "c"]


def test_boxes_area_clip_and_devices():
    boxes = Boxes(torch.tensor([[0, 0, 4, 2], [-5, 1, 30, 5]], dtype=torch.float32))
    assert boxes.area().tolist() == [8, 140]
    boxes.clip((4, 20))
    assert boxes.tensor.tolist() == [[0, 0, 4, 2], [0, 1, 20, 4]]
    assert len(boxes) == 2 and boxes.to("cpu").tensor.device.type == "cpu"
    assert len(Boxes(torch.zeros(0))) == 0


def test_image_list_pads_bottom_right_to_divisibility():
    a, b = torch.ones(3, 5, 7), 2 * torch.ones(3, 9, 4)
    batch = ImageList.from_tensors([a, b], size_divisibility=8, pad_value=-1.0)
    assert batch.tensor.shape == (2, 3, 16, 8)
    assert batch.image_sizes == [(5, 7), (9, 4)] and len(batch) == 2
    torch.testing.assert_close(batch[0], a)
    torch.testing.assert_close(batch[1], b)
    assert batch.tensor[0, :, 5:].eq(-1).all() and batch.tensor[1, :, :, 4:].eq(-1).all()
    single = ImageList.from_tensors([a])
    assert single.tensor.shape == (1, 3, 5, 7)


def test_masks_to_boxes_matches_bitmask_convention():
    masks = torch.zeros(3, 4, 5, dtype=torch.bool)
    masks[0, 1, 2] = True
    masks[1, 0:4, 1:3] = True
    boxes = masks_to_boxes(masks)
    assert isinstance(boxes, Boxes)
    # Exclusive right/bottom edges; an empty mask gets the zero box.
    assert boxes.tensor.tolist() == [[2, 1, 3, 2], [1, 0, 3, 4], [0, 0, 0, 0]]
    assert masks_to_boxes(torch.zeros(0, 4, 5, dtype=torch.bool)).tensor.shape == (0, 4)
