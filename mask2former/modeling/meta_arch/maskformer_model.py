"""The Mask2Former meta-architecture (Cheng et al., "Masked-attention Mask Transformer for
Universal Image Segmentation", CVPR 2022): backbone + segmentation head + task-specific inference."""
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ...config import configurable
from ...data.catalog import MetadataCatalog
from ...structures import ImageList
from ...utils.registry import META_ARCH_REGISTRY
from ..backbone.build import build_backbone
from ..criterion import SetCriterion
from ..mask_upsampling import DEFAULT_CHUNK_BYTES
from ..postprocessing import mask_classification_inference
from ..precision import float32_head_outputs, parameter_dtype
from .common import normalized_batch, register_pixel_normalization, weighted_losses
from .mask_former_head import build_sem_seg_head

__all__ = ["MaskFormer"]


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    """Mask classification model (MaskFormer / Mask2Former) for semantic, panoptic and instance
    segmentation, with Detectron2's batched-input/output conventions.

    Submodules (state-dict names): ``backbone``, ``sem_seg_head``, and ``criterion`` when given.
    ``pixel_mean``/``pixel_std`` are non-persistent buffers (not in the state dict).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        criterion: Optional[nn.Module] = None,
        num_queries: int,
        object_mask_threshold: float,
        overlap_threshold: float,
        metadata,
        size_divisibility: int,
        sem_seg_postprocess_before_inference: bool,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        semantic_on: bool,
        panoptic_on: bool,
        instance_on: bool,
        test_topk_per_image: int,
        compact_outputs: bool = False,
        postprocess_chunk_bytes: Optional[int] = DEFAULT_CHUNK_BYTES,
    ):
        """
        Args:
            backbone: Detectron2-style backbone (``output_shape()``, ``size_divisibility``).
            sem_seg_head: head mapping backbone features to ``pred_logits``/``pred_masks``
                (needs a ``num_classes`` attribute).
            criterion: training loss module returning a dict of unweighted losses, with a
                ``weight_dict`` attribute (loss name -> weight); None for inference-only models.
                ``from_config`` builds Mask2Former's ``SetCriterion``, whose ``empty_weight`` buffer
                is part of the published checkpoints' state dict.
            num_queries: number of queries Q.
            object_mask_threshold: panoptic inference: minimum class probability of a kept query.
            overlap_threshold: panoptic inference: minimum visible fraction of a kept mask.
            metadata: dataset metadata; panoptic inference and the instance inference of panoptic
                models read ``metadata.thing_dataset_id_to_contiguous_id``.
            size_divisibility: pad inputs to a multiple of this; a negative value means the
                backbone's ``size_divisibility``.
            sem_seg_postprocess_before_inference: resize mask logits to the output resolution before
                inference (required for panoptic and instance outputs) instead of resizing the
                semantic result after it.
            pixel_mean, pixel_std: per-channel normalisation, in the channel order of the input
                images (``INPUT.FORMAT``), 0-255 scale.
            semantic_on, panoptic_on, instance_on: which outputs to produce.
            test_topk_per_image: maximum number of instances per image.
            compact_outputs: return semantic output as a label map + score map and instance masks
                as COCO RLE (see :func:`mask_classification_inference`).
            postprocess_chunk_bytes: size bound of one chunk of output-resolution mask planes in
                post-processing (None = no chunking; results are the same).

        Raises:
            ValueError: ``semantic_on`` is False while ``sem_seg_postprocess_before_inference`` is False.
        """
        super().__init__()
        if not semantic_on and not sem_seg_postprocess_before_inference:
            raise ValueError("sem_seg_postprocess_before_inference must be True when semantic_on is False")
        # Submodule names as in the published state dict: backbone, sem_seg_head, criterion.
        self.backbone, self.sem_seg_head, self.criterion = backbone, sem_seg_head, criterion
        self.num_queries = num_queries
        self.object_mask_threshold, self.overlap_threshold = object_mask_threshold, overlap_threshold
        self.metadata = metadata
        self.size_divisibility = backbone.size_divisibility if size_divisibility < 0 else size_divisibility
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        register_pixel_normalization(self, pixel_mean, pixel_std)
        self.semantic_on, self.panoptic_on, self.instance_on = semantic_on, panoptic_on, instance_on
        self.test_topk_per_image = test_topk_per_image
        self.compact_outputs = compact_outputs
        self.postprocess_chunk_bytes = postprocess_chunk_bytes

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        test = cfg.MODEL.MASK_FORMER.TEST
        return dict(
            backbone=backbone,
            sem_seg_head=build_sem_seg_head(cfg, backbone.output_shape()),
            criterion=SetCriterion(cfg),
            num_queries=cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES,
            object_mask_threshold=test.OBJECT_MASK_THRESHOLD,
            overlap_threshold=test.OVERLAP_THRESHOLD,
            metadata=MetadataCatalog.get(cfg.DATASETS.TRAIN[0]),
            size_divisibility=cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
            # Panoptic and instance inference need the masks at the output resolution.
            sem_seg_postprocess_before_inference=(
                test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or test.PANOPTIC_ON or test.INSTANCE_ON
            ),
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            semantic_on=test.SEMANTIC_ON,
            instance_on=test.INSTANCE_ON,
            panoptic_on=test.PANOPTIC_ON,
            test_topk_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            compact_outputs=test.COMPACT_OUTPUTS,
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise the ``image`` of each input and pad them into one batch (bottom/right, with 0,
        to a multiple of ``size_divisibility``)."""
        return normalized_batch([x["image"] for x in batched_inputs], self.pixel_mean, self.pixel_std,
                                self.size_divisibility)

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: one dict per image with ``image``: uint8 [3, H, W] in ``INPUT.FORMAT``
                channel order, optional ``height``/``width`` (output resolution, defaults to the
                input size) and, in training, ``instances`` with ``gt_classes`` int64 [G] and
                ``gt_masks`` bool [G, H, W].

        Returns:
            In training, a dict of weighted losses (those in ``criterion.weight_dict``).
            In inference, one dict per image with, as enabled:
            ``sem_seg`` float [K, height, width] class scores;
            ``panoptic_seg`` ``(int32 [height, width] segment ids, segments_info list of
            {"id", "isthing", "category_id"})``;
            ``instances`` :class:`Instances` with ``pred_masks`` float [N, height, width],
            ``pred_boxes``, ``scores`` [N] and ``pred_classes`` [N]. With ``compact_outputs``,
            ``sem_seg`` is int32 [height, width] class ids with ``sem_seg_score`` float
            [height, width], and instances carry ``pred_masks_rle`` (COCO RLE) instead of
            ``pred_masks``.

        Raises:
            RuntimeError: training without a criterion.
        """
        images = self.preprocess_image(batched_inputs)
        # normalised in float32, then cast to the network's dtype (TEST.PRECISION)
        outputs = self.sem_seg_head(self.backbone(images.tensor.to(parameter_dtype(self.backbone))))
        if self.training:
            targets = None
            if "instances" in batched_inputs[0]:
                targets = self.prepare_targets([x["instances"].to(self.device) for x in batched_inputs], images)
            return weighted_losses(self.criterion, outputs, targets, owner="MaskFormer")

        # post-processing in float32, whatever the network's dtype, except the semantic class
        # product of a bfloat16 network (see semantic_inference)
        network_dtype = outputs["pred_masks"].dtype
        product_dtype = torch.bfloat16 if network_dtype == torch.bfloat16 else None
        outputs = float32_head_outputs(outputs)
        # Stride-4 mask logits; post-processing upsamples, per task, only the queries it keeps.
        padded_size = tuple(images.tensor.shape[-2:])
        per_image = zip(outputs["pred_logits"], outputs["pred_masks"], images.image_sizes, batched_inputs)
        return [
            self.inference_single_image(*image_outputs, padded_size=padded_size, semantic_product_dtype=product_dtype)
            for image_outputs in per_image
        ]

    @torch.no_grad()  # post-processing is not differentiable (and writes into preallocated outputs)
    def inference_single_image(
        self, mask_cls, mask_pred, image_size, batched_input, *, padded_size=None, semantic_product_dtype=None
    ) -> Dict:
        """Outputs of one image from its class logits [Q, K+1] and mask logits: [Q, H_pad/4, W_pad/4]
        with ``padded_size`` (H_pad, W_pad) given, else [Q, H_pad, W_pad]; ``semantic_product_dtype``
        as in :func:`mask_classification_inference`."""
        height = batched_input.get("height", image_size[0])
        width = batched_input.get("width", image_size[1])
        return mask_classification_inference(
            mask_cls,
            mask_pred,
            image_size,
            height,
            width,
            semantic_on=self.semantic_on,
            panoptic_on=self.panoptic_on,
            instance_on=self.instance_on,
            sem_seg_postprocess_before_inference=self.sem_seg_postprocess_before_inference,
            object_mask_threshold=self.object_mask_threshold,
            overlap_threshold=self.overlap_threshold,
            thing_classes=self.thing_classes if self.panoptic_on else None,
            test_topk_per_image=self.test_topk_per_image,
            padded_size=padded_size,
            compact_outputs=self.compact_outputs,
            chunk_bytes=self.postprocess_chunk_bytes,
            semantic_product_dtype=semantic_product_dtype,
        )

    @property
    def thing_classes(self) -> List[int]:
        """Contiguous ids of the "thing" classes, from ``metadata.thing_dataset_id_to_contiguous_id``."""
        return sorted(self.metadata.thing_dataset_id_to_contiguous_id.values())

    def prepare_targets(self, targets, images: ImageList) -> List[Dict[str, torch.Tensor]]:
        """Per-image training targets ``{"labels": [G], "masks": [G, H_pad, W_pad]}``, with the
        ground-truth masks zero-padded to the batch's padded size."""
        padded_size = images.tensor.shape[-2:]
        prepared = []
        for per_image in targets:
            masks = per_image.gt_masks
            padded = masks.new_zeros((masks.shape[0], *padded_size))
            padded[:, : masks.shape[1], : masks.shape[2]] = masks
            prepared.append({"labels": per_image.gt_classes, "masks": padded})
        return prepared
