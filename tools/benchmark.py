#!/usr/bin/env python
"""Benchmark Mask2Former with the paper's protocol: parameters, FLOPs, inference speed, training
speed, and the multi-scale deformable attention op alone.

Tasks (``--task``, one or more):
  params     parameter count of the model built from the config.
  flops      fvcore GFLOPs per image, averaged over ``--num-images`` real images at the test resize
             (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST), post-processing included (paper: 100 COCO val
             images). One multiply-add = one FLOP; see mask2former/utils/benchmark.py:count_flops
             for what is counted (the deformable attention sampling: 4 per sampled channel value).
  inference  frames/s at batch 1 with ``Predictor`` on the raw images (resize, model and
             post-processing; decoding the files is not timed), averaged over the images after
             ``--warmup`` calls, and peak memory (CUDA max_memory_allocated; sampled RSS on CPU).
             ``--image-size W H`` (or a setting's ``image_size=WxH``) first resizes the raw images,
             e.g. to a 12-megapixel photo: outputs at that size, the same network input.
             Also the seconds spent inside the ``MSDeformAttn`` modules (projections and sampling)
             and ``max_speedup_from_msdeformattn`` = total / (total - those seconds): by Amdahl's
             law, no implementation of the op makes that setting faster end to end than this.
             ``--dtype`` / ``dtype=`` bf16 or fp16 sets TEST.PRECISION (the network runs in that
             dtype, see mask2former/modeling/precision.py); so does ``TEST.PRECISION=...``.
  train      seconds per ``Trainer.run_step`` (forward, loss, backward, clipping, optimizer) for
             ``--batch-size`` images cropped to ``--crop`` from the config's training set (the batches
             are loaded before timing), or synthetic images and masks with ``--synthetic``; peak
             memory. ``--dtype`` replaces SOLVER.AMP.
  op         ``--component msdeformattn``: ``ms_deform_attn`` alone at the pixel-decoder shapes of an
             ``--input-size`` image (levels at strides 8/16/32; dims, heads and points from the config
             or 256/8/4), forward and forward+backward, for each implementation in ``--impls``.

``--compare A B`` runs two settings in one process and prints B/A ratios. A setting is a spec of
comma-separated ``key=value`` items (``impl=``, ``dtype=``, ``device=``, ``threads=``, ``backend=``
or upper-case config keys) or ``default``. ``backend=onnxruntime`` (inference only, fp32 on the CPU)
exports the setting's model to ONNX in a temporary directory and times ``ExportedPredictor`` on it
(same resize and post-processing; the seconds inside MSDeformAttn are not measured there). Inference and training alternate between the settings image by image
and step by step, so that a varying machine load affects both alike; inference also reports how far
the outputs differ (raw head outputs, semantic and panoptic maps). The tool imports
``mask2former.layers.ms_deform_attn_compiled``, so ``impl=auto`` picks the compiled op when
``mask2former._C`` is built; the implementation actually used is reported as ``msdeformattn_impl``.

Memory: ``peak_memory_mb`` is the peak while the timed calls run, including everything resident
(weights of every model the process holds: two when a comparison changes the config);
``peak_memory_increase_mb`` is the calls' own working memory above what was in use before them.
On the CPU it is the resident set size sampled every 5 ms (after returning freed heap to the OS).

Output: tables on stdout; with ``--output`` a JSON file with ``environment`` (CPU, threads, torch,
load average before) and ``environment_after`` (load average after, process peak RSS), ``settings``,
``images``, ``results`` (one ``{setting, task, variant, metrics}`` per measurement; ``variant`` is the
op implementation when the setting does not name one) and ``comparisons`` (``ratios_B_over_A``,
``output_difference``).

Examples:
  python tools/benchmark.py --config-file configs/coco/panoptic/R50.yaml --task params flops \\
      --num-images 100 -- MODEL.WEIGHTS model_final.pkl
  python tools/benchmark.py --config-file configs/coco/panoptic/R50.yaml --task inference \\
      --device cpu --num-images 3 --compare impl=pytorch impl=auto MODEL.WEIGHTS ""
  python tools/benchmark.py --config-file configs/coco/panoptic/R50.yaml --task inference \
      --device cpu --num-images 3 --compare backend=torch backend=onnxruntime MODEL.WEIGHTS ""
  python tools/benchmark.py --config-file configs/coco/panoptic/R50.yaml --task inference \
      --device cpu --num-images 1 --compare image_size=640x480 image_size=4000x3000 MODEL.WEIGHTS ""
  python tools/benchmark.py --task op --component msdeformattn --device cpu --output op.json

Config overrides (``KEY VALUE``) come last; after an option taking several values (``--task``,
``--impls``) separate them with ``--``.
"""
import argparse
import contextlib
import glob
import json
import logging
import os
import sys
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from tabulate import tabulate

from mask2former import Predictor, build_model, get_cfg
from mask2former.checkpoint import Checkpointer
from mask2former.data.build import build_train_loader, get_dataset_dicts
from mask2former.data.catalog import DatasetCatalog, MetadataCatalog
from mask2former.engine.custom_datasets import DatasetArgumentParser, configure_datasets, register_datasets
from mask2former.data.dataset_mappers import build_dataset_mapper
from mask2former.data.dataset_mappers.common import make_instances
from mask2former.data.image_io import read_image
from mask2former.data.transforms import ResizeShortestEdge
from mask2former.engine.trainer import Trainer
from mask2former.export import ExportedPredictor, export_model
from mask2former.layers import MSDeformAttn, ms_deform_attn, ms_deform_attn_compiled  # noqa: F401 (registers "compiled")
from mask2former.utils.atomic_io import atomic_write
from mask2former.utils.benchmark import (
    DTYPES,
    ModuleTimer,
    PeakMemory,
    Setting,
    count_flops,
    environment_info,
    impl_env,
    level_shapes,
    msdeformattn_inputs,
    parse_setting,
    process_peak_rss_mb,
    resolve_impl,
    summarize,
    time_call,
)

logger = logging.getLogger("benchmark")

TASKS = ("params", "flops", "inference", "train", "op")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
# metrics shown in the tables and compared (B / A) by --compare, per task
KEY_METRICS = {
    "params": ("params_m",),
    "flops": ("gflops",),
    "inference": ("fps", "seconds_per_image", "seconds_per_image_median", "msdeformattn_seconds_per_image",
                  "max_speedup_from_msdeformattn", "peak_memory_mb", "peak_memory_increase_mb"),
    "train": ("seconds_per_iter", "seconds_per_iter_median", "peak_memory_mb", "peak_memory_increase_mb"),
    "op": ("forward_ms", "forward_ms_median", "forward_backward_ms", "forward_backward_ms_median",
           "forward_peak_memory_increase_mb", "forward_backward_peak_memory_increase_mb"),
}
AMP_PRECISION = {"fp16": "float16", "bf16": "bfloat16"}
SHORT_DTYPES = {"float32": "fp32", **{v: k for k, v in AMP_PRECISION.items()}}


def build_parser() -> argparse.ArgumentParser:
    parser = DatasetArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", metavar="FILE", help="model config (required except for --task op)")
    parser.add_argument("--task", nargs="+", required=True, choices=TASKS)
    parser.add_argument("--component", default="msdeformattn", choices=["msdeformattn"],
                        help="the op benchmarked by --task op")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (sets MODEL.DEVICE); default cuda when available")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES),
                        help="precision: TEST.PRECISION for inference, SOLVER.AMP (autocast) for train; "
                        "op inputs are cast")
    parser.add_argument("--images", help="image directory or glob; default: DATASETS.TEST[0] from the "
                        "dataset catalog ($DETECTRON2_DATASETS)")
    parser.add_argument("--num-images", type=int, default=100, help="images for flops and inference")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls / steps per setting")
    parser.add_argument("--iters", type=int, default=20, help="timed steps (train) / calls (op)")
    parser.add_argument("--batch-size", type=int, help="train: images per step (default 2, the paper's "
                        "per-GPU batch); op: batch of the problem (default 1)")
    parser.add_argument("--crop", type=int, help="train: crop size (INPUT.IMAGE_SIZE for LSJ mappers, "
                        "else an absolute INPUT.CROP); default: the config's")
    parser.add_argument("--synthetic", action="store_true", help="train on random images and masks")
    parser.add_argument("--input-size", type=int, nargs=2, default=(800, 1200), metavar=("H", "W"),
                        help="op: image size whose stride-8/16/32 feature maps are attended")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("W", "H"),
                        help="inference: resize the raw images to W x H pixels first (e.g. 4000 3000 "
                             "for a phone photo); the outputs are at that size, the network input is "
                             "still the test resize. A setting's image_size=WxH overrides it")
    parser.add_argument("--impls", nargs="+", default=["pytorch", "compiled"],
                        help="op: implementations to time when a setting does not name one "
                        "(unavailable ones are reported as skipped)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights and inputs")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two settings to run side by side")
    parser.add_argument("--output", metavar="JSON", help="write all results to this file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser


# ----------------------------------------------------------------------------- settings / config


def setting_device(args, setting: Setting) -> torch.device:
    device = torch.device(setting.device or args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Setting {setting.spec!r}: device {device} requested but CUDA is not available")
    return device


def setting_dtype(args, setting: Setting) -> str:
    return setting.dtype or args.dtype


@contextlib.contextmanager
def activate(setting: Setting) -> Iterator[None]:
    """Apply the setting's implementation (environment variable) and thread count."""
    threads = torch.get_num_threads()
    if setting.threads is not None:
        torch.set_num_threads(setting.threads)
    try:
        with impl_env(setting.impl):
            yield
    finally:
        torch.set_num_threads(threads)


def build_cfg(args, setting: Setting, task: str):
    """Config file + command-line overrides + the setting's overrides, with MODEL.DEVICE, for
    inference TEST.PRECISION from a bf16 / fp16 dtype and, for training, the batch size, crop and
    mixed precision of the benchmark."""
    if not args.config_file:
        raise ValueError(f"--config-file is required for --task {task}")
    register_datasets(getattr(args, "datasets", []))
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.merge_from_list(list(setting.overrides))
    for change in configure_datasets(cfg):
        logger.info("Config fitted to the datasets: %s", change)
    cfg.MODEL.DEVICE = str(setting_device(args, setting))
    if task == "inference" and setting_dtype(args, setting) != "fp32":
        cfg.TEST.PRECISION = AMP_PRECISION[setting_dtype(args, setting)]
    if task == "train":
        cfg.SOLVER.IMS_PER_BATCH = args.batch_size or 2
        cfg.DATALOADER.NUM_WORKERS = 0
        dtype = setting_dtype(args, setting)
        cfg.SOLVER.AMP.ENABLED = dtype != "fp32"
        if dtype != "fp32":
            cfg.SOLVER.AMP.PRECISION = AMP_PRECISION[dtype]
        if args.crop:
            if cfg.INPUT.DATASET_MAPPER_NAME.endswith("_lsj"):
                cfg.INPUT.IMAGE_SIZE = args.crop
            else:
                cfg.INPUT.CROP.ENABLED = True
                cfg.INPUT.CROP.TYPE = "absolute"
                cfg.INPUT.CROP.SIZE = (args.crop, args.crop)
    cfg.freeze()
    return cfg


def crop_size(cfg) -> int:
    if cfg.INPUT.DATASET_MAPPER_NAME.endswith("_lsj"):
        return cfg.INPUT.IMAGE_SIZE
    if cfg.INPUT.CROP.ENABLED and cfg.INPUT.CROP.TYPE == "absolute":
        return max(cfg.INPUT.CROP.SIZE)
    return cfg.INPUT.MIN_SIZE_TRAIN[-1]


def load_images(args, cfg) -> List[Tuple[str, np.ndarray]]:
    """The first ``--num-images`` images, as BGR uint8 arrays (what ``Predictor`` takes).

    Raises:
        FileNotFoundError: ``--images`` matches no image file, or the dataset's images are missing.
        ValueError: no ``--images`` and the config has no DATASETS.TEST.
    """
    if args.images:
        if os.path.isdir(args.images):
            paths = [os.path.join(args.images, f) for f in sorted(os.listdir(args.images))]
        else:
            paths = sorted(glob.glob(args.images))
        paths = [p for p in paths if p.lower().endswith(IMAGE_EXTENSIONS)]
        if not paths:
            raise FileNotFoundError(f"--images {args.images!r} matches no image file {IMAGE_EXTENSIONS}")
    else:
        if not len(cfg.DATASETS.TEST):
            raise ValueError("Pass --images: the config has no DATASETS.TEST to take images from")
        paths = dataset_images(cfg.DATASETS.TEST[0])
    return [(p, read_image(p, format="BGR")) for p in paths[: args.num_images]]


def dataset_images(name: str) -> List[str]:
    """Image files of a registered dataset in its order; when its annotations are missing, the
    sorted files under its metadata's ``image_root`` / ``image_dir`` (images need no labels)."""
    try:
        return [record["file_name"] for record in DatasetCatalog.get(name)]
    except FileNotFoundError as exc:
        metadata = MetadataCatalog.get(name)
        root = metadata.get("image_root") or metadata.get("image_dir")
        if not root or not os.path.isdir(root):
            raise
        logger.warning("Listing the images under %s instead of dataset %s (%s)", root, name, exc)
        files = glob.glob(os.path.join(root, "**", "*"), recursive=True)
        return sorted(f for f in files if f.lower().endswith(IMAGE_EXTENSIONS))


def sized_images(args, setting: Setting, images: Sequence[Tuple[str, np.ndarray]]):
    """``images`` resized (bilinear) to the setting's ``image_size`` or ``--image-size`` (W, H);
    unchanged when neither is given."""
    size = setting.image_size or (tuple(args.image_size) if args.image_size else None)
    if size is None:
        return list(images)
    return [(path, cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)) for path, image in images]


def network_input(image_bgr: np.ndarray, cfg, resize: ResizeShortestEdge) -> torch.Tensor:
    """The model input of ``Predictor``: INPUT.FORMAT channel order, test resize, float [3, H, W]."""
    image = image_bgr[:, :, ::-1] if cfg.INPUT.FORMAT == "RGB" else image_bgr
    resized = resize.get_transform(image).apply_image(np.ascontiguousarray(image))
    return torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))


def row(setting: Setting, task: str, variant: str = "", **metrics) -> Dict[str, Any]:
    return {"setting": setting.label, "task": task, "variant": variant, "metrics": metrics}


def memory_metrics(memories: Sequence[PeakMemory]) -> Dict[str, Any]:
    """Worst peak and worst working memory over the timed calls."""
    return {
        "peak_memory_mb": max(m.peak_mb for m in memories),
        "peak_memory_increase_mb": max(m.increase_mb for m in memories),
        "memory_kind": memories[0].kind,
    }


def model_impl(args, setting: Setting) -> str:
    """The deformable attention implementation the model runs under ``setting``."""
    with activate(setting):
        return resolve_impl(None, setting_device(args, setting), args.impls)


# ----------------------------------------------------------------------------- tasks


def run_params(args, settings: Sequence[Setting], images) -> Tuple[List[Dict], Dict]:
    """Parameter count of each setting's model (every parameter, and the trainable ones)."""
    rows = []
    for setting in settings:
        cfg = build_cfg(args, setting, "params")
        model = build_model(cfg)
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append(row(setting, "params", params=params, params_m=params / 1e6, trainable_params=trainable))
        del model
    return rows, {}


def run_flops(args, settings: Sequence[Setting], images) -> Tuple[List[Dict], Dict]:
    """GFLOPs per image (mean and std over ``images``), per operator, and the ops not counted."""
    rows = []
    for setting in settings:
        cfg = build_cfg(args, setting, "flops")
        device = setting_device(args, setting)
        torch.manual_seed(args.seed)
        model = build_model(cfg).to(device).eval()
        Checkpointer.from_config(cfg, model).load(cfg.MODEL.WEIGHTS)
        resize = ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        totals, sizes, by_operator, unsupported = [], [], {}, {}
        with activate(setting):
            for path, image in images:
                tensor = network_input(image, cfg, resize).to(device)
                analysis = count_flops(model, tensor, *image.shape[:2])
                totals.append(analysis.total() / 1e9)
                sizes.append(tuple(tensor.shape[-2:]))
                for op, flops in analysis.by_operator().items():
                    by_operator[op] = by_operator.get(op, 0.0) + flops / 1e9 / len(images)
                for op, count in analysis.unsupported_ops().items():
                    unsupported[op] = max(unsupported.get(op, 0), count)
                logger.info("[%s] flops %s: %.1f GFLOPs", setting.label, os.path.basename(path), totals[-1])
        stats = summarize(totals)
        rows.append(row(
            setting, "flops",
            gflops=stats["mean"], gflops_std=stats["std"], num_images=len(images),
            input_hw_mean=[float(np.mean([s[i] for s in sizes])) for i in (0, 1)],
            by_operator_gflops=dict(sorted(by_operator.items(), key=lambda kv: -kv[1])),
            not_counted_ops=dict(sorted(unsupported.items())),
            msdeformattn_impl=model_impl(args, setting),
        ))
        del model
    return rows, {}


class HeadOutputs:
    """Forward hook keeping the last layer's ``pred_logits`` / ``pred_masks`` of the head (float32,
    CPU) from the latest call."""

    def __init__(self, model: torch.nn.Module):
        self.outputs: Dict[str, torch.Tensor] = {}
        head = getattr(model, "sem_seg_head", None)
        self.handle = head.register_forward_hook(self._keep) if head is not None else None

    def _keep(self, module, inputs, output) -> None:
        if isinstance(output, dict):
            self.outputs = {
                k: output[k].detach().float().cpu() for k in ("pred_logits", "pred_masks") if k in output
            }

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()


def _max_abs_diff(name: str, a: torch.Tensor, b: torch.Tensor) -> Dict[str, float]:
    """``{name}_max_abs_diff``: max |a - b|; ``{name}_rel_diff``: that over max |a|."""
    diff = float((a - b).abs().max())
    scale = float(a.abs().max())
    return {f"{name}_max_abs_diff": diff, f"{name}_rel_diff": diff / scale if scale else diff}


def _category_map(panoptic) -> torch.Tensor:
    ids, segments = panoptic
    categories = torch.full_like(ids, -1)
    for segment in segments:
        categories[ids == segment["id"]] = segment["category_id"]
    return categories


def output_difference(a: Tuple[Dict, Dict], b: Tuple[Dict, Dict]) -> Dict[str, float]:
    """Differences between two settings' outputs on one image: max abs difference of the raw head
    outputs (also relative: divided by the largest magnitude in A's) and of the semantic
    probabilities, and the fraction of pixels whose semantic argmax / panoptic category agree."""
    (raw_a, out_a), (raw_b, out_b) = a, b
    diff: Dict[str, float] = {}
    for key in sorted(raw_a.keys() & raw_b.keys()):
        if raw_a[key].shape == raw_b[key].shape:
            diff.update(_max_abs_diff(key, raw_a[key], raw_b[key]))
    if "sem_seg" in out_a and "sem_seg" in out_b and out_a["sem_seg"].shape == out_b["sem_seg"].shape:
        sem_a, sem_b = out_a["sem_seg"].float(), out_b["sem_seg"].float()
        diff["sem_seg_max_abs_diff"] = float((sem_a - sem_b).abs().max())
        diff["sem_seg_argmax_agreement"] = float((sem_a.argmax(0) == sem_b.argmax(0)).float().mean())
    if "panoptic_seg" in out_a and "panoptic_seg" in out_b:
        cat_a, cat_b = _category_map(out_a["panoptic_seg"]), _category_map(out_b["panoptic_seg"])
        if cat_a.shape == cat_b.shape:
            diff["panoptic_agreement"] = float((cat_a == cat_b).float().mean())
    if "instances" in out_a and "instances" in out_b:
        diff["instances_count_diff"] = float(abs(len(out_a["instances"]) - len(out_b["instances"])))
    return diff


def aggregate_differences(per_image: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """Worst case over images: max of differences, min of agreements."""
    merged: Dict[str, float] = {}
    for diff in per_image:
        for key, value in diff.items():
            worst = min if key.endswith("agreement") else max
            merged[key] = worst(merged[key], value) if key in merged else value
    return merged


def is_torch(setting: Setting) -> bool:
    return setting.backend in (None, "torch")


def onnxruntime_predictor(args, setting: Setting, cfg, predictor: Predictor) -> ExportedPredictor:
    """``predictor``'s model exported to ONNX (temporary directory) and loaded in ONNX Runtime with
    the setting's thread count (default: ONNX Runtime's, all cores)."""
    device, precision = setting_device(args, setting), cfg.TEST.PRECISION
    if device.type != "cpu" or precision != "float32":
        raise ValueError(
            f"Setting {setting.spec!r}: backend=onnxruntime runs float32 on the cpu, not {precision} on {device}"
        )
    with tempfile.TemporaryDirectory(prefix="benchmark_onnx_") as export_dir:
        export_model(cfg, predictor.model, "onnx", export_dir)
        return ExportedPredictor(export_dir, intra_op_num_threads=setting.threads or 0)


def run_inference(args, settings: Sequence[Setting], images) -> Tuple[List[Dict], Dict[str, Any]]:
    """Predictor frames/s and peak memory, settings alternating image by image; with two settings
    also the worst output difference over the images. Settings with the same config share a model."""
    predictors: Dict[str, Predictor] = {}
    chosen, chosen_cfgs = {}, {}
    for setting in settings:
        cfg = build_cfg(args, setting, "inference")
        chosen_cfgs[setting.label] = cfg
        key = cfg.dump()
        if key not in predictors:
            torch.manual_seed(args.seed)
            predictors[key] = Predictor(cfg)
        chosen[setting.label] = predictors[key]
        if setting.backend == "onnxruntime":
            chosen[setting.label] = onnxruntime_predictor(args, setting, cfg, predictors[key])
    inputs = {s.label: sized_images(args, s, images) for s in settings}
    for setting in settings:
        device = setting_device(args, setting)
        warmup_images = inputs[setting.label]
        with activate(setting):
            for i in range(args.warmup):
                time_call(lambda: chosen[setting.label](warmup_images[i % len(warmup_images)][1]), device)
    # Outputs are compared when two settings produce them at the same size.
    compare = len(settings) == 2 and len({inputs[s.label][0][1].shape for s in settings}) == 1
    times = {s.label: [] for s in settings}
    msda_times = {s.label: [] for s in settings}
    memories = {s.label: [] for s in settings}
    differences = []
    for index, (path, _) in enumerate(images):
        outputs = {}
        for setting in settings:
            device = setting_device(args, setting)
            predictor = chosen[setting.label]
            image = inputs[setting.label][index][1]
            hook = HeadOutputs(predictor.model) if compare and is_torch(setting) else None
            timer = ModuleTimer(predictor.model if is_torch(setting) else torch.nn.Module(), MSDeformAttn, device)
            with activate(setting), PeakMemory(device) as memory, timer:
                seconds, output = time_call(lambda: predictor(image), device)
            times[setting.label].append(seconds)
            msda_times[setting.label].append(timer.seconds)
            memories[setting.label].append(memory)
            if compare:
                raw = predictor.model.last_outputs if hook is None else hook.outputs
                if hook is not None:
                    hook.remove()
                outputs[setting.label] = (raw, output)
            del output  # not resident during the next call's memory measurement
            logger.info("[%s] inference %s: %.3f s", setting.label, os.path.basename(path), seconds)
        if compare:
            differences.append(output_difference(*(outputs[s.label] for s in settings)))
    rows = []
    for setting in settings:
        stats = summarize(times[setting.label])
        msda_seconds = summarize(msda_times[setting.label])["mean"]
        rows.append(row(
            setting, "inference",
            fps=1.0 / stats["mean"], seconds_per_image=stats["mean"],
            seconds_per_image_std=stats["std"], seconds_per_image_median=stats["median"],
            msdeformattn_seconds_per_image=msda_seconds if is_torch(setting) else None,
            max_speedup_from_msdeformattn=(
                stats["mean"] / max(stats["mean"] - msda_seconds, 1e-9) if is_torch(setting) else None
            ),
            num_images=len(images), warmup=args.warmup,
            # the precision the network ran in (dtype= / --dtype, or a TEST.PRECISION override)
            dtype=SHORT_DTYPES[chosen_cfgs[setting.label].TEST.PRECISION],
            precision=chosen_cfgs[setting.label].TEST.PRECISION,
            backend=setting.backend or "torch",
            image_size="x".join(str(v) for v in inputs[setting.label][0][1].shape[1::-1]),
            msdeformattn_impl=model_impl(args, setting) if is_torch(setting) else "pytorch (ONNX graph)",
            **memory_metrics(memories[setting.label]),
        ))
    return rows, {"inference": aggregate_differences(differences)} if differences else {}


def synthetic_batch(batch_size: int, size: int, num_classes: int, gen: torch.Generator,
                    num_segments: int = 10) -> List[Dict]:
    """Random uint8 images [3, size, size] with ``num_segments`` random rectangles of random
    classes as ground truth (the training mappers' output format)."""
    batch = []
    for _ in range(batch_size):
        image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=gen)
        masks = np.zeros((num_segments, size, size), dtype=bool)
        corners = torch.randint(0, size, (num_segments, 4), generator=gen).tolist()
        for mask, (y0, y1, x0, x1) in zip(masks, corners):
            mask[min(y0, y1): max(y0, y1) + 1, min(x0, x1): max(x0, x1) + 1] = True
        classes = torch.randint(0, num_classes, (num_segments,), generator=gen).tolist()
        batch.append({"image": image, "height": size, "width": size,
                      "instances": make_instances((size, size), classes, masks)})
    return batch


def training_batches(args, cfg, count: int) -> List[List[Dict]]:
    """``count`` batches of ``SOLVER.IMS_PER_BATCH`` mapped training samples (or synthetic ones)."""
    if args.synthetic:
        gen = torch.Generator().manual_seed(args.seed)
        size = crop_size(cfg)
        return [synthetic_batch(cfg.SOLVER.IMS_PER_BATCH, size, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, gen)
                for _ in range(count)]
    records = get_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    loader = iter(build_train_loader(
        records, build_dataset_mapper(cfg, is_train=True), total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        num_workers=0, seed=args.seed, aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
    ))
    return [next(loader) for _ in range(count)]


def run_train(args, settings: Sequence[Setting], images) -> Tuple[List[Dict], Dict]:
    """Seconds per ``Trainer.run_step`` and peak memory, settings alternating step by step on the
    same pre-loaded batches. Settings with the same config share a trainer (and its weights)."""
    trainers: Dict[str, Trainer] = {}
    batches: Dict[str, List[List[Dict]]] = {}
    chosen = {}
    for setting in settings:
        cfg = build_cfg(args, setting, "train")
        key = cfg.dump()
        if key not in trainers:
            torch.manual_seed(args.seed)
            trainer = Trainer(cfg)
            if cfg.MODEL.WEIGHTS:
                trainer.resume_or_load(resume=False)
            trainer.model.train()
            trainers[key] = trainer
            batches[key] = training_batches(args, cfg, args.warmup + args.iters)
        chosen[setting.label] = key
    for setting in settings:
        key = chosen[setting.label]
        with activate(setting):
            for i in range(args.warmup):
                time_call(lambda: trainers[key].run_step(batches[key][i]), setting_device(args, setting))
    times = {s.label: [] for s in settings}
    memories = {s.label: [] for s in settings}
    losses = {}
    for i in range(args.warmup, args.warmup + args.iters):
        for setting in settings:
            key, device = chosen[setting.label], setting_device(args, setting)
            with activate(setting), PeakMemory(device) as memory:
                seconds, values = time_call(lambda: trainers[key].run_step(batches[key][i]), device)
            times[setting.label].append(seconds)
            memories[setting.label].append(memory)
            losses.setdefault(setting.label, values["total_loss"])
            logger.info("[%s] train step %d: %.3f s", setting.label, i, seconds)
    rows = []
    for setting in settings:
        key = chosen[setting.label]
        cfg = trainers[key].cfg
        timed = [b for batch in batches[key][args.warmup:] for b in batch]
        stats = summarize(times[setting.label])
        rows.append(row(
            setting, "train",
            seconds_per_iter=stats["mean"], seconds_per_iter_std=stats["std"],
            seconds_per_iter_median=stats["median"], iters=args.iters, warmup=args.warmup,
            batch_size=cfg.SOLVER.IMS_PER_BATCH, crop=crop_size(cfg),
            input_hw_mean=[float(np.mean([b["image"].shape[i] for b in timed])) for i in (1, 2)],
            data="synthetic" if args.synthetic else ",".join(cfg.DATASETS.TRAIN),
            amp=cfg.SOLVER.AMP.PRECISION if cfg.SOLVER.AMP.ENABLED else "off",
            first_timed_loss=losses[setting.label], msdeformattn_impl=model_impl(args, setting),
            **memory_metrics(memories[setting.label]),
        ))
    return rows, {}


def op_problem(args, setting: Setting) -> Dict[str, Any]:
    """Problem size of the op: the config's encoder (dims, heads, points, levels) or R50's."""
    dims, heads, points, strides = 256, 8, 4, [8, 16, 32]
    if args.config_file:
        head = build_cfg(args, setting, "op").MODEL.SEM_SEG_HEAD
        dims = head.CONVS_DIM
        heads = head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS
        points = head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS
        strides = [STRIDES[f] for f in head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES]
    height, width = args.input_size
    return {"level_shapes": level_shapes(height, width, strides), "heads": heads,
            "channels": dims // heads, "points": points, "batch": args.batch_size or 1,
            "input_size": [height, width]}


def _timed_loop(fn, device: torch.device, warmup: int, iters: int) -> Tuple[Dict, PeakMemory, Any]:
    """``warmup`` untimed calls, then ``iters`` timed ones: (millisecond statistics, peak memory of
    the timed calls, the last result)."""
    for _ in range(warmup):
        fn()
    times, result = [], None
    with PeakMemory(device) as memory:
        for _ in range(iters):
            seconds, result = time_call(fn, device)
            times.append(seconds * 1e3)
    return summarize(times), memory, result


def run_op(args, settings: Sequence[Setting], images) -> Tuple[List[Dict], Dict[str, Any]]:
    """``ms_deform_attn`` forward and forward+backward times and working memory per setting and
    implementation; unavailable implementations or dtypes are reported as skipped."""
    rows, results = [], {}
    for setting in settings:
        problem = op_problem(args, setting)
        device, dtype = setting_device(args, setting), setting_dtype(args, setting)
        value, shapes, starts, locations, weights = msdeformattn_inputs(
            problem["level_shapes"], problem["heads"], problem["channels"], problem["points"],
            problem["batch"], DTYPES[dtype], device, args.seed,
        )
        gen = torch.Generator().manual_seed(args.seed + 1)
        grad_output = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3],
                                  generator=gen).to(device=device, dtype=value.dtype)
        leaves = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]
        for impl in [setting.impl] if setting.impl else args.impls:
            variant = "" if setting.impl else impl

            def forward(impl=impl):
                with torch.no_grad():
                    return ms_deform_attn(value, shapes, starts, locations, weights, impl=impl)

            def forward_backward(impl=impl):
                output = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], impl=impl)
                return (output.detach(),) + torch.autograd.grad(output, leaves, grad_output)

            with activate(setting):
                try:
                    resolved = resolve_impl(impl, device, args.impls)
                    fwd, fwd_memory, _ = _timed_loop(forward, device, args.warmup, args.iters)
                    fwd_bwd, fwd_bwd_memory, tensors = _timed_loop(
                        forward_backward, device, args.warmup, args.iters
                    )
                except (ValueError, RuntimeError) as exc:
                    # unknown / unsuitable implementation, or a dtype it does not support
                    logger.warning("[%s] skipping ms_deform_attn impl %r: %s", setting.label, impl, exc)
                    rows.append(row(setting, "op", variant, impl=impl, skipped=str(exc)))
                    continue
            results[(setting.label, variant, resolved)] = [t.float().cpu() for t in tensors]
            logger.info("[%s] op %s: forward %.1f ms, forward+backward %.1f ms",
                        setting.label, resolved, fwd["mean"], fwd_bwd["mean"])
            rows.append(row(
                setting, "op", variant, component=args.component, impl=resolved, dtype=dtype,
                forward_ms=fwd["mean"], forward_ms_median=fwd["median"], forward_ms_std=fwd["std"],
                forward_backward_ms=fwd_bwd["mean"], forward_backward_ms_median=fwd_bwd["median"],
                forward_backward_ms_std=fwd_bwd["std"],
                forward_peak_memory_increase_mb=fwd_memory.increase_mb,
                forward_backward_peak_memory_increase_mb=fwd_bwd_memory.increase_mb,
                peak_memory_mb=fwd_bwd_memory.peak_mb, memory_kind=fwd_bwd_memory.kind,
                iters=args.iters, warmup=args.warmup, **problem,
            ))
    _add_op_differences(rows, results, len(settings) == 2)
    return rows, {}


def _max_abs_diffs(a: List[torch.Tensor], b: List[torch.Tensor]) -> Dict[str, float]:
    names = ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights")
    return {k: v for name, x, y in zip(names, b, a) for k, v in _max_abs_diff(name, x, y).items()}


def _same_shapes(a: List[torch.Tensor], b: List[torch.Tensor]) -> bool:
    return [t.shape for t in a] == [t.shape for t in b]


def _add_op_differences(rows: List[Dict], results: Dict, compare: bool) -> None:
    """Per measured row: max abs (and relative) differences of output and gradients against the
    PyTorch implementation of the same setting, and with --compare against setting A's matching row."""
    for r in rows:
        m = r["metrics"]
        if "skipped" in m:
            continue
        mine = results[(r["setting"], r["variant"], m["impl"])]
        reference = next((v for (label, _, impl), v in results.items()
                          if label == r["setting"] and impl == "pytorch"), None)
        if reference is not None and m["impl"] != "pytorch" and _same_shapes(mine, reference):
            m["difference_vs_pytorch"] = _max_abs_diffs(mine, reference)
        if compare and r["setting"] != "A":
            other = next((v for (label, variant, _), v in results.items()
                          if label == "A" and variant == r["variant"]), None)
            if other is not None and _same_shapes(mine, other):
                m["difference_vs_A"] = _max_abs_diffs(mine, other)


RUNNERS = {
    "params": run_params, "flops": run_flops, "inference": run_inference, "train": run_train, "op": run_op,
}


# ----------------------------------------------------------------------------- report


def comparisons(rows: List[Dict], differences: Dict[str, Any]) -> List[Dict]:
    """B/A ratios of the key metrics for the rows of the same task and variant."""
    out = []
    for b in (r for r in rows if r["setting"] == "B"):
        a = next((r for r in rows if r["setting"] == "A" and r["task"] == b["task"]
                  and r["variant"] == b["variant"]), None)
        if a is None or "skipped" in a["metrics"] or "skipped" in b["metrics"]:
            continue
        ratios = {
            key: b["metrics"][key] / a["metrics"][key]
            for key in KEY_METRICS[b["task"]]
            if a["metrics"].get(key) and b["metrics"].get(key) is not None
        }
        entry = {"task": b["task"], "variant": b["variant"], "ratios_B_over_A": ratios}
        if b["task"] in differences:
            entry["output_difference"] = differences[b["task"]]
        if "difference_vs_A" in b["metrics"]:
            entry["output_difference"] = b["metrics"]["difference_vs_A"]
        out.append(entry)
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_report(env: Dict, settings: Sequence[Setting], rows: List[Dict], compared: List[Dict]) -> None:
    gpu = f" ({env['gpu']})" if "gpu" in env else ""
    print(f"{env['cpu']} ({env['cpu_count']} CPUs), torch {env['torch']}, {env['torch_threads']} threads, "
          f"device {env['device']}{gpu}, load average {env.get('load_average_1_5_15')}, "
          f"compiled op built: {env['compiled_extension']} (CPU kernels: {env.get('compiled_cpu_kernels')})")
    for s in settings:
        print(f"setting {s.label}: {s.spec or 'default'}")
    for task in TASKS:
        task_rows = [r for r in rows if r["task"] == task]
        if not task_rows:
            continue
        columns = ["backend", "msdeformattn_impl", "impl", "dtype", "image_size", *KEY_METRICS[task], "skipped"]
        columns = [c for c in columns if any(c in r["metrics"] for r in task_rows)]
        table = [[r["setting"], r["variant"], *(_fmt(r["metrics"].get(c, "")) for c in columns)]
                 for r in task_rows]
        print(f"\n{task}")
        print(tabulate(table, headers=["setting", "variant", *columns], tablefmt="github"))
    if compared:
        table = [[c["task"], c["variant"], key, _fmt(value)]
                 for c in compared for key, value in c["ratios_B_over_A"].items()]
        print("\nB / A")
        print(tabulate(table, headers=["task", "variant", "metric", "B/A"], tablefmt="github"))
        diffs = [[c["task"], c["variant"], key, _fmt(value)]
                 for c in compared for key, value in c.get("output_difference", {}).items()]
        if diffs:
            print("\noutput difference B vs A (max abs differences and pixel agreements, worst image)")
            print(tabulate(diffs, headers=["task", "variant", "quantity", "value"], tablefmt="github"))


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    args.opts = [o for o in args.opts if o != "--"]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = args.compare or ["default"]
    settings = [parse_setting(spec, label) for spec, label in zip(specs, "AB")]
    other_tasks = sorted(set(args.task) - {"inference"})
    if other_tasks and any(not is_torch(s) for s in settings):
        raise ValueError(f"backend=onnxruntime is only for --task inference, not {other_tasks}")
    env = environment_info(torch.device(args.device))
    images = []
    if {"flops", "inference"} & set(args.task):
        images = load_images(args, build_cfg(args, settings[0], "images"))
        logger.info("%d images, e.g. %s", len(images), images[0][0])
    rows, differences = [], {}
    for task in args.task:
        task_rows, task_differences = RUNNERS[task](args, settings, images)
        rows += task_rows
        differences.update(task_differences)
    compared = comparisons(rows, differences) if args.compare else []
    env_after: Dict[str, Any] = {"process_peak_rss_mb": process_peak_rss_mb()}
    if hasattr(os, "getloadavg"):
        env_after["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "environment": env, "environment_after": env_after, "command": sys.argv,
        "args": vars(args),
        "settings": [s.as_dict() for s in settings], "images": [p for p, _ in images],
        "results": rows, "comparisons": compared,
    }
    print_report(env, settings, rows, compared)
    if args.output:
        with atomic_write(args.output) as f:
            json.dump(report, f, indent=2, default=str)
        print(f"\nwrote {args.output}")
    return report


if __name__ == "__main__":
    main()
