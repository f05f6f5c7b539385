"""The compiled bilinear band resize (mask2former::resize_bilinear) against F.interpolate."""
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from mask2former.layers.ms_deform_attn_compiled import EXTENSION_AVAILABLE
from mask2former.modeling import mask_upsampling
from mask2former.modeling.mask_upsampling import MaskLogits, resize_bilinear, resize_bilinear_band

pytestmark = pytest.mark.skipif(
    not (EXTENSION_AVAILABLE and hasattr(torch.ops, "mask2former") and hasattr(torch.ops.mask2former, "resize_bilinear")),
    reason="mask2former._C is not built (pip install --no-build-isolation -e .)",
)


def _reference(x, size):
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]


def test_bands_of_random_upsamplings_equal_interpolate_bitwise():
    """Random input sizes, scales, magnitudes, channel counts and bands in the domain the kernel
    takes (outputs >= 128 x 128, columns a multiple of 16): PyTorch's values, bit for bit."""
    rng = random.Random(0)
    torch.manual_seed(0)
    for _ in range(60):
        h, w = rng.randint(2, 120), rng.randint(2, 120)
        size = (rng.randint(max(h, 128), 400), 16 * rng.randint(max(8, -(-w // 16)), 30))
        x = torch.randn(rng.choice([1, 2, 3, 5, 16]), h, w) * rng.choice([1.0, 10.0, 1000.0])
        start = rng.randint(0, size[0] - 1)
        stop = rng.randint(start + 1, size[0])
        assert mask_upsampling._compiled_resize_applies(x, size)
        band = resize_bilinear_band(x, size, (start, stop))
        assert band.shape == (x.shape[0], stop - start, size[1])
        assert torch.equal(band, _reference(x, size)[:, start:stop]), (tuple(x.shape), size, start, stop)


def test_stride4_masks_to_the_padded_size():
    """The real case: 100 queries' stride-4 logits to an 800x1216 padded input, whole and in bands."""
    torch.manual_seed(0)
    x = torch.randn(100, 200, 304) * 8
    reference = _reference(x, (800, 1216))
    assert torch.equal(resize_bilinear(x, (800, 1216)), reference)
    assert torch.equal(resize_bilinear_band(x, (800, 1216), (13, 26)), reference[:, 13:26])
    masks = MaskLogits(x, (800, 1216), (800, 1199), (800, 1199))
    assert torch.equal(masks.rows(790, 800), reference[:, 790:800, :1199])
    assert masks._padded is None  # the bands never build the [Q, 800, 1216] tensor


def test_outside_the_domain_falls_back_to_interpolate():
    x = torch.randn(2, 20, 30)
    for size in [(64, 96), (10, 15), (200, 300)]:  # too small, a downsampling, columns not a multiple of 16
        assert not mask_upsampling._compiled_resize_applies(x, size)
        assert torch.equal(resize_bilinear(x, size), _reference(x, size))


def test_bad_rows_raise():
    x = torch.randn(2, 40, 40)
    for rows in [(100, 200), (5, 5), (-1, 3)]:
        for size in [(160, 160), (60, 60)]:  # compiled kernel, F.interpolate fallback
            with pytest.raises(ValueError, match="rows must satisfy"):
                resize_bilinear_band(x, size, rows)
    with pytest.raises(RuntimeError, match="row_start"):
        torch.ops.mask2former.resize_bilinear(x, [160, 160], 100, 200)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.mask2former.resize_bilinear(x.double(), [160, 160], 0, 160)


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_other_instruction_set_builds(capability):
    """PyTorch rounds differently under its baseline build (no fused multiply-adds); the kernel
    follows ATen's capability: rerun the comparisons under the lowered capabilities."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)), "-k", "bitwise or stride4"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 passed" in proc.stdout
