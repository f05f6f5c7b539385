"""The compiled multi-scale deformable attention kernels (``mask2former._C``) against the
executable specification ``ms_deform_attn_pytorch`` (per-level ``F.grid_sample``)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mask2former.layers import ms_deform_attn_compiled as compiled
from mask2former.layers.ms_deform_attn_op import ms_deform_attn, ms_deform_attn_pytorch

msda_compiled = compiled.ms_deform_attn_compiled

pytestmark = pytest.mark.skipif(
    not compiled.EXTENSION_AVAILABLE,
    reason="mask2former._C is not built (pip install --no-build-isolation -e .)",
)
requires_cuda_kernels = pytest.mark.skipif(
    not (
        torch.cuda.is_available() and compiled.EXTENSION_AVAILABLE and compiled._C.compiled_with_cuda()
    ),
    reason="needs a CUDA device and mask2former._C built with CUDA",
)


def make_inputs(batch, shapes, heads, channels, queries, points, spread=1.0, dtype=torch.float64):
    """Random op inputs; ``spread`` > 1 widens the locations beyond [0, 1] (points off the map)."""
    gen = torch.Generator().manual_seed(0)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    levels = len(shapes)
    value = torch.randn(batch, int(sizes.sum()), heads, channels, generator=gen, dtype=dtype)
    locations = torch.rand(batch, queries, heads, levels, points, 2, generator=gen, dtype=dtype)
    locations = (locations - 0.5) * spread + 0.5
    weights = torch.rand(batch, queries, heads, levels, points, generator=gen, dtype=dtype)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, spatial_shapes, level_start_index, locations, weights


def forward_and_grads(fn, value, spatial_shapes, level_start_index, locations, weights, grad_output):
    inputs = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]
    output = fn(inputs[0], spatial_shapes, level_start_index, inputs[1], inputs[2])
    grads = torch.autograd.grad(output, inputs, grad_output, allow_unused=True)
    return [output.detach(), *grads]


CASES = {
    "three_levels": dict(batch=2, shapes=[(6, 7), (3, 5), (1, 2)], heads=3, channels=5, queries=11, points=4),
    "points_outside": dict(
        batch=2, shapes=[(6, 7), (3, 5)], heads=2, channels=4, queries=13, points=3, spread=3.0
    ),
    "single_level": dict(batch=1, shapes=[(5, 9)], heads=2, channels=3, queries=7, points=2),
    # channels > 32: several channels per CUDA lane
    "odd_sizes_wide_heads": dict(
        batch=1, shapes=[(7, 3), (5, 1), (1, 1)], heads=2, channels=40, queries=9, points=1
    ),
    "empty_batch": dict(batch=0, shapes=[(4, 5), (2, 3)], heads=2, channels=4, queries=6, points=2),
    "no_queries": dict(batch=2, shapes=[(4, 5)], heads=2, channels=4, queries=0, points=2),
    # 32 channels per head, as in the model: the CPU kernels' fixed-width path
    "model_head_width": dict(batch=2, shapes=[(6, 8), (3, 4)], heads=2, channels=32, queries=10, points=3),
    # one (batch, head) pair and 600 queries: with 2 threads the CPU backward splits the queries
    "chunked_backward": dict(
        batch=1, shapes=[(9, 11), (5, 6)], heads=1, channels=8, queries=600, points=4, spread=1.2
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cpu_float32_matches_pytorch(case):
    value, shapes, starts, locations, weights = make_inputs(dtype=torch.float32, **CASES[case])
    grad_output = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        actual = forward_and_grads(msda_compiled, value, shapes, starts, locations, weights, grad_output)
    finally:
        torch.set_num_threads(threads)
    expected = forward_and_grads(
        ms_deform_attn_pytorch, value, shapes, starts, locations, weights, grad_output
    )
    for name, a, e in zip(("output", "grad_value", "grad_locations", "grad_weights"), actual, expected):
        if e is None:  # the reference leaves grads of empty inputs unset
            e = torch.zeros_like(a)
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5, msg=lambda m: f"{case} {name}: {m}")


def test_cpu_exact_borders_match_pytorch():
    """Points on the map edges, on pixel centres and exactly one pixel outside (x = -1, where only
    the gradient sees the map)."""
    # power-of-two sizes keep every coordinate below exact in both formulations
    value, shapes, starts, _, _ = make_inputs(1, [(4, 8)], 1, 3, 1, 1, dtype=torch.float32)
    height, width = 4, 8
    xs = torch.tensor([0.0, 1.0, 0.5 / width, -0.5 / width, 1 + 0.5 / width, 2.5 / width, 1.2, -0.3])
    ys = torch.tensor([0.0, 1.0, 0.5 / height, -0.5 / height, 1 + 0.5 / height, 1.5 / height, 0.5, 0.5])
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1).reshape(1, -1, 1, 1, 1, 2)
    weights = torch.rand(1, grid.shape[1], 1, 1, 1)
    grad_output = torch.randn(1, grid.shape[1], 3)
    actual = forward_and_grads(msda_compiled, value, shapes, starts, grid, weights, grad_output)
    expected = forward_and_grads(ms_deform_attn_pytorch, value, shapes, starts, grid, weights, grad_output)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def gradcheck_inputs(spread, device="cpu"):
    """Tiny float64 inputs with every point a finite-difference step away from the integer pixel
    coordinates, where bilinear sampling has kinks."""
    value, shapes, starts, locations, weights = make_inputs(
        2, [(3, 4), (2, 3)], 2, 3, 4, 2, spread=spread
    )
    # (W, H) per level
    pixel = torch.tensor([[4.0, 3.0], [3.0, 2.0]], dtype=torch.float64).view(1, 1, 1, 2, 1, 2)
    frac = (locations * pixel - 0.5).frac().abs()
    locations = torch.where((frac < 1e-3) | (frac > 1 - 1e-3), locations + 1e-2, locations)
    return (
        value.to(device).requires_grad_(),
        shapes,
        starts,
        locations.to(device).requires_grad_(),
        weights.to(device).requires_grad_(),
    )


@pytest.mark.parametrize("spread", [1.0, 2.5])
def test_cpu_gradcheck_float64(spread):
    inputs = gradcheck_inputs(spread)
    assert torch.autograd.gradcheck(msda_compiled, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_16bit_accumulates_in_float32(dtype):
    value, shapes, starts, locations, weights = make_inputs(
        1, [(8, 9), (4, 5)], 2, 16, 20, 4, dtype=torch.float32
    )
    value, locations, weights = (t.to(dtype) for t in (value, locations, weights))
    grad_output = torch.randn(1, 20, 32).to(dtype)
    actual = forward_and_grads(msda_compiled, value, shapes, starts, locations, weights, grad_output)
    # reference: float32 on the same (rounded) inputs
    expected = forward_and_grads(
        ms_deform_attn_pytorch,
        value.float(), shapes, starts, locations.float(), weights.float(), grad_output.float(),
    )
    eps = torch.finfo(dtype).eps
    for a, e in zip(actual, expected):
        assert a.dtype == dtype
        assert (a.float() - e).abs().max() <= 4 * eps * max(e.abs().max().item(), 1.0)


def small_float32_inputs(batch=1):
    return make_inputs(batch, [(5, 6), (3, 3)], 2, 4, 8, 2, dtype=torch.float32)


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_other_instruction_set_builds_match_pytorch(capability):
    """The tests above run the kernels ATen's CPU capability selects (the AVX-512 or AVX2 + FMA
    build on most x86-64 CPUs); rerun them on the baseline and AVX2 builds, forced with
    ATEN_CPU_CAPABILITY (which only lowers the capability)."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    isa = subprocess.run(
        [sys.executable, "-c", "from mask2former import _C; print(_C.cpu_kernel_isa())"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.split()[-1]
    if capability == "avx2" and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("the CPU has no AVX2")
    assert isa == capability
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
         "-k", "cpu_float32 or cpu_exact_borders or cpu_gradcheck or cpu_16bit"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def test_cpu_kernel_isa_follows_the_cpu():
    expected = {"AVX512": "avx512", "AVX2": "avx2"}.get(torch.backends.cpu.get_cpu_capability(), "default")
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        expected = "default"
    assert compiled._C.cpu_kernel_isa() == expected


def test_dispatcher_uses_compiled_kernels_on_cpu():
    args = small_float32_inputs()
    expected = msda_compiled(*args)
    assert torch.equal(ms_deform_attn(*args, impl=compiled.IMPL_NAME), expected)
    assert torch.equal(ms_deform_attn(*args, impl="auto"), expected)


def test_non_contiguous_and_int32_arguments():
    value, shapes, starts, locations, weights = small_float32_inputs(batch=2)
    # same values, transposed storage
    value_t = value.transpose(0, 1).contiguous().transpose(0, 1)
    locations_t = locations.transpose(1, 2).contiguous().transpose(1, 2)
    assert not value_t.is_contiguous() and not locations_t.is_contiguous()
    actual = msda_compiled(value_t, shapes.int(), starts.int(), locations_t, weights)
    expected = ms_deform_attn_pytorch(value, shapes, starts, locations, weights)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_inconsistent_arguments_raise_value_error():
    value, shapes, starts, locations, weights = small_float32_inputs()
    # messages as ms_deform_attn_pytorch's
    shapes_str = r"spatial_shapes \[\(5, 6\), \(3, 3\)\]"
    with pytest.raises(ValueError, match=rf"value has S=38 positions but {shapes_str} sum to 39"):
        msda_compiled(value[:, :-1], shapes, starts, locations, weights)
    with pytest.raises(ValueError, match=rf"level_start_index must be \[0, 30\] for {shapes_str}: \[1, 31\]"):
        msda_compiled(value, shapes, starts + 1, locations, weights)
    with pytest.raises(ValueError, match="attention_weights must be"):
        msda_compiled(value, shapes, starts, locations, weights[..., :1])
    with pytest.raises(ValueError, match="must have value's dtype"):
        msda_compiled(value, shapes, starts, locations.double(), weights)


def test_meta_tensors_give_output_shapes():
    value, shapes, starts, locations, weights = (t.to("meta") for t in small_float32_inputs(batch=2))
    output = torch.ops.mask2former.ms_deform_attn_forward(value, shapes, starts, locations, weights)
    assert output.shape == (2, 8, 8) and output.device.type == "meta"
    grads = torch.ops.mask2former.ms_deform_attn_backward(
        value, shapes, starts, locations, weights, output
    )
    assert [g.shape for g in grads] == [value.shape, locations.shape, weights.shape]


# CUDA: float32 within 1e-5 of the PyTorch op on the device; 16-bit inputs within a few units of
# their rounding (relative to the largest reference magnitude) of float32 on the same rounded inputs.
CUDA_TOLERANCES = {torch.float32: 1e-5, torch.float16: 4 * 2.0**-10, torch.bfloat16: 4 * 2.0**-7}


@requires_cuda_kernels
@pytest.mark.parametrize("dtype", list(CUDA_TOLERANCES), ids=[str(d) for d in CUDA_TOLERANCES])
@pytest.mark.parametrize("case", ["three_levels", "points_outside", "odd_sizes_wide_heads", "empty_batch"])
def test_cuda_matches_pytorch(case, dtype):
    value, shapes, starts, locations, weights = (
        t.cuda() for t in make_inputs(dtype=torch.float32, **CASES[case])
    )
    value, locations, weights = (t.to(dtype) for t in (value, locations, weights))
    grad_output = torch.randn(
        value.shape[0], locations.shape[1], value.shape[2] * value.shape[3], device="cuda"
    ).to(dtype)
    actual = forward_and_grads(msda_compiled, value, shapes, starts, locations, weights, grad_output)
    # reference: float32 on the same (rounded) inputs
    expected = forward_and_grads(
        ms_deform_attn_pytorch,
        value.float(), shapes, starts, locations.float(), weights.float(), grad_output.float(),
    )
    tol = CUDA_TOLERANCES[dtype]
    for a, e in zip(actual, expected):
        e = torch.zeros_like(a, dtype=torch.float32) if e is None else e
        assert a.dtype == dtype and a.is_cuda
        if dtype == torch.float32:
            torch.testing.assert_close(a, e, rtol=tol, atol=tol)
        elif e.numel():
            assert (a.float() - e).abs().max() <= tol * max(e.abs().max().item(), 1.0)


@requires_cuda_kernels
@pytest.mark.parametrize("spread", [1.0, 2.5])
def test_cuda_gradcheck_float64(spread):
    inputs = gradcheck_inputs(spread, device="cuda")
    # grad_value is summed with atomicAdd, in no fixed order
    assert torch.autograd.gradcheck(msda_compiled, inputs, eps=1e-6, atol=1e-6, nondet_tol=1e-12)


@requires_cuda_kernels
def test_cuda_dispatch_and_cpu_level_metadata():
    value, shapes, starts, locations, weights = small_float32_inputs()
    expected = ms_deform_attn_pytorch(value, shapes, starts, locations, weights)
    value, locations, weights = value.cuda(), locations.cuda(), weights.cuda()
    actual = msda_compiled(value, shapes, starts, locations, weights)
    torch.testing.assert_close(actual.cpu(), expected, rtol=1e-5, atol=1e-5)
    shapes, starts = shapes.cuda(), starts.cuda()
    assert torch.equal(ms_deform_attn(value, shapes, starts, locations, weights, impl="auto"), actual)
