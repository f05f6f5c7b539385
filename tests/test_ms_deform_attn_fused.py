"""The fused inference kernel ``mask2former::ms_deform_attn_forward_fused`` (sampling locations and
attention softmax computed in the kernel) against the unfused path it replaces in MSDeformAttn:
``torch.addcdiv`` locations, ``F.softmax`` weights, then the compiled sampling op."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from mask2former.layers import MSDeformAttn
from mask2former.layers import ms_deform_attn_compiled as compiled
from mask2former.layers import ms_deform_attn_module
from mask2former.layers.ms_deform_attn_op import IMPL_ENV_VAR, ms_deform_attn_pytorch

pytestmark = pytest.mark.skipif(
    not compiled.EXTENSION_AVAILABLE,
    reason="mask2former._C is not built (pip install --no-build-isolation -e .)",
)

fused = compiled.ms_deform_attn_fused_inference


def make_inputs(shapes=((6, 7), (3, 5), (1, 2)), batch=2, queries=11, heads=3, channels=32, points=4,
                offset_scale=2.0, value_dtype=torch.float32, coord_dtype=torch.float32, seed=0):
    """Random fused-op inputs; offsets of ``offset_scale`` pixels (std) push points off the maps."""
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    levels = len(shapes)
    value = torch.randn(batch, int(sizes.sum()), heads, channels, generator=gen).to(value_dtype)
    reference = torch.rand(batch, queries, levels, 2, generator=gen).to(coord_dtype)
    offsets = (offset_scale * torch.randn(batch, queries, heads, levels, points, 2, generator=gen)).to(coord_dtype)
    logits = (2 * torch.randn(batch, queries, heads, levels * points, generator=gen)).to(coord_dtype)
    return value, spatial_shapes, level_start_index, reference, offsets, logits


def unfused(value, spatial_shapes, level_start_index, reference, offsets, logits, op=None):
    """What MSDeformAttn.forward computes without the fused kernel."""
    n, q, heads, levels, points, _ = offsets.shape
    normalizer = torch.stack([spatial_shapes[:, 1], spatial_shapes[:, 0]], -1).to(offsets.dtype)
    locations = torch.addcdiv(reference[:, :, None, :, None, :], offsets, normalizer[None, None, None, :, None, :])
    weights = F.softmax(logits, -1).view(n, q, heads, levels, points)
    op = op or torch.ops.mask2former.ms_deform_attn_forward
    return op(value, spatial_shapes, level_start_index, locations, weights)


def test_uniform_attention_gives_the_unfused_result_bitwise():
    """Equal logits make both softmaxes exactly 1 / (L * P), so any difference would come from the
    locations: they must be torch.addcdiv's, bit for bit."""
    value, shapes, starts, reference, offsets, logits = make_inputs()
    logits = torch.zeros_like(logits)
    assert torch.equal(fused(value, shapes, starts, reference, offsets, logits),
                       unfused(value, shapes, starts, reference, offsets, logits))


# The softmax's exp (SLEEF's or std::exp) need not be ATen's softmax one: float32 weights differ by
# a few ulps (|dw| <= 4 * 2^-24 for w <= 1, summing to 1), so |d output| <= max|v| * 4 * 2^-24 * ...
# bounded by 1e-6 * max|v|; everything else is the same arithmetic.
FLOAT32_ATOL_PER_UNIT_VALUE = 1e-6


@pytest.mark.parametrize("channels", [32, 5])
@pytest.mark.parametrize("offset_scale", [2.0, 20.0])
def test_float32_matches_unfused(channels, offset_scale):
    value, shapes, starts, reference, offsets, logits = make_inputs(channels=channels, offset_scale=offset_scale)
    expected = unfused(value, shapes, starts, reference, offsets, logits)
    actual = fused(value, shapes, starts, reference, offsets, logits)
    atol = FLOAT32_ATOL_PER_UNIT_VALUE * value.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


def test_softmax_weights_match_f_softmax():
    """Reads the kernel's attention weights back: on a 1 x 16 map, point p of the single level
    lands exactly on the centre of pixel p (x = (0.5 + p) / 16, exact in float32), whose value is
    the one-hot vector e_p, so output channel p is the weight of point p. They agree with
    F.softmax over the 12 logits to a few float32 ulps."""
    points, width, batch, queries, heads = 12, 16, 2, 50, 2
    shapes, starts = torch.tensor([[1, width]]), torch.tensor([0])
    value = torch.zeros(batch, width, heads, points)
    value[:, torch.arange(points), :, torch.arange(points)] = 1.0
    reference = torch.full((batch, queries, 1, 2), 0.5)
    reference[..., 0] = 0.5 / width
    offsets = torch.zeros(batch, queries, heads, 1, points, 2)
    offsets[..., 0] = torch.arange(points, dtype=torch.float32)
    logits = 4 * torch.randn(batch, queries, heads, points, generator=torch.Generator().manual_seed(0))
    weights = fused(value, shapes, starts, reference, offsets, logits).view(batch, queries, heads, points)
    torch.testing.assert_close(weights, F.softmax(logits, -1), rtol=2.0**-21, atol=1e-10)


def test_float64_matches_the_pytorch_specification():
    value, shapes, starts, reference, offsets, logits = make_inputs(
        value_dtype=torch.float64, coord_dtype=torch.float64, channels=3
    )
    expected = unfused(value, shapes, starts, reference, offsets, logits, op=ms_deform_attn_pytorch)
    torch.testing.assert_close(fused(value, shapes, starts, reference, offsets, logits), expected,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_16bit_value_with_float32_coordinates(dtype):
    """Both paths accumulate in float32 and round once to the 16-bit dtype: results may differ by
    one unit in the last place of that dtype (2^-7 relative for bfloat16, 2^-10 for float16)."""
    value, shapes, starts, reference, offsets, logits = make_inputs(value_dtype=dtype)
    expected = unfused(value, shapes, starts, reference, offsets, logits)
    actual = fused(value, shapes, starts, reference, offsets, logits)
    assert actual.dtype == dtype
    rtol = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=1e-5)


def test_nan_and_far_away_points_behave_as_unfused():
    """NaN locations and points far off the map sample zeros; a NaN logit makes its head's
    softmax, hence its output, NaN; the other heads are unaffected."""
    value, shapes, starts, reference, offsets, logits = make_inputs(queries=6)
    offsets[0, 0, 0, :, :2] = float("nan")
    offsets[0, 1, 1] = 1e6
    reference[1, 2, 0] = float("nan")
    logits[1, 3, 2, 5] = float("nan")
    logits[0, 4, 0, 1] = float("inf")
    expected = unfused(value, shapes, starts, reference, offsets, logits)
    actual = fused(value, shapes, starts, reference, offsets, logits)
    channels = value.shape[-1]
    assert torch.isnan(actual[1, 3, 2 * channels:3 * channels]).all()
    assert torch.isnan(actual[0, 4, :channels]).all()
    assert not torch.isnan(actual[0, :4]).any()
    atol = FLOAT32_ATOL_PER_UNIT_VALUE * value.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol, equal_nan=True)


def test_empty_inputs_and_meta_shapes():
    value, shapes, starts, reference, offsets, logits = make_inputs(batch=0)
    assert fused(value, shapes, starts, reference, offsets, logits).shape == (0, 11, 3 * 32)
    meta = [t.to("meta") for t in make_inputs()]
    output = torch.ops.mask2former.ms_deform_attn_forward_fused(*meta)
    assert output.shape == (2, 11, 3 * 32) and output.device.type == "meta"


@pytest.mark.parametrize(
    "argument, change",
    [
        ("reference_points", lambda a: a.__setitem__(3, a[3][:, :, :1])),
        ("sampling_offsets", lambda a: a.__setitem__(4, a[4][..., :1])),
        ("attention_logits", lambda a: a.__setitem__(5, a[5][..., :-1])),
        ("sampling_offsets must have value's dtype", lambda a: a.__setitem__(4, a[4].double())),
        ("reference_points and attention_logits must have", lambda a: a.__setitem__(5, a[5].half())),
        ("level_start_index must be", lambda a: a.__setitem__(2, a[2] + 1)),
        ("value has S=", lambda a: a.__setitem__(0, a[0][:, 1:])),
        ("CPU only", lambda a: a.__setitem__(5, a[5].to("meta"))),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(argument, change):
    args = list(make_inputs())
    change(args)
    with pytest.raises(ValueError, match=argument):
        torch.ops.mask2former.ms_deform_attn_forward_fused(*args)


def module_and_inputs(dtype=torch.float32):
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=64, n_levels=2, n_heads=4, n_points=3).to(dtype)
    for linear in (attn.sampling_offsets, attn.attention_weights):
        torch.nn.init.normal_(linear.weight, std=0.5)
    shapes = torch.tensor([[5, 6], [2, 3]])
    starts = torch.tensor([0, 30])
    query = torch.randn(2, 9, 64, dtype=dtype)
    source = torch.randn(2, 36, 64, dtype=dtype)
    reference = torch.rand(2, 9, 2, 2)
    return attn, (query, reference, source, shapes, starts)


@pytest.fixture
def counted_paths(monkeypatch):
    """Counts the module's calls of the fused kernel and of the unfused ms_deform_attn."""
    calls = {"fused": 0, "unfused": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(ms_deform_attn_module, "ms_deform_attn_fused_inference",
                        counting("fused", ms_deform_attn_module.ms_deform_attn_fused_inference))
    monkeypatch.setattr(ms_deform_attn_module, "ms_deform_attn",
                        counting("unfused", ms_deform_attn_module.ms_deform_attn))
    monkeypatch.delenv(IMPL_ENV_VAR, raising=False)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_module_uses_the_fused_kernel_only_for_cpu_inference(counted_paths, monkeypatch, dtype):
    attn, inputs = module_and_inputs(dtype)
    with torch.no_grad():
        out_fused = attn(*inputs)
    assert counted_paths == {"fused": 1, "unfused": 0}

    out_grad = attn(*inputs)  # parameters require grad: the differentiable path
    assert counted_paths == {"fused": 1, "unfused": 1}
    assert out_grad.requires_grad

    monkeypatch.setenv(IMPL_ENV_VAR, "pytorch")
    with torch.no_grad():
        out_pytorch = attn(*inputs)
    assert counted_paths == {"fused": 1, "unfused": 2}
    monkeypatch.setenv(IMPL_ENV_VAR, compiled.IMPL_NAME)
    with torch.no_grad():
        attn(*inputs)
    assert counted_paths == {"fused": 2, "unfused": 2}

    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2**-6, atol=2**-6)
    torch.testing.assert_close(out_fused, out_grad.detach(), **tol)
    torch.testing.assert_close(out_fused, out_pytorch, **tol)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_module_keeps_the_unfused_path_when_traced(counted_paths):
    attn, inputs = module_and_inputs()
    with torch.no_grad():
        torch.jit.trace(attn, inputs, check_trace=False)
    assert counted_paths == {"fused": 0, "unfused": 1}


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_other_instruction_set_builds(capability):
    """The tests above run the build ATen's capability selects (AVX-512 on such CPUs); rerun the
    kernel comparisons on the AVX2 and baseline builds."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
         "-k", "bitwise or matches or 16bit or nan_and"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
