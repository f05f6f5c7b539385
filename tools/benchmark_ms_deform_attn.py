"""Time the multi-scale deformable attention implementations on the CPU.

Default problem: the pixel decoder of Mask2Former R50 on an 800x1200 image (levels 1/8, 1/16,
1/32 = (100, 150), (50, 75), (25, 38); d_model 256 = 8 heads x 32 channels; 4 points; one query
per value position, batch 1). Two location patterns: "local" (each query samples around its own
position with N(0, 2 px) offsets, as a trained encoder does) and "uniform" (uniform over the
maps: no cache locality, the worst case).

Usage: python tools/benchmark_ms_deform_attn.py [--impls pytorch compiled] [--threads 2] [--repeats 3]
"""
import argparse
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch

from mask2former.layers import ms_deform_attn_compiled  # noqa: F401  (registers "compiled")
from mask2former.layers.ms_deform_attn import ms_deform_attn

R50_SHAPES = [(100, 150), (50, 75), (25, 38)]


def make_inputs(
    shapes: List[Tuple[int, int]], heads: int, channels: int, points: int, batch: int, pattern: str
) -> Tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    spatial, levels = int(sizes.sum()), len(shapes)
    queries = spatial
    value = torch.randn(batch, spatial, heads, channels, generator=gen)
    if pattern == "uniform":
        locations = torch.rand(batch, queries, heads, levels, points, 2, generator=gen)
    else:
        centres = []
        for h, w in shapes:
            y, x = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
            centres.append(torch.stack([x.flatten(), y.flatten()], -1))
        reference = torch.cat(centres).view(1, queries, 1, 1, 1, 2)
        wh = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32).view(1, 1, 1, levels, 1, 2)
        offsets = 2.0 * torch.randn(batch, queries, heads, levels, points, 2, generator=gen)
        locations = reference + offsets / wh
    weights = torch.rand(batch, queries, heads, levels, points, generator=gen)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, spatial_shapes, level_start_index, locations, weights


def median_seconds(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_impl(impl: str, inputs: Tuple[torch.Tensor, ...], repeats: int) -> Dict[str, float]:
    value, spatial_shapes, level_start_index, locations, weights = inputs
    grad_output = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3])

    def forward() -> None:
        with torch.no_grad():
            ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, impl=impl)

    leaves = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]

    def forward_backward() -> None:
        output = ms_deform_attn(leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2], impl=impl)
        torch.autograd.grad(output, leaves, grad_output)

    return {"fwd": median_seconds(forward, repeats), "fwd+bwd": median_seconds(forward_backward, repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impls", nargs="+", default=["pytorch", "compiled"])
    parser.add_argument("--patterns", nargs="+", default=["local", "uniform"], choices=["local", "uniform"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"shapes {R50_SHAPES}, 8 heads x 32 channels, 4 points, batch {args.batch}, {args.threads} threads")
    for pattern in args.patterns:
        inputs = make_inputs(R50_SHAPES, heads=8, channels=32, points=4, batch=args.batch, pattern=pattern)
        results = {impl: time_impl(impl, inputs, args.repeats) for impl in args.impls}
        base = results[args.impls[0]]
        for impl, timing in results.items():
            cells = [f"{k} {v * 1e3:8.1f} ms ({base[k] / v:4.1f}x)" for k, v in timing.items()]
            print(f"{pattern:8s} {impl:10s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
