"""Predictor on real COCO images with the thin panoptic fixture weights.

The fixtures were produced by the original implementation at test size 256/384 from the same
images, so the predictor's network input and outputs can be checked against them end to end.
"""

import json

import numpy as np
import pytest
import torch

FIXTURE = "thin_r50_coco_panoptic"
IMAGE_IDS = ("000000039769", "000000439180")


def _cfg(reference_dir, *opts):
    from mask2former import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(reference_dir / FIXTURE / "config.yaml"))
    cfg.merge_from_list(
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.WEIGHTS",
            str(reference_dir / FIXTURE / "model.pkl"),
            "INPUT.MIN_SIZE_TEST",
            256,
            "INPUT.MAX_SIZE_TEST",
            384,
            *opts,
        ]
    )
    return cfg


@pytest.fixture(scope="module")
def predictor(reference_dir):
    from mask2former import Predictor

    return Predictor(_cfg(reference_dir))


@pytest.fixture(scope="module")
def images(datasets_root):
    """BGR uint8 images, decoded with PIL like the reference pipeline."""
    from mask2former.data.image_io import read_image

    return {
        i: read_image(datasets_root / "coco" / "val2017" / f"{i}.jpg", format="BGR")
        for i in IMAGE_IDS
    }


@pytest.fixture(scope="module")
def single_outputs(predictor, images):
    """Outputs of one-image calls, with the network inputs the model received."""
    received = []
    hook = predictor.model.register_forward_pre_hook(lambda module, args: received.extend(args[0]))
    try:
        outputs = {i: predictor(image) for i, image in images.items()}
    finally:
        hook.remove()
    return outputs, received


def test_metadata_and_eval_mode(predictor):
    assert not predictor.model.training
    assert predictor.metadata.name == "coco_2017_val_panoptic_with_sem_seg"
    assert len(predictor.metadata.stuff_classes) == 133


def test_network_input_is_resized_rgb(reference_dir, images, single_outputs):
    _, received = single_outputs
    for image_id, x in zip(IMAGE_IDS, received):
        reference = np.load(reference_dir / FIXTURE / f"{image_id}.npz")
        assert x["image"].dtype == torch.float32
        np.testing.assert_array_equal(x["image"].numpy(), reference["image"].astype(np.float32))
        assert (x["height"], x["width"]) == images[image_id].shape[:2]


def test_outputs_match_reference(reference_dir, images, single_outputs):
    outputs, _ = single_outputs
    for image_id in IMAGE_IDS:
        reference = np.load(reference_dir / FIXTURE / f"{image_id}.npz")
        out = outputs[image_id]
        height, width = images[image_id].shape[:2]
        assert out["sem_seg"].shape == (133, height, width)
        assert (out["sem_seg"].argmax(0).numpy() == reference["sem_seg_argmax"]).mean() > 0.9999
        panoptic_seg, segments_info = out["panoptic_seg"]
        assert (panoptic_seg.numpy() == reference["panoptic_seg"]).mean() > 0.9999
        expected_info = json.loads(bytes(reference["panoptic_segments_info"]).decode("utf-8"))
        assert [(s["id"], s["category_id"], bool(s["isthing"])) for s in segments_info] == [
            (s["id"], s["category_id"], bool(s["isthing"])) for s in expected_info
        ]
        assert len(out["instances"]) == len(reference["instances_scores"])


def test_batched_equals_single(predictor, images, single_outputs):
    outputs, _ = single_outputs
    a, b = (images[i] for i in IMAGE_IDS)
    flipped = np.ascontiguousarray(a[:, ::-1])  # same size as `a`: runs in one batch with it
    batch = predictor.predict_batch([a, b, flipped])
    assert len(batch) == 3
    flipped_single = predictor(flipped)
    for got, expected in [
        (batch[0], outputs[IMAGE_IDS[0]]),
        (batch[1], outputs[IMAGE_IDS[1]]),
        (batch[2], flipped_single),
    ]:
        # to float rounding: the channels-last GroupNorm kernel of the inference layout sums in
        # another order for a batch than for one image (measured up to 3e-5)
        torch.testing.assert_close(got["sem_seg"], expected["sem_seg"], rtol=0, atol=1e-4)
        assert (got["panoptic_seg"][0] == expected["panoptic_seg"][0]).float().mean() > 0.9999
        assert got["panoptic_seg"][1] == expected["panoptic_seg"][1]
        torch.testing.assert_close(
            got["instances"].scores, expected["instances"].scores, rtol=0, atol=1e-4
        )


@pytest.mark.parametrize(
    "bad", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), "image.jpg"]
)
def test_rejects_bad_images(predictor, bad):
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\] BGR"):
        predictor(bad)


def test_missing_weights(reference_dir, tmp_path):
    from mask2former import Predictor

    missing = tmp_path / "no_such_model.pkl"
    with pytest.raises(FileNotFoundError, match="no_such_model.pkl"):
        Predictor(_cfg(reference_dir, "MODEL.WEIGHTS", str(missing)))


def test_bad_input_format(reference_dir):
    from mask2former import Predictor

    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        Predictor(_cfg(reference_dir, "INPUT.FORMAT", "YUV"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cuda_matches_cpu(reference_dir, images, single_outputs):
    from mask2former import Predictor

    outputs, _ = single_outputs
    cuda_predictor = Predictor(_cfg(reference_dir, "MODEL.DEVICE", "cuda"))
    image_id = IMAGE_IDS[0]
    out = cuda_predictor(images[image_id])
    assert out["sem_seg"].device.type == "cuda"
    expected = outputs[image_id]["sem_seg"]
    assert (out["sem_seg"].argmax(0).cpu() == expected.argmax(0)).float().mean() > 0.999
