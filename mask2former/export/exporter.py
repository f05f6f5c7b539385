"""Export a Mask2Former model to ONNX (``model.onnx``) or a ``torch.export`` program
(``model.pt2``), with ``metadata.json`` beside it.

ONNX uses PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): it
needs only the ``onnx`` package, and with the model's sizes kept symbolic (see
``spatial_shapes_list`` in :mod:`mask2former.layers.ms_deform_attn_op`) it gives a graph with
dynamic batch, height and width. The dynamo-based exporter (torch's default) additionally needs
``onnxscript``. Multi-scale deformable attention exports through its ``grid_sample``
formulation, hence ONNX opset >= 16.
"""
import contextlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import torch

from ..modeling.meta_arch import MaskFormer
from ..utils.benchmark import impl_env
from .metadata import build_export_metadata, write_metadata
from .model import ExportError, MaskFormerExportWrapper, check_exportable

__all__ = ["FORMATS", "MIN_OPSET", "export_model", "example_image"]

# format -> file name
FORMATS = {"onnx": "model.onnx", "exported-program": "model.pt2"}
MIN_OPSET = 16  # GridSample
DEFAULT_OPSET = 17
# largest H and W the exported program accepts
_MAX_SIDE = 4096


def example_image(size_divisibility: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A float32 [batch, 3, 8d, 10d] image of integer values in 0..255 (d = size divisibility),
    used to trace the graph. Batch 2 and H != W keep those sizes from being specialised."""
    d = max(int(size_divisibility), 1)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, 8 * d, 10 * d), generator=generator).float()


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed to it when the block succeeds."""
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the export unreadable to others
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _export_onnx(wrapper: MaskFormerExportWrapper, example: torch.Tensor, path: Path, opset: int) -> str:
    with warnings.catch_warnings():
        # the shape checks in the model are Python comparisons, true by construction when traced
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["pred_logits", "pred_masks"],
            dynamic_axes={
                "image": {0: "batch", 2: "height", 3: "width"},
                "pred_logits": {0: "batch"},
                "pred_masks": {0: "batch", 2: "mask_height", 3: "mask_width"},
            },
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return f"torch.onnx.export (TorchScript-based, dynamo=False), opset {opset}, torch {torch.__version__}"


def _export_program(wrapper: MaskFormerExportWrapper, example: torch.Tensor, path: Path, divisibility: int) -> str:
    d = max(divisibility, 1)
    dims = {
        0: torch.export.Dim("batch", min=1, max=64),
        2: d * torch.export.Dim("height_div", min=1, max=_MAX_SIDE // d),
        3: d * torch.export.Dim("width_div", min=1, max=_MAX_SIDE // d),
    }
    program = torch.export.export(wrapper, (example,), dynamic_shapes={"image": dims})
    torch.export.save(program, str(path))
    return f"torch.export.export, torch {torch.__version__}"


def export_model(
    cfg,
    model: MaskFormer,
    model_format: str,
    output_dir,
    *,
    opset: int = DEFAULT_OPSET,
    example: Optional[torch.Tensor] = None,
) -> Tuple[Path, Dict]:
    """Export ``model`` (built from ``cfg``, weights loaded, on the CPU) to ``output_dir``.

    Args:
        cfg: the model's config (read for :func:`check_exportable` and the metadata).
        model: the MaskFormer to export; put in eval mode.
        model_format: ``"onnx"`` or ``"exported-program"``.
        output_dir: created if needed; receives ``model.onnx`` or ``model.pt2`` and
            ``metadata.json``, each written to a temporary file first and renamed.
        opset: ONNX opset, >= 16 (``GridSample``).
        example: the traced input, float32 [N, 3, H, W]; default :func:`example_image`.

    Returns:
        The model file's path and the metadata dict.

    Raises:
        ExportError: the config cannot be exported (naming the option), or a bad format/opset.
    """
    if model_format not in FORMATS:
        raise ExportError(f"--format must be one of {sorted(FORMATS)}, got {model_format!r}")
    if model_format == "onnx" and opset < MIN_OPSET:
        raise ExportError(f"ONNX opset {opset} has no GridSample (deformable attention); use >= {MIN_OPSET}")
    check_exportable(cfg, model_format)
    model = model.eval()
    wrapper = MaskFormerExportWrapper(model).eval()
    if example is None:
        example = example_image(model.size_divisibility)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / FORMATS[model_format]
    with impl_env("pytorch"), torch.no_grad(), _atomic_path(path) as tmp:
        if model_format == "onnx":
            exporter = _export_onnx(wrapper, example, tmp, opset)
        else:
            exporter = _export_program(wrapper, example, tmp, int(model.size_divisibility))
    metadata = build_export_metadata(
        cfg, model, model_format=model_format, model_file=path.name, exporter=exporter
    )
    write_metadata(metadata, output_dir)
    return path, metadata
