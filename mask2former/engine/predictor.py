"""End-to-end inference on raw images, like Detectron2's ``DefaultPredictor``."""

import logging
from typing import Dict, List, Tuple

import numpy as np
import torch

from ..checkpoint import Checkpointer
from ..data.catalog import MetadataCatalog
from ..data.transforms import ResizeShortestEdge
from ..modeling.build import build_model
from ..modeling.precision import prepare_for_inference

__all__ = ["Predictor"]


class Predictor:
    """Build the model of ``cfg``, load ``cfg.MODEL.WEIGHTS`` and run it on OpenCV-style images.

    Per image it applies the test-time resize (short edge ``INPUT.MIN_SIZE_TEST``, long edge at most
    ``INPUT.MAX_SIZE_TEST``), converts BGR to ``INPUT.FORMAT`` and asks the model for outputs at the
    original resolution.

    Args:
        cfg: a config node (``mask2former.config.get_cfg()`` merged with a model config).

    Attributes:
        model: the model, in eval mode, on ``cfg.MODEL.DEVICE``, its network in the
            ``TEST.PRECISION`` dtype (:func:`~mask2former.modeling.precision.prepare_for_inference`;
            outputs are float32 whatever the precision).
        metadata: ``MetadataCatalog.get(cfg.DATASETS.TEST[0])`` (class names and colours), or
            ``None`` when ``DATASETS.TEST`` is empty.

    Raises:
        ValueError: ``INPUT.FORMAT`` is neither "RGB" nor "BGR", or ``TEST.PRECISION`` is unknown.
        FileNotFoundError / OSError / ValueError: from :meth:`Checkpointer.load` when
            ``MODEL.WEIGHTS`` is missing, cannot be downloaded or is not a checkpoint.

    Example::

        predictor = Predictor(cfg)
        outputs = predictor(cv2.imread("input.jpg"))  # {"panoptic_seg": ..., "sem_seg": ..., ...}
    """

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {cfg.INPUT.FORMAT!r}")
        self.input_format = cfg.INPUT.FORMAT
        self.device = torch.device(cfg.MODEL.DEVICE)
        self.model = build_model(self.cfg).to(self.device).eval()
        self.metadata = (
            MetadataCatalog.get(cfg.DATASETS.TEST[0]) if len(cfg.DATASETS.TEST) else None
        )
        if not cfg.MODEL.WEIGHTS:
            logging.getLogger(__name__).warning(
                "MODEL.WEIGHTS is empty: predicting with random weights"
            )
        Checkpointer.from_config(cfg, self.model).load(cfg.MODEL.WEIGHTS)
        prepare_for_inference(self.model, cfg.TEST.PRECISION)
        self.resize = ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)

    def __call__(self, original_image: np.ndarray) -> Dict:
        """Predict one image.

        Args:
            original_image: uint8 [H, W, 3] in BGR order (as read by ``cv2.imread``).

        Returns:
            The model's output dict for the image, at H x W (e.g. ``"sem_seg"`` float [K, H, W],
            ``"panoptic_seg"`` (int32 [H, W] ids, segments_info), ``"instances"``), on the device;
            see :meth:`MaskFormer.forward` for the ``COMPACT_OUTPUTS`` format.

        Raises:
            ValueError: the image is not a uint8 [H, W, 3] array.
        """
        return self.predict_batch([original_image])[0]

    def predict_batch(self, images: List[np.ndarray]) -> List[Dict]:
        """Predict several BGR uint8 [H, W, 3] images; returns one output dict per image, in order.

        Images whose padded network inputs have the same size run in one forward pass; the
        others in separate passes, so padding never makes a result differ from ``self(image)``
        (beyond float rounding: some CPU kernels sum in another order for a batch).
        """
        inputs = [self._prepare(image) for image in images]
        outputs: List[Dict] = [{} for _ in images]
        with torch.no_grad():
            for indices in self._group_by_padded_size(inputs).values():
                batch_outputs = self.model([inputs[i] for i in indices])
                for i, output in zip(indices, batch_outputs):
                    outputs[i] = output
        return outputs

    def _prepare(self, image: np.ndarray) -> Dict:
        if not (
            isinstance(image, np.ndarray)
            and image.dtype == np.uint8
            and image.ndim == 3
            and image.shape[2] == 3
        ):
            raise ValueError(
                "Predictor expects a uint8 [H, W, 3] BGR image, got "
                + (
                    f"{image.dtype} {image.shape}"
                    if isinstance(image, np.ndarray)
                    else type(image).__name__
                )
            )
        if self.input_format == "RGB":
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(np.ascontiguousarray(image))
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)).to(self.device)
        return {"image": tensor, "height": height, "width": width}

    def _group_by_padded_size(self, inputs: List[Dict]) -> Dict[Tuple[int, int], List[int]]:
        divisor = max(int(getattr(self.model, "size_divisibility", 0)), 1)
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, x in enumerate(inputs):
            h, w = x["image"].shape[-2:]
            key = (-(-h // divisor) * divisor, -(-w // divisor) * divisor)
            groups.setdefault(key, []).append(i)
        return groups
