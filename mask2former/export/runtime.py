"""Run an exported model (``tools/export_model.py`` output) with the project's own pre- and
post-processing, so that results have exactly the format of the PyTorch model and predictor.

Backends: ``"onnxruntime"`` for ``model.onnx`` (``pip install -e ".[export]"``), ``"torch"`` for
``model.pt2`` (``torch.export.load``; no model code is imported for the graph itself).
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..data.transforms import ResizeShortestEdge
from ..engine.predictor import Predictor
from ..modeling.postprocessing import mask_classification_inference
from ..structures import ImageList
from .metadata import dataset_metadata, read_metadata

__all__ = ["BACKENDS", "ExportedMaskFormer", "ExportedPredictor"]

# backend -> the format it runs
BACKENDS = {"onnxruntime": "onnx", "torch": "exported-program"}


class ExportedMaskFormer:
    """An exported Mask2Former with the inference interface of :class:`MaskFormer` in eval mode.

    Pre-processing pads the images bottom/right to a multiple of ``size_divisibility`` with
    ``pixel_mean`` (which the graph's normalisation maps to the zeros the PyTorch model pads with),
    so any input size is accepted; post-processing is
    :func:`~mask2former.modeling.postprocessing.mask_classification_inference`.

    Args:
        export_dir: directory with ``metadata.json`` and the model file it names.
        backend: ``"onnxruntime"`` or ``"torch"``; None picks the one for the exported format.
        providers: ONNX Runtime execution providers (default ``["CPUExecutionProvider"]``).
        intra_op_num_threads: ONNX Runtime threads per op (0 = its default, all cores).

    Attributes:
        metadata: the export's metadata dict; size_divisibility: int; last_outputs: the raw
            ``pred_logits`` / ``pred_masks`` of the latest call (empty before the first).

    Raises:
        FileNotFoundError: ``metadata.json`` or the model file is missing.
        ValueError: bad metadata, unknown backend, or a backend that cannot run this format.
        ImportError: ``onnxruntime`` is not installed (for that backend).
    """

    def __init__(
        self,
        export_dir,
        backend: Optional[str] = None,
        *,
        providers: Optional[Sequence[str]] = None,
        intra_op_num_threads: int = 0,
    ):
        export_dir = Path(export_dir)
        self.metadata = read_metadata(export_dir)
        model_format = self.metadata["format"]
        if backend is None:
            backend = next((b for b, f in BACKENDS.items() if f == model_format), None)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}")
        if BACKENDS[backend] != model_format:
            raise ValueError(
                f"backend {backend!r} runs the {BACKENDS[backend]!r} format; {export_dir} holds "
                f"{model_format!r} (metadata.json 'format')"
            )
        path = export_dir / self.metadata["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: model file named by {export_dir / 'metadata.json'} not found")
        self.backend = backend
        if backend == "onnxruntime":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = intra_op_num_threads
            self._session = onnxruntime.InferenceSession(
                str(path), options, providers=list(providers or ["CPUExecutionProvider"])
            )
        else:
            self._program = torch.export.load(str(path)).module()
        self.size_divisibility = int(self.metadata["input"]["size_divisibility"])
        self.pixel_mean = torch.tensor(self.metadata["pixel_mean"], dtype=torch.float32).view(-1, 1, 1)
        self._postprocessing = dict(self.metadata["postprocessing"])
        self.last_outputs: Dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def run(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The raw graph: float32 [N, 3, H, W] (H, W multiples of ``size_divisibility``, 0-255,
        ``INPUT.FORMAT`` order) -> ``pred_logits`` [N, Q, K+1], ``pred_masks`` [N, Q, H/4, W/4].

        Raises:
            ValueError: a wrong shape, dtype, or a size not divisible by ``size_divisibility``.
        """
        d = max(self.size_divisibility, 1)
        if images.dtype != torch.float32 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be float32 [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        if images.shape[2] % d or images.shape[3] % d:
            raise ValueError(f"image size {tuple(images.shape[2:])} is not a multiple of size_divisibility {d}")
        if self.backend == "onnxruntime":
            logits, masks = self._session.run(None, {"image": images.contiguous().numpy()})
            return torch.from_numpy(logits), torch.from_numpy(masks)
        with torch.no_grad():
            logits, masks = self._program(images)
        return logits, masks

    def pad(self, images: List[torch.Tensor]) -> ImageList:
        """Batch float [3, H_i, W_i] images, padded bottom/right with ``pixel_mean`` to a common
        size divisible by ``size_divisibility``."""
        batch = ImageList.from_tensors(images, self.size_divisibility)
        tensor = batch.tensor
        for i, (h, w) in enumerate(batch.image_sizes):
            tensor[i, :, h:, :] = self.pixel_mean
            tensor[i, :, :h, w:] = self.pixel_mean
        return batch

    def __call__(self, batched_inputs: List[Dict]) -> List[Dict]:
        """Like :meth:`MaskFormer.forward` in eval mode.

        Args:
            batched_inputs: dicts with ``image`` [3, H, W] (uint8 or float, 0-255, ``INPUT.FORMAT``
                order) and optional ``height``/``width`` (output resolution).

        Returns:
            One dict per image with, as the exported model's config enables, ``sem_seg``,
            ``panoptic_seg`` and ``instances`` (see :meth:`MaskFormer.forward`), on the CPU.
        """
        batch = self.pad([x["image"].to("cpu", torch.float32) for x in batched_inputs])
        logits, masks = self.run(batch.tensor)
        self.last_outputs = {"pred_logits": logits, "pred_masks": masks}
        results = []
        for mask_cls, mask_pred, image_size, x in zip(logits, masks, batch.image_sizes, batched_inputs):
            height = x.get("height", image_size[0])
            width = x.get("width", image_size[1])
            results.append(
                mask_classification_inference(
                    mask_cls, mask_pred, image_size, height, width,
                    padded_size=tuple(batch.tensor.shape[-2:]), **self._postprocessing,
                )
            )
        return results


class ExportedPredictor(Predictor):
    """:class:`~mask2former.engine.predictor.Predictor` on an exported model: the same test-time
    resize (from the metadata's ``test_resize``), channel order and output format, without the
    config or the model code.

    Args:
        export_dir, backend, **runtime_kwargs: as :class:`ExportedMaskFormer`.

    Attributes:
        model: the :class:`ExportedMaskFormer`; metadata: class names and colours of the
            exported dataset (:class:`Metadata`).

    Example::

        predictor = ExportedPredictor("export/r50_coco_panoptic")
        outputs = predictor(cv2.imread("input.jpg"))  # same keys and types as Predictor's
    """

    def __init__(self, export_dir, backend: Optional[str] = None, **runtime_kwargs):
        self.model = ExportedMaskFormer(export_dir, backend, **runtime_kwargs)
        self.input_format = self.model.metadata["input"]["channel_format"]
        self.device = self.model.device
        self.metadata = dataset_metadata(self.model.metadata)
        resize = self.model.metadata["test_resize"]
        self.resize = ResizeShortestEdge(resize["min_size"], resize["max_size"])
