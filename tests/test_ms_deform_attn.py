"""Multi-scale deformable attention: the sampling op, its dispatch, and the MSDeformAttn module."""
import math

import pytest
import torch

from mask2former.layers import (
    MSDeformAttn,
    ms_deform_attn,
    ms_deform_attn_pytorch,
    register_ms_deform_attn_impl,
)
from mask2former.layers import ms_deform_attn_op as msda_module


def _naive_ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights):
    """Eq. 2-3 of Deformable DETR written out point by point: bilinear interpolation at
    (x * W - 0.5, y * H - 0.5) in pixel-index units, corners outside the map read zero."""
    n, _, heads, channels = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    shapes = spatial_shapes.tolist()
    starts = [sum(h * w for h, w in shapes[:i]) for i in range(levels)]
    out = torch.zeros(n, num_queries, heads, channels, dtype=value.dtype)
    for b in range(n):
        for q in range(num_queries):
            for m in range(heads):
                for lvl, (h, w) in enumerate(shapes):
                    for p in range(points):
                        x = sampling_locations[b, q, m, lvl, p, 0].item() * w - 0.5
                        y = sampling_locations[b, q, m, lvl, p, 1].item() * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        fx, fy = x - x0, y - y0
                        sample = torch.zeros(channels, dtype=value.dtype)
                        for yy, wy in ((y0, 1 - fy), (y0 + 1, fy)):
                            for xx, wx in ((x0, 1 - fx), (x0 + 1, fx)):
                                if 0 <= yy < h and 0 <= xx < w:
                                    sample += wy * wx * value[b, starts[lvl] + yy * w + xx, m]
                        out[b, q, m] += attention_weights[b, q, m, lvl, p] * sample
    return out.flatten(2)


def _inputs(
    shapes, n=2, num_queries=5, heads=2, channels=3, points=3, lo=-0.2, hi=1.2, dtype=torch.float64, seed=0
):
    """Random op inputs; locations uniform in [lo, hi] so that some fall outside the maps."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
    levels = len(shapes)
    value = torch.randn(n, int(sizes.sum()), heads, channels, generator=g, dtype=dtype)
    unit = torch.rand(n, num_queries, heads, levels, points, 2, generator=g, dtype=dtype)
    locations = lo + (hi - lo) * unit
    logits = torch.randn(n, num_queries, heads, levels * points, generator=g, dtype=dtype)
    weights = logits.softmax(-1).view(n, num_queries, heads, levels, points)
    return value, spatial_shapes, level_start_index, locations, weights


@pytest.mark.parametrize(
    "shapes, lo, hi",
    [
        ([(3, 5), (2, 2), (1, 3)], -0.2, 1.2),  # odd sizes, points outside the maps
        ([(4, 7)], 0.0, 1.0),  # single level
        ([(1, 1), (5, 3)], -1.0, 2.0),  # 1x1 level, many points far outside
    ],
)
def test_matches_naive_loop(shapes, lo, hi):
    value, spatial_shapes, level_start_index, locations, weights = _inputs(shapes, lo=lo, hi=hi)
    out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, impl="pytorch")
    expected = _naive_ms_deform_attn(value, spatial_shapes, locations, weights)
    assert out.shape == (2, 5, 2 * 3)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_pixel_centres_and_corners():
    """Sampling a pixel centre returns that pixel; the map's outer corner is 1/4 of the corner pixel."""
    h, w = 3, 4
    value = torch.arange(h * w, dtype=torch.float64).view(1, h * w, 1, 1) + 1
    spatial_shapes = torch.tensor([[h, w]])
    start = torch.tensor([0])
    locations = [[(2 + 0.5) / w, (1 + 0.5) / h], [0.0, 0.0], [1.0, 1.0], [1.5, 0.5]]
    locations = torch.tensor(locations, dtype=torch.float64).view(1, 4, 1, 1, 1, 2)
    weights = torch.ones(1, 4, 1, 1, 1, dtype=torch.float64)
    out = ms_deform_attn(value, spatial_shapes, start, locations, weights).flatten()
    expected = torch.tensor([value[0, 1 * w + 2].item(), 1 / 4, (h * w) / 4, 0.0], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_gradcheck_fp64():
    value, spatial_shapes, level_start_index, locations, weights = _inputs(
        [(3, 2), (2, 3)], n=1, num_queries=2, heads=2, channels=2, points=2, lo=0.05, hi=0.95, seed=1
    )
    inputs = [t.requires_grad_() for t in (value, locations, weights)]

    def op(v, loc, att):
        return ms_deform_attn_pytorch(v, spatial_shapes, level_start_index, loc, att)

    assert torch.autograd.gradcheck(op, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("n, num_queries", [(0, 5), (2, 0)])
def test_empty_batch_and_queries(n, num_queries):
    value, spatial_shapes, level_start_index, locations, weights = _inputs(
        [(3, 5), (2, 2)], n=n, num_queries=num_queries, dtype=torch.float32
    )
    out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
    assert out.shape == (n, num_queries, 2 * 3)
    assert out.dtype == torch.float32


def _bad(name):
    value, spatial_shapes, level_start_index, locations, weights = _inputs([(3, 5), (2, 2)])
    args = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": locations,
        "attention_weights": weights,
    }
    broken = {
        "value": value[..., 0],
        "spatial_shapes": spatial_shapes.double(),
        "level_start_index": level_start_index[:1],
        "sampling_locations": locations[:, :, :1],
        "attention_weights": weights[..., :2],
    }
    args[name] = broken[name]
    return args


@pytest.mark.parametrize(
    "name", ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"]
)
def test_shape_errors_name_the_argument(name):
    with pytest.raises(ValueError, match=name):
        ms_deform_attn(**_bad(name))


def test_dtype_mismatch_and_inconsistent_levels_are_rejected():
    value, spatial_shapes, level_start_index, locations, weights = _inputs([(3, 5), (2, 2)])
    with pytest.raises(ValueError, match="sampling_locations must have value's dtype"):
        ms_deform_attn(value, spatial_shapes, level_start_index, locations.float(), weights)
    with pytest.raises(ValueError, match=r"S=18 positions but spatial_shapes \[\(3, 5\), \(2, 2\)\] sum to"):
        ms_deform_attn(value[:, :-1], spatial_shapes, level_start_index, locations, weights)
    with pytest.raises(ValueError, match=r"level_start_index must be \[0, 15\]"):
        ms_deform_attn(value, spatial_shapes, torch.tensor([0, 14]), locations, weights)


@pytest.fixture
def private_registry(monkeypatch):
    """Registrations made by a test are undone afterwards."""
    monkeypatch.setattr(msda_module, "_IMPLS", dict(msda_module._IMPLS))


def test_dispatch_by_name_env_and_device(private_registry, monkeypatch):
    calls = []

    def recording_impl(*args):
        calls.append(args[0].device.type)
        return ms_deform_attn_pytorch(*args)

    args = _inputs([(3, 5), (2, 2)])
    expected = ms_deform_attn(*args, impl="pytorch")

    register_ms_deform_attn_impl("recording_gpu_only", recording_impl, devices=("cuda",))
    monkeypatch.delenv(msda_module.IMPL_ENV_VAR, raising=False)
    torch.testing.assert_close(ms_deform_attn(*args), expected)  # auto: nothing for cpu -> pytorch
    assert calls == []
    with pytest.raises(ValueError, match="runs on \\['cuda'\\], not on 'cpu'"):
        ms_deform_attn(*args, impl="recording_gpu_only")

    register_ms_deform_attn_impl("recording", recording_impl, devices=("cpu", "cuda"))
    torch.testing.assert_close(ms_deform_attn(*args), expected)  # auto picks the registered one
    assert calls == ["cpu"]
    ms_deform_attn(*args, impl="pytorch")
    assert calls == ["cpu"]

    monkeypatch.setenv(msda_module.IMPL_ENV_VAR, "pytorch")
    ms_deform_attn(*args)
    assert calls == ["cpu"]
    monkeypatch.setenv(msda_module.IMPL_ENV_VAR, "no_such_impl")
    with pytest.raises(ValueError, match="no_such_impl.*MASK2FORMER_MSDA_IMPL"):
        ms_deform_attn(*args)


@pytest.mark.parametrize(
    "name, fn, devices, message",
    [
        ("pytorch", ms_deform_attn_pytorch, ("cpu",), "reserved or taken"),
        ("auto", ms_deform_attn_pytorch, ("cpu",), "reserved or taken"),
        ("broken", None, ("cpu",), "not callable"),
        ("nowhere", ms_deform_attn_pytorch, (), "at least one device type"),
    ],
)
def test_register_rejects_bad_entries(private_registry, name, fn, devices, message):
    with pytest.raises(ValueError, match=message):
        register_ms_deform_attn_impl(name, fn, devices)


def test_module_init_matches_deformable_detr():
    attn = MSDeformAttn(d_model=64, n_levels=3, n_heads=8, n_points=4)
    assert attn.sampling_offsets.weight.abs().sum() == 0
    bias = attn.sampling_offsets.bias.detach().view(8, 3, 4, 2)
    # head h points along angle 2*pi*h/8, scaled so that max(|dx|, |dy|) = k for point k
    directions = {0: (1.0, 0.0), 1: (1.0, 1.0), 2: (0.0, 1.0), 4: (-1.0, 0.0), 7: (1.0, -1.0)}
    for head, direction in directions.items():
        for k in range(4):
            expected = torch.tensor(direction) * (k + 1)
            torch.testing.assert_close(bias[head, :, k], expected.expand(3, 2), atol=1e-5, rtol=0)
    assert attn.attention_weights.weight.abs().sum() == 0 and attn.attention_weights.bias.abs().sum() == 0
    assert attn.value_proj.bias.abs().sum() == 0 and attn.output_proj.bias.abs().sum() == 0


def _identity_attention(d_model, n_levels, n_points):
    """MSDeformAttn with identity projections and zero sampling offsets."""
    attn = MSDeformAttn(d_model=d_model, n_levels=n_levels, n_heads=2, n_points=n_points)
    with torch.no_grad():
        attn.sampling_offsets.bias.zero_()
        for proj in (attn.value_proj, attn.output_proj):
            proj.weight.copy_(torch.eye(d_model))
    return attn


def test_module_with_zero_offsets_reads_the_reference_pixel():
    """Queries at pixel centres with zero offsets and identity projections return their input."""
    h, w, d = 3, 5, 4
    attn = _identity_attention(d, n_levels=1, n_points=2)
    x = torch.randn(2, h * w, d)
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    ref = torch.stack((xs.flatten() / w, ys.flatten() / h), -1)[None, :, None].expand(2, -1, 1, -1)
    shapes, start = torch.tensor([[h, w]]), torch.tensor([0])
    out = attn(torch.randn(2, h * w, d), ref, x, shapes, start)
    torch.testing.assert_close(out, x)

    padding = torch.zeros(2, h * w, dtype=torch.bool)
    padding[1] = True
    out = attn(torch.randn(2, h * w, d), ref, x, shapes, start, input_padding_mask=padding)
    torch.testing.assert_close(out[0], x[0])
    assert out[1].abs().max() == 0


def test_module_rejects_bad_reference_points():
    attn = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=1)
    shapes = torch.tensor([[2, 2], [1, 1]])
    with pytest.raises(ValueError, match="reference_points must be"):
        attn(torch.randn(1, 3, 8), torch.rand(1, 3, 2, 4), torch.randn(1, 5, 8), shapes, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=10, n_heads=4)
