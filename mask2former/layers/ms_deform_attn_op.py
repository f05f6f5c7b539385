"""Multi-scale deformable attention, the sampling core (Zhu et al., "Deformable DETR", ICLR 2021, Eq. 2-3).

For every query q, head m, level l and point k, the op bilinearly samples the level-l value map of
head m at the location ``sampling_locations[n, q, m, l, k]`` and sums the samples weighted by
``attention_weights[n, q, m, l, k]``; the heads are concatenated. Locations are normalised (x, y)
in [0, 1] over each level's map, with ``align_corners=False`` semantics: (0, 0) is the top-left
corner of the top-left pixel, pixel centres sit at ((i + 0.5) / W, (j + 0.5) / H), and samples
outside the map read zeros.

Low precision: a bfloat16 / float16 ``value`` may come with float32 ``sampling_locations`` (and
float32 or 16-bit ``attention_weights``): the features stay 16-bit while the coordinates keep
float32's resolution (in bfloat16 a normalised coordinate in [0.5, 1) has a spacing of 2^-8, about
0.6 pixel on a 152-pixel level). Samples are then accumulated in float32 and returned in value's
dtype.

``ms_deform_attn`` checks the arguments and dispatches, by name, to one implementation:
``"pytorch"`` (:func:`ms_deform_attn_pytorch`, the executable specification, any device) or a
compiled one added with :func:`register_ms_deform_attn_impl`.
"""
import os
from typing import Callable, Dict, FrozenSet, Iterable, Optional, Sequence, Tuple

import torch
from torch.nn import functional as F

IMPL_ENV_VAR = "MASK2FORMER_MSDA_IMPL"

# value dtypes that may come with float32 sampling locations
LOW_PRECISION_DTYPES = (torch.bfloat16, torch.float16)

MSDeformAttnFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor
]


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    spatial_shapes_list: Optional[Sequence[Tuple[int, int]]] = None,
) -> torch.Tensor:
    """Reference implementation: one bilinear ``F.grid_sample`` per level (zero padding,
    ``align_corners=False``), then the attention-weighted sum over levels and points.

    Arguments are those of :func:`ms_deform_attn`, whose shape checks it assumes. When the
    locations are float32 and ``value`` is 16-bit, the value maps are sampled in float32 and the
    result is cast back to value's dtype (what the compiled kernels compute). Without
    ``spatial_shapes_list`` it reads the level sizes from ``spatial_shapes`` and checks that they
    add up to ``S`` and agree with ``level_start_index``; with it (the same (H_l, W_l) as Python or
    symbolic sizes, as when the graph is traced or exported) no tensor is read back and the caller
    vouches for the consistency. Differentiable with respect to ``value``, ``sampling_locations``
    and ``attention_weights``.

    Raises:
        ValueError: if a level is empty, ``sum(H_l * W_l) != S``, or ``level_start_index`` is not
            the running sum of the level sizes.
    """
    n, s, heads, channels = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    if spatial_shapes_list is None:
        shapes = [tuple(hw) for hw in spatial_shapes.tolist()]
        _check_level_sizes(shapes, s, level_start_index)
    else:
        shapes = [tuple(hw) for hw in spatial_shapes_list]
    sizes = [h * w for h, w in shapes]
    out_dtype = value.dtype
    # grid_sample takes one dtype: the locations' (value's, or float32 for a 16-bit value)
    value = value.to(sampling_locations.dtype)
    attention_weights = attention_weights.to(sampling_locations.dtype)

    # grid_sample's grid is in [-1, 1]
    sampling_grids = 2 * sampling_locations - 1
    sampled = []
    for level, (value_l, (h, w)) in enumerate(zip(value.split(sizes, dim=1), shapes)):
        # [N, H*W, heads, C] -> [N*heads, C, H, W]
        value_l = value_l.flatten(2).transpose(1, 2).reshape(n * heads, channels, h, w)
        # [N, Lq, heads, P, 2] -> [N*heads, Lq, P, 2]
        grid_l = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        # -> [N*heads, C, Lq, P]
        sampled.append(
            F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # [N, Lq, heads, L, P] -> [N*heads, 1, Lq, L*P]
    weights = attention_weights.transpose(1, 2).reshape(n * heads, 1, num_queries, levels * points)
    # [N*heads, C, Lq, L, P] -> [N*heads, C, Lq, L*P] -> [N, heads*C, Lq]
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return output.view(n, heads * channels, num_queries).transpose(1, 2).to(out_dtype).contiguous()


def _check_level_sizes(shapes, s: int, level_start_index: torch.Tensor) -> None:
    sizes = [h * w for h, w in shapes]
    if any(h < 1 or w < 1 for h, w in shapes):
        raise ValueError(f"spatial_shapes must be positive (H, W) pairs, got {shapes}")
    if sum(sizes) != s:
        raise ValueError(f"value has S={s} positions but spatial_shapes {shapes} sum to {sum(sizes)}")
    starts = [sum(sizes[:i]) for i in range(len(shapes))]
    given_starts = level_start_index.tolist()
    if given_starts != starts:
        raise ValueError(f"level_start_index must be {starts} for spatial_shapes {shapes}: {given_starts}")


# name -> (implementation, device types it runs on; None means any)
_IMPLS: Dict[str, Tuple[MSDeformAttnFn, Optional[FrozenSet[str]]]] = {
    "pytorch": (ms_deform_attn_pytorch, None),
}


def register_ms_deform_attn_impl(name: str, fn: MSDeformAttnFn, devices: Iterable[str]) -> None:
    """Make ``fn`` selectable as ``ms_deform_attn(..., impl=name)``.

    Args:
        name: implementation name; not ``"auto"``, ``"pytorch"`` or an already registered one.
        fn: callable with the signature and result of :func:`ms_deform_attn_pytorch`, providing its
            own autograd; it receives arguments that passed :func:`ms_deform_attn`'s checks.
        devices: device types it runs on, e.g. ``("cuda",)``. With ``impl="auto"``, the most
            recently registered implementation for the value's device type is used.

    Raises:
        ValueError: for a taken or reserved name, a non-callable ``fn``, or empty ``devices``.
    """
    if name == "auto" or name in _IMPLS:
        raise ValueError(f"ms_deform_attn implementation name {name!r} is reserved or taken")
    if not callable(fn):
        raise ValueError(f"ms_deform_attn implementation {name!r} is not callable: {fn!r}")
    device_types = frozenset(devices)
    if not device_types:
        raise ValueError(f"ms_deform_attn implementation {name!r} needs at least one device type")
    _IMPLS[name] = (fn, device_types)


def _select_impl(impl: str, device_type: str) -> MSDeformAttnFn:
    if impl == "auto":
        # "pytorch" was registered first and runs anywhere, so it is the last resort
        candidates = reversed(_IMPLS.values())
        return next(fn for fn, devices in candidates if devices is None or device_type in devices)
    if impl not in _IMPLS:
        raise ValueError(
            f"Unknown ms_deform_attn implementation {impl!r} (argument impl or env {IMPL_ENV_VAR}); "
            f"expected 'auto' or one of {list(_IMPLS)}"
        )
    fn, devices = _IMPLS[impl]
    if devices is not None and device_type not in devices:
        raise ValueError(
            f"ms_deform_attn implementation {impl!r} runs on {sorted(devices)}, not on {device_type!r}"
        )
    return fn


def selected_ms_deform_attn_impl(device_type: str, impl: Optional[str] = None) -> MSDeformAttnFn:
    """The implementation :func:`ms_deform_attn` runs for a ``value`` on ``device_type``.

    Args:
        device_type: e.g. ``"cpu"`` or ``"cuda"``.
        impl: as :func:`ms_deform_attn`'s ``impl``; None reads ``MASK2FORMER_MSDA_IMPL``
            (default ``"auto"``).

    Raises:
        ValueError: for an unknown implementation or one that does not run on ``device_type``.
    """
    if impl is None:
        impl = os.environ.get(IMPL_ENV_VAR, "auto")
    return _select_impl(impl, device_type)


def _check_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> None:
    if value.dim() != 4:
        raise ValueError(f"value must be [N, S, heads, C], got shape {tuple(value.shape)}")
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2 or spatial_shapes.is_floating_point():
        raise ValueError(
            "spatial_shapes must be an integer [L, 2] tensor, "
            f"got {spatial_shapes.dtype} {tuple(spatial_shapes.shape)}"
        )
    levels = spatial_shapes.shape[0]
    if level_start_index.shape != (levels,) or level_start_index.is_floating_point():
        raise ValueError(
            f"level_start_index must be an integer [L={levels}] tensor, "
            f"got {level_start_index.dtype} {tuple(level_start_index.shape)}"
        )
    if not value.is_floating_point():
        raise ValueError(f"value must be a floating-point tensor, got {value.dtype}")
    n, _, heads, _ = value.shape
    loc_shape = tuple(sampling_locations.shape)
    expected = (n, heads, levels, 2)
    if len(loc_shape) != 6 or (loc_shape[0], loc_shape[2], loc_shape[3], loc_shape[5]) != expected:
        raise ValueError(
            f"sampling_locations must be [N={n}, Lq, heads={heads}, L={levels}, P, 2], got {loc_shape}"
        )
    if tuple(attention_weights.shape) != loc_shape[:5]:
        raise ValueError(
            f"attention_weights must be [N, Lq, heads, L, P] = {loc_shape[:5]}, "
            f"got {tuple(attention_weights.shape)}"
        )
    mixed = value.dtype in LOW_PRECISION_DTYPES and sampling_locations.dtype == torch.float32
    checks = (
        ("sampling_locations", sampling_locations, "value's dtype", sampling_locations.dtype == value.dtype or mixed),
        ("attention_weights", attention_weights, "value's or sampling_locations' dtype",
         attention_weights.dtype in (value.dtype, sampling_locations.dtype)),
    )
    for name, t, dtype_rule, dtype_ok in checks:
        if not dtype_ok or t.device != value.device:
            raise ValueError(
                f"{name} must have {dtype_rule} and value's device ({value.dtype}, {value.device}; "
                f"float32 locations are allowed with a bfloat16 / float16 value), got ({t.dtype}, {t.device})"
            )


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    impl: Optional[str] = None,
    *,
    spatial_shapes_list: Optional[Sequence[Tuple[int, int]]] = None,
) -> torch.Tensor:
    """Multi-scale deformable attention sampling (Deformable DETR, Eq. 3 without the projections).

    Args:
        value: float [N, S, heads, C], the L value maps of every head flattened row-major and
            concatenated level after level, ``S = sum_l H_l * W_l``.
        spatial_shapes: int64 [L, 2], (H_l, W_l) of each level.
        level_start_index: int64 [L], offset of each level in S: ``[0, H_0*W_0, ...]``.
        sampling_locations: [N, Lq, heads, L, P, 2], normalised (x, y) in [0, 1] per level
            (``align_corners=False`` convention); points outside the map sample zeros. Value's
            dtype, or float32 when value is bfloat16 / float16.
        attention_weights: [N, Lq, heads, L, P], normally summing to 1 over (L, P); value's or
            sampling_locations' dtype.
        impl: ``"auto"`` (best registered implementation for ``value.device``, else
            ``"pytorch"``), ``"pytorch"`` or a name given to :func:`register_ms_deform_attn_impl`.
            None reads the environment variable ``MASK2FORMER_MSDA_IMPL`` (default ``"auto"``).
        spatial_shapes_list: optional, ``spatial_shapes`` as L (H_l, W_l) pairs of Python ints or
            of the symbolic sizes seen by ``torch.jit.trace`` / ``torch.export``; the ``"pytorch"``
            implementation then reads no tensor value, so its graph stays shape-generic.

    Returns:
        [N, Lq, heads * C], heads concatenated, same dtype as ``value`` (accumulated in float32
        at least).

    Raises:
        ValueError: for inconsistent shapes, dtypes or devices, or an unknown or unsuitable ``impl``.
    """
    _check_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    fn = selected_ms_deform_attn_impl(value.device.type, impl)
    args = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if fn is ms_deform_attn_pytorch:
        return fn(*args, spatial_shapes_list=spatial_shapes_list)
    return fn(*args)

