"""Semantic test-time augmentation: augmented copies, flip handling and averaging."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from mask2former.config import get_cfg
from mask2former.data.transforms import ResizeShortestEdge
from mask2former.modeling.test_time_augmentation import SemanticSegmentorWithTTA


class _PixelModel(nn.Module):
    """``sem_seg`` = the image's channels (as float) bilinearly resized to (height, width)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, batched_inputs):
        out = []
        for x in batched_inputs:
            self.seen.append((tuple(x["image"].shape), x["height"], x["width"]))
            image = x["image"].float()[None]
            size = (x["height"], x["width"])
            out.append({"sem_seg": F.interpolate(image, size=size, mode="bilinear", align_corners=False)[0]})
        return out


def test_resize_shortest_edge_shape():
    shape = ResizeShortestEdge.get_output_shape
    assert shape(480, 640, 800, 1333) == (800, 1067)
    assert shape(640, 480, 800, 1333) == (1067, 800)
    assert shape(100, 1000, 800, 1333) == (133, 1333)  # capped by max_size


def test_augmented_copies_and_resize_match_pil_bilinear():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 6, 9), dtype=torch.uint8)
    tta = SemanticSegmentorWithTTA(_PixelModel(), min_sizes=[4, 8], max_size=100, flip=True)
    copies = tta.augment({"image": image})
    assert [(tuple(d["image"].shape), flipped) for d, flipped in copies] == [
        ((3, 4, 6), False), ((3, 4, 6), True), ((3, 8, 12), False), ((3, 8, 12), True)
    ]
    assert all(d["height"] == 6 and d["width"] == 9 for d, _ in copies)
    expected = np.asarray(Image.fromarray(image.permute(1, 2, 0).numpy()).resize((12, 8), Image.BILINEAR))
    np.testing.assert_array_equal(copies[2][0]["image"].permute(1, 2, 0).numpy(), expected)
    torch.testing.assert_close(copies[3][0]["image"], copies[2][0]["image"].flip(dims=[2]))


def test_flip_is_undone_and_predictions_are_averaged():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 6, 9), dtype=torch.uint8)
    model = _PixelModel()
    # Shortest edge already 6: the resized copy is the image itself, so the flipped prediction
    # flipped back must equal the plain one, and so must their mean.
    tta = SemanticSegmentorWithTTA(model, min_sizes=[6], max_size=100, flip=True)
    (result,) = tta([{"image": image, "height": 12, "width": 18}])
    plain = model([{"image": image, "height": 12, "width": 18}])[0]["sem_seg"]
    torch.testing.assert_close(result["sem_seg"], plain)
    assert model.seen[:2] == [((3, 6, 9), 12, 18)] * 2

    two_scales = SemanticSegmentorWithTTA(model, min_sizes=[6, 12], max_size=100, flip=False)
    (result,) = two_scales([{"image": image}])
    larger = two_scales.augment({"image": image})[1][0]["image"].float()[None]
    big = F.interpolate(larger, size=(6, 9), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(result["sem_seg"], (image.float() + big) / 2)


def test_from_config_and_errors():
    cfg = get_cfg()
    cfg.TEST.AUG.MIN_SIZES = (320, 480)
    cfg.TEST.AUG.MAX_SIZE = 1000
    cfg.TEST.AUG.FLIP = False
    tta = SemanticSegmentorWithTTA(cfg, _PixelModel())
    assert (tta.min_sizes, tta.max_size, tta.flip) == ([320, 480], 1000, False)
    with pytest.raises(ValueError, match="min_sizes"):
        SemanticSegmentorWithTTA(_PixelModel(), min_sizes=[], max_size=10, flip=False)
