"""Measurement primitives of ``tools/benchmark.py``: benchmark settings, timing, peak memory,
FLOP counting with fvcore, and synthetic inputs for the multi-scale deformable attention op.

FLOPs follow the convention of the Mask2Former paper (fvcore / Detectron2 ``analyze_model``): one
fused multiply-add counts as one FLOP, elementwise and reduction ops are not counted, and the
bilinear sampling of ``grid_sample`` counts 4 per output element. See :func:`count_flops` for
what is added on top of fvcore's defaults.
"""
import contextlib
import ctypes
import math
import os
import platform
import resource
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

from ..layers.ms_deform_attn_op import IMPL_ENV_VAR, ms_deform_attn

__all__ = [
    "BACKENDS",
    "DTYPES",
    "IGNORED_FLOP_OPS",
    "ModuleTimer",
    "PeakMemory",
    "Setting",
    "count_flops",
    "environment_info",
    "flatten_tensors",
    "impl_env",
    "level_shapes",
    "msdeformattn_inputs",
    "parse_setting",
    "process_peak_rss_mb",
    "resolve_impl",
    "summarize",
    "synchronize",
    "time_call",
]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

_SETTING_KEYS = ("impl", "dtype", "device", "threads", "backend", "image_size")
# inference backends: the PyTorch model, or its ONNX export run by ONNX Runtime (fp32, CPU)
BACKENDS = ("torch", "onnxruntime")

# Elementwise / reduction ops that Detectron2's ``FlopCountAnalysis`` (used for the paper's
# numbers) does not count, on top of those fvcore already ignores.
IGNORED_FLOP_OPS = (
    "aten::add", "aten::add_", "aten::argmax", "aten::argsort", "aten::batch_norm",
    "aten::constant_pad_nd", "aten::div", "aten::div_", "aten::exp", "aten::log2",
    "aten::max_pool2d", "aten::meshgrid", "aten::mul", "aten::mul_", "aten::neg",
    "aten::nonzero_numpy", "aten::reciprocal", "aten::repeat_interleave", "aten::rsub",
    "aten::sigmoid", "aten::sigmoid_", "aten::softmax", "aten::sort", "aten::sqrt", "aten::sub",
)


@dataclass(frozen=True)
class Setting:
    """One benchmarked variant, parsed from a spec string by :func:`parse_setting`.

    Attributes:
        label: short name used in tables and JSON ("A", "B", ...).
        spec: the spec string it was parsed from.
        impl: multi-scale deformable attention implementation ("auto", "pytorch", a registered
            name) or None for the process default (``$MASK2FORMER_MSDA_IMPL``, else "auto").
        dtype: "fp32", "fp16" or "bf16", or None for the command-line ``--dtype``.
        device: "cpu", "cuda" or "cuda:N", or None for the command-line ``--device``.
        threads: ``torch.set_num_threads`` value, or None to keep the current one.
        backend: inference backend, "torch" or "onnxruntime" (the model exported to ONNX and run
            by ONNX Runtime's CPU provider), or None for "torch".
        image_size: (width, height) in pixels the raw images are resized to before inference
            (spec ``image_size=4000x3000``), or None for the command-line ``--image-size``.
        overrides: config overrides as a flat ``[KEY, VALUE, ...]`` list (``merge_from_list``).
    """

    label: str
    spec: str
    impl: Optional[str] = None
    dtype: Optional[str] = None
    device: Optional[str] = None
    threads: Optional[int] = None
    backend: Optional[str] = None
    image_size: Optional[Tuple[int, int]] = None
    overrides: Tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "label": self.label, "spec": self.spec, "impl": self.impl, "dtype": self.dtype,
            "device": self.device, "threads": self.threads, "backend": self.backend,
            "image_size": self.image_size, "overrides": list(self.overrides),
        }


def _split_top_level(text: str, sep: str) -> List[str]:
    """Split ``text`` at ``sep`` outside brackets and quotes (config values like ``[1, 2]``)."""
    parts, depth, quote, current = [], 0, None, []
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == sep and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_setting(spec: str, label: str) -> Setting:
    """Parse a setting spec: comma-separated ``key=value`` items, or ``default`` for none.

    Keys: ``impl`` (deformable attention implementation), ``dtype`` (fp32 / fp16 / bf16),
    ``device``, ``threads``, ``backend`` (torch / onnxruntime), ``image_size`` (``WxH``), or an upper-case config key such as
    ``MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME=BasePixelDecoder`` (value parsed like a command-line
    override; commas inside brackets belong to the value: ``INPUT.CROP.SIZE=(512,512)``).

    Example: ``"impl=pytorch,dtype=bf16"``.

    Raises:
        ValueError: an item is not ``key=value``, the key is unknown, or a value is invalid.
    """
    values: Dict[str, Any] = {}
    overrides: List[str] = []
    items = [] if spec.strip() in ("", "default") else _split_top_level(spec, ",")
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"Setting {spec!r}: item {item!r} is not key=value")
        if key in _SETTING_KEYS:
            values[key] = value
        elif "." in key and key == key.upper():
            overrides += [key, value]
        else:
            raise ValueError(
                f"Setting {spec!r}: unknown key {key!r}; expected one of {list(_SETTING_KEYS)} "
                "or an upper-case config key such as MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME"
            )
    if "dtype" in values and values["dtype"] not in DTYPES:
        raise ValueError(f"Setting {spec!r}: dtype must be one of {list(DTYPES)}, got {values['dtype']!r}")
    if "backend" in values and values["backend"] not in BACKENDS:
        raise ValueError(f"Setting {spec!r}: backend must be one of {list(BACKENDS)}, got {values['backend']!r}")
    if "threads" in values:
        if not values["threads"].isdigit() or int(values["threads"]) < 1:
            raise ValueError(
                f"Setting {spec!r}: threads must be a positive integer, got {values['threads']!r}"
            )
        values["threads"] = int(values["threads"])
    if "image_size" in values:
        width, sep, height = values["image_size"].lower().partition("x")
        if not (sep and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
            raise ValueError(
                f"Setting {spec!r}: image_size must be WIDTHxHEIGHT in pixels, got {values['image_size']!r}"
            )
        values["image_size"] = (int(width), int(height))
    return Setting(label=label, spec=spec, overrides=tuple(overrides), **values)


@contextlib.contextmanager
def impl_env(impl: Optional[str]) -> Iterator[None]:
    """Set ``$MASK2FORMER_MSDA_IMPL`` to ``impl`` inside the block (unchanged when None)."""
    if impl is None:
        yield
        return
    previous = os.environ.get(IMPL_ENV_VAR)
    os.environ[IMPL_ENV_VAR] = impl
    try:
        yield
    finally:
        if previous is None:
            del os.environ[IMPL_ENV_VAR]
        else:
            os.environ[IMPL_ENV_VAR] = previous


def _probe_grad_fn(impl: str, device: torch.device) -> str:
    inputs = msdeformattn_inputs([(2, 3)], heads=1, channels=2, points=1, device=device)
    value, locations, weights = (t.detach().requires_grad_() for t in (inputs[0], inputs[3], inputs[4]))
    output = ms_deform_attn(value, inputs[1], inputs[2], locations, weights, impl=impl)
    return type(output.grad_fn).__name__


def resolve_impl(impl: Optional[str], device: torch.device, candidates: Sequence[str]) -> str:
    """Name of the implementation that ``impl`` selects on ``device``.

    ``None`` means ``$MASK2FORMER_MSDA_IMPL`` (default "auto"). "auto" is resolved by running a
    tiny problem and matching its autograd node against those of ``candidates``.

    Returns:
        The implementation name, or ``"auto"`` when no candidate matches.

    Raises:
        ValueError: ``impl`` is unknown or does not run on ``device`` (from ``ms_deform_attn``).
    """
    impl = impl if impl is not None else os.environ.get(IMPL_ENV_VAR, "auto")
    node = _probe_grad_fn(impl, device)
    if impl != "auto":
        return impl
    for name in candidates:
        try:
            if _probe_grad_fn(name, device) == node:
                return name
        except ValueError:
            continue
    return "auto"


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(values: Sequence[float]) -> Dict[str, float]:
    """``mean``, ``std`` (population), ``median``, ``min`` and ``max`` of ``values``.

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("Nothing was measured (zero iterations or images)")
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def _current_rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def process_peak_rss_mb() -> float:
    """Peak resident set size of this process so far (``getrusage`` ``ru_maxrss``), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # kilobytes on Linux, bytes on macOS
    return peak / 2**20 if platform.system() == "Darwin" else peak / 2**10


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``) so that RSS starts from what
    is in use; a no-op where unavailable."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory while the ``with`` block runs.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensor memory of the caching allocator, statistics
    reset on entry). CPU: resident set size sampled every ``interval_s`` by a thread (from
    ``/proc/self/statm``, after returning freed heap to the OS); without ``/proc`` the process'
    lifetime peak ``ru_maxrss`` is used, which cannot be reset.

    Attributes (valid after the block):
        kind: "cuda_max_memory_allocated", "rss_sampled" or "ru_maxrss".
        start_mb: memory in use on entry, MiB.
        peak_mb: peak memory during the block, MiB (includes whatever was resident before).
        increase_mb: ``peak_mb - start_mb``, the block's own working memory.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.005):
        self.device = device
        self.interval_s = interval_s
        self.kind = ""
        self.start_mb = self.peak_mb = self.increase_mb = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._peak_bytes = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = _current_rss_bytes() or 0
            self._peak_bytes = max(self._peak_bytes, rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            self.kind = "cuda_max_memory_allocated"
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start_bytes = torch.cuda.memory_allocated(self.device)
            return self
        _release_free_heap()
        rss = _current_rss_bytes()
        if rss is None:
            self.kind = "ru_maxrss"
            self._start_bytes = int(process_peak_rss_mb() * 2**20)
            return self
        self.kind = "rss_sampled"
        self._start_bytes = self._peak_bytes = rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.kind == "cuda_max_memory_allocated":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.kind == "ru_maxrss":
            peak = int(process_peak_rss_mb() * 2**20)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak_bytes, _current_rss_bytes() or 0)
        self.start_mb = self._start_bytes / 2**20
        self.peak_mb = peak / 2**20
        self.increase_mb = max(peak - self._start_bytes, 0) / 2**20


class ModuleTimer:
    """Wall-clock seconds spent inside the modules of one type while the ``with`` block runs.

    Forward pre-hooks and hooks on every instance of ``module_type`` in ``model`` (CUDA
    synchronised at both ends of each call, which slightly serialises GPU work). Used to bound
    what any change confined to those modules can gain (Amdahl's law): with a share ``s`` of the
    time inside them, no implementation of them makes the whole call more than ``1 / (1 - s)``
    times faster.

    Attributes:
        seconds: total seconds inside the modules since entering the block.
        calls: number of module calls timed.
    """

    def __init__(self, model: nn.Module, module_type: type, device: torch.device):
        self.modules = [m for m in model.modules() if isinstance(m, module_type)]
        self.device = device
        self.seconds = 0.0
        self.calls = 0
        self._handles: List[Any] = []
        self._start = 0.0

    def _enter_module(self, module, inputs) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()

    def _exit_module(self, module, inputs, output) -> None:
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._start
        self.calls += 1

    def __enter__(self) -> "ModuleTimer":
        for m in self.modules:
            self._handles.append(m.register_forward_pre_hook(self._enter_module))
            self._handles.append(m.register_forward_hook(self._exit_module))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment_info(device: torch.device) -> Dict[str, Any]:
    """Hardware and software facts to store with the measurements (CPU model and count, torch
    version and threads, GPU name, load average, whether ``mask2former._C`` is built and the
    instruction set of its CPU kernels)."""
    from ..layers import ms_deform_attn_compiled

    info: Dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "compiled_extension": ms_deform_attn_compiled.EXTENSION_AVAILABLE,
        "msda_impl_env": os.environ.get(IMPL_ENV_VAR),
    }
    if ms_deform_attn_compiled.EXTENSION_AVAILABLE:
        info["compiled_cpu_kernels"] = ms_deform_attn_compiled._C.cpu_kernel_isa()
    if hasattr(os, "getloadavg"):
        info["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def flatten_tensors(obj: Any) -> List[torch.Tensor]:
    """All tensors in nested dicts (sorted keys), lists, tuples and ``Instances`` fields."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for key in sorted(obj, key=str) for t in flatten_tensors(obj[key])]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in flatten_tensors(item)]
    if hasattr(obj, "get_fields"):
        return flatten_tensors(obj.get_fields())
    if hasattr(obj, "tensor") and isinstance(obj.tensor, torch.Tensor):  # Boxes
        return [obj.tensor]
    return []


class _TracedInference(nn.Module):
    """Model inference on one image as a function of the image tensor only, with the outputs
    flattened to a tuple of tensors, so that ``torch.jit`` can trace it for fvcore."""

    def __init__(self, model: nn.Module, height: int, width: int):
        super().__init__()
        self.model = model
        self.height = height
        self.width = width

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        outputs = self.model([{"image": image, "height": self.height, "width": self.width}])
        return tuple(flatten_tensors(outputs))


def _msdeformattn_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Compiled deformable attention (``MSDeformAttnFunction``): 4 per sampled value channel,
    ``4 * N * Lq * heads * L * P * C``, exactly what fvcore counts for the ``grid_sample`` calls of
    the PyTorch implementation, so both implementations give the same total."""
    value_shape, location_shape = get_shape(inputs[0]), get_shape(inputs[3])
    return 4 * math.prod(location_shape[:-1]) * value_shape[-1]


def _baddbmm_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """``baddbmm(bias, a [B, N, K], b [B, K, M])``: ``B * N * K * M`` multiply-adds, as for
    ``bmm`` (the bias add is elementwise). Newer PyTorch runs masked attention's ``Q K^T`` with it."""
    batch, n, k = get_shape(inputs[1])
    return batch * n * k * get_shape(inputs[2])[-1]


def _mm_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """``mm(a [N, K], b [K, M])``, with or without ``out=`` (semantic inference writes its class
    product straight into the output rows): ``N * K * M`` multiply-adds."""
    n, k = get_shape(inputs[0])
    return n * k * get_shape(inputs[1])[-1]


def _sdpa_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """``scaled_dot_product_attention(q [.., Lq, E], k [.., Lk, E], v [.., Lk, Ev])``:
    ``Q K^T`` plus ``attn V`` multiply-adds."""
    q_shape, k_shape, v_shape = (get_shape(v) for v in inputs[:3])
    batch = math.prod(q_shape[:-2])
    return batch * q_shape[-2] * k_shape[-2] * (q_shape[-1] + v_shape[-1])


def count_flops(model: nn.Module, image: torch.Tensor, height: int, width: int) -> FlopCountAnalysis:
    """fvcore FLOP count of ``model`` (eval mode) on one preprocessed image, post-processing to
    ``height`` x ``width`` included, as in the paper (Detectron2 ``analyze_model --tasks flop``).

    Counted: fvcore's defaults (convolutions, linear layers, matmul / bmm / einsum, norms,
    bilinear / nearest upsampling, ``grid_sample`` at 4 per output element), plus ``baddbmm`` and
    ``scaled_dot_product_attention`` (attention products that recent PyTorch versions emit), ``mm``
    with an ``out=`` tensor (which fvcore's handle rejects), and the
    compiled ``MSDeformAttnFunction`` (counted like the PyTorch implementation's ``grid_sample``).
    Not counted: :data:`IGNORED_FLOP_OPS` and other elementwise / reduction ops, which fvcore
    reports as unsupported (``unsupported_ops()``).

    Args:
        model: a model taking Detectron2-style ``[{"image", "height", "width"}]`` inputs.
        image: float [3, H, W], the resized network input on the model's device.
        height, width: original image size the outputs are resized to.
    """
    analysis = FlopCountAnalysis(_TracedInference(model, height, width), (image,))
    analysis.set_op_handle(**{name: None for name in IGNORED_FLOP_OPS})
    analysis.set_op_handle(
        **{
            "prim::PythonOp.MSDeformAttnFunction": _msdeformattn_flops,
            "aten::baddbmm": _baddbmm_flops,
            "aten::mm": _mm_flops,
            "aten::scaled_dot_product_attention": _sdpa_flops,
        }
    )
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return analysis


def level_shapes(height: int, width: int, strides: Sequence[int]) -> List[Tuple[int, int]]:
    """Feature-map sizes ``(ceil(height / s), ceil(width / s))`` of an input for each stride."""
    return [(-(-height // s), -(-width // s)) for s in strides]


def msdeformattn_inputs(
    shapes: Sequence[Tuple[int, int]],
    heads: int,
    channels: int,
    points: int,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    device: torch.device = torch.device("cpu"),
    seed: int = 0,
) -> Tuple[torch.Tensor, ...]:
    """Inputs of ``ms_deform_attn`` as in the pixel decoder's encoder: one query per value
    position (``Lq = S``), each sampling near its own position (reference point plus
    ``N(0, 2 px)`` offsets per level, the pattern of a trained encoder), softmax-normalised
    weights.

    Returns:
        ``(value [batch, S, heads, channels], spatial_shapes int64 [L, 2], level_start_index
        int64 [L], sampling_locations [batch, S, heads, L, points, 2], attention_weights
        [batch, S, heads, L, points])``, floats in ``dtype`` on ``device``.
    """
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    num_positions, levels = int(sizes.sum()), len(shapes)
    centres = []
    for h, w in shapes:
        y, x = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
        centres.append(torch.stack([x.flatten(), y.flatten()], -1))
    reference = torch.cat(centres).view(1, num_positions, 1, 1, 1, 2)
    level_wh = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32).view(1, 1, 1, levels, 1, 2)
    offsets = 2.0 * torch.randn(batch, num_positions, heads, levels, points, 2, generator=gen)
    locations = reference + offsets / level_wh
    logits = torch.randn(batch, num_positions, heads, levels * points, generator=gen)
    weights = logits.softmax(-1).view(batch, num_positions, heads, levels, points)
    value = torch.randn(batch, num_positions, heads, channels, generator=gen)
    floats = (t.to(device=device, dtype=dtype) for t in (value, locations, weights))
    value, locations, weights = floats
    return value, spatial_shapes.to(device), level_start_index.to(device), locations, weights


def time_call(fn: Callable[[], Any], device: torch.device) -> Tuple[float, Any]:
    """Run ``fn`` once; returns (seconds, result), CUDA work included."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result
