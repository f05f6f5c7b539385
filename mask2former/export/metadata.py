"""``metadata.json`` written beside an exported model: everything the runtime needs besides the
graph (input convention, test-time resize, post-processing settings, class names and colours), so
that the exported directory can be used without the config or the dataset registry."""
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict

from ..data.catalog import Metadata, MetadataCatalog
from ..modeling.meta_arch import MaskFormer

__all__ = [
    "METADATA_FILE",
    "METADATA_VERSION",
    "build_export_metadata",
    "dataset_metadata",
    "read_metadata",
    "write_metadata",
]

METADATA_FILE = "metadata.json"
METADATA_VERSION = 1

# dataset-metadata fields that describe classes (file paths and evaluator settings are left out)
_CLASS_FIELDS = (
    "thing_classes", "thing_colors", "stuff_classes", "stuff_colors",
    "thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id",
    "ignore_label", "label_divisor",
)
_ID_MAPS = ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id")


def _class_fields(metadata: Metadata) -> Dict[str, Any]:
    fields = {}
    for key in _CLASS_FIELDS:
        value = metadata.get(key)
        if value is None:
            continue
        if key in _ID_MAPS:
            value = {str(k): int(v) for k, v in value.items()}
        elif key.endswith("_colors"):
            value = [[int(c) for c in color] for color in value]
        fields[key] = value
    return fields


def build_export_metadata(cfg, model: MaskFormer, *, model_format: str, model_file: str, exporter: str) -> Dict:
    """The metadata dict of an exported ``model`` built from ``cfg``.

    Keys: ``version``; ``format`` ("onnx" or "exported-program"), ``file``, ``exporter``;
    ``input`` (name, dtype, layout, ``channel_format`` = INPUT.FORMAT, value range, and
    ``size_divisibility``: H and W of the graph input must be multiples of it); ``outputs``;
    ``pixel_mean``/``pixel_std`` (applied inside the graph; the runtime pads with ``pixel_mean``);
    ``test_resize`` (``min_size``/``max_size`` of the short/long edge, INPUT.MIN/MAX_SIZE_TEST);
    ``postprocessing`` (the keyword arguments of
    :func:`~mask2former.modeling.postprocessing.mask_classification_inference`, with the
    contiguous ``thing_classes`` of the training metadata); ``num_classes``, ``num_queries``;
    ``dataset``: name and class fields (names, colours, id maps) of ``DATASETS.TEST[0]``
    (``DATASETS.TRAIN[0]`` when there is no test set).
    """
    dataset_name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else cfg.DATASETS.TRAIN[0]
    return {
        "version": METADATA_VERSION,
        "format": model_format,
        "file": model_file,
        "exporter": exporter,
        "input": {
            "name": "image",
            "dtype": "float32",
            "layout": "NCHW",
            "channel_format": cfg.INPUT.FORMAT,
            "value_range": [0, 255],
            "size_divisibility": int(model.size_divisibility),
        },
        "outputs": {
            "pred_logits": "float32 [N, Q, K+1] class logits, last = no object",
            "pred_masks": "float32 [N, Q, H/4, W/4] mask logits",
        },
        "pixel_mean": [float(v) for v in model.pixel_mean.flatten()],
        "pixel_std": [float(v) for v in model.pixel_std.flatten()],
        "test_resize": {"min_size": int(cfg.INPUT.MIN_SIZE_TEST), "max_size": int(cfg.INPUT.MAX_SIZE_TEST)},
        "postprocessing": {
            "semantic_on": bool(model.semantic_on),
            "panoptic_on": bool(model.panoptic_on),
            "instance_on": bool(model.instance_on),
            "sem_seg_postprocess_before_inference": bool(model.sem_seg_postprocess_before_inference),
            "object_mask_threshold": float(model.object_mask_threshold),
            "overlap_threshold": float(model.overlap_threshold),
            "thing_classes": model.thing_classes if model.panoptic_on else None,
            "test_topk_per_image": int(model.test_topk_per_image),
        },
        "num_classes": int(model.sem_seg_head.num_classes),
        "num_queries": int(model.num_queries),
        "dataset": {"name": dataset_name, **_class_fields(MetadataCatalog.get(dataset_name))},
    }


def write_metadata(metadata: Dict, directory: Path) -> Path:
    """Write ``metadata`` to ``directory/metadata.json`` atomically (temporary file + rename)."""
    path = Path(directory) / METADATA_FILE
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=".metadata.", suffix=".json")
    os.chmod(tmp, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(metadata, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def read_metadata(directory: Path) -> Dict:
    """Read and check ``directory/metadata.json``.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: it is not JSON, or lacks a key or has another ``version`` than this code writes.
    """
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; export the model with tools/export_model.py first")
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    required = ("version", "format", "file", "input", "pixel_mean", "test_resize", "postprocessing", "dataset")
    missing = [k for k in required if k not in metadata] if isinstance(metadata, dict) else list(required)
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    if metadata["version"] != METADATA_VERSION:
        raise ValueError(f"{path}: version {metadata['version']!r}, expected {METADATA_VERSION}")
    return metadata


def dataset_metadata(metadata: Dict) -> Metadata:
    """A :class:`Metadata` (for :class:`~mask2former.utils.visualizer.Visualizer`) from the
    ``dataset`` entry of an export's metadata, id maps with int keys again. It is not registered
    in ``MetadataCatalog``."""
    fields = dict(metadata["dataset"])
    name = fields.pop("name")
    for key in _ID_MAPS:
        if key in fields:
            fields[key] = {int(k): int(v) for k, v in fields[key].items()}
    return Metadata(name=name, **fields)
