"""Test-time shortest-edge resize: sizes and pixels as Detectron2's ResizeShortestEdge."""

import numpy as np
import pytest
import torch
from fvcore.transforms import NoOpTransform
from PIL import Image

from mask2former.data.image_io import read_image
from mask2former.data.transforms import ResizeShortestEdge, ResizeTransform

# (fixture, image id, path under datasets/) of the parity fixtures' real images.
FIXTURE_IMAGES = [
    ("thin_r50_coco_panoptic", "000000039769", "coco/val2017/000000039769.jpg"),
    ("thin_r50_coco_panoptic", "000000142238", "coco/val2017/000000142238.jpg"),
    ("thin_r50_coco_panoptic", "000000439180", "coco/val2017/000000439180.jpg"),
    (
        "thin_r50_ade20k_semantic",
        "ADE_val_00000001",
        "ADEChallengeData2016/images/validation/ADE_val_00000001.jpg",
    ),
]


@pytest.mark.parametrize(
    "old_hw, short, max_size, expected",
    [
        ((480, 640), 800, 1333, (800, 1067)),  # landscape, 1066.67 rounds up
        ((640, 480), 800, 1333, (1067, 800)),  # portrait
        ((360, 640), 800, 1333, (750, 1333)),  # long edge capped
        ((512, 683), 256, 384, (256, 342)),  # 341.5 -> int(x + 0.5) = 342
        ((300, 300), 256, 384, (256, 256)),
        ((100, 2000), 800, 1333, (67, 1333)),  # 66.65 -> 67
    ],
)
def test_output_shape(old_hw, short, max_size, expected):
    assert ResizeShortestEdge.get_output_shape(*old_hw, short, max_size) == expected


@pytest.mark.parametrize("fixture, image_id, rel_path", FIXTURE_IMAGES)
def test_resize_equals_reference_model_input(
    reference_dir, datasets_root, fixture, image_id, rel_path
):
    """The fixtures store the exact network input the original pipeline produced (256/384)."""
    expected = np.load(reference_dir / fixture / f"{image_id}.npz")["image"].transpose(1, 2, 0)
    image = read_image(datasets_root / rel_path, format="RGB")
    resized = ResizeShortestEdge(256, 384).get_transform(image).apply_image(image)
    assert resized.dtype == np.uint8
    np.testing.assert_array_equal(resized, expected)


def test_uint8_uses_pil_bilinear():
    image = np.random.RandomState(0).randint(0, 256, (37, 53, 3), dtype=np.uint8)
    out = ResizeTransform(37, 53, 20, 29).apply_image(image)
    expected = np.asarray(Image.fromarray(image).resize((29, 20), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out, expected)
    single_channel = ResizeTransform(37, 53, 20, 29).apply_image(image[:, :, :1])
    assert single_channel.shape == (20, 29, 1)


def test_float_uses_torch_interpolate():
    image = np.random.RandomState(1).rand(37, 53, 3).astype(np.float32)
    out = ResizeTransform(37, 53, 20, 29).apply_image(image)
    expected = (
        torch.nn.functional.interpolate(
            torch.from_numpy(image).permute(2, 0, 1)[None],
            size=(20, 29),
            mode="bilinear",
            align_corners=False,
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_segmentation_keeps_labels_and_inverse():
    labels = np.zeros((40, 60), dtype=np.uint8)
    labels[10:30, 20:50] = 7
    labels[0:5, 0:5] = 255
    transform = ResizeShortestEdge(20, 1000).get_transform(labels)
    resized = transform.apply_segmentation(labels)
    assert resized.shape == (20, 30)
    assert set(np.unique(resized)) == {0, 7, 255}
    assert transform.inverse().apply_segmentation(resized).shape == (40, 60)


def test_zero_size_is_noop_and_errors():
    image = np.zeros((10, 20, 3), np.uint8)
    assert isinstance(ResizeShortestEdge(0, 1333).get_transform(image), NoOpTransform)
    with pytest.raises(ValueError, match="10x20"):
        ResizeTransform(10, 20, 5, 10).apply_image(np.zeros((11, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="sample_style"):
        ResizeShortestEdge(800, 1333, sample_style="uniform")


def test_choice_and_range_sampling():
    image = np.zeros((100, 200, 3), np.uint8)
    np.random.seed(0)
    sizes = {
        ResizeShortestEdge((40, 60), 1000, "choice").get_transform(image).new_h for _ in range(30)
    }
    assert sizes == {40, 60}
    sizes = {
        ResizeShortestEdge((40, 44), 1000, "range").get_transform(image).new_h for _ in range(60)
    }
    assert sizes == {40, 41, 42, 43, 44}
