"""The meta-architecture of Mask2Former for video instance segmentation (Cheng et al.,
"Mask2Former for Video Instance Segmentation", 2021): the image model's backbone and pixel decoder
run on every frame; the video Transformer decoder attends to all frames of the clip at once."""
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ..config import configurable
from ..data.catalog import MetadataCatalog
from ..modeling.backbone.build import build_backbone
from ..structures import ImageList
from ..modeling.meta_arch.common import normalized_batch, register_pixel_normalization, weighted_losses
from ..modeling.meta_arch.mask_former_head import build_sem_seg_head
from ..modeling.precision import float32_head_outputs, parameter_dtype
from ..utils.registry import META_ARCH_REGISTRY
from .criterion import VideoSetCriterion
from .inference import video_instance_inference

__all__ = ["VideoMaskFormer"]


@META_ARCH_REGISTRY.register()
class VideoMaskFormer(nn.Module):
    """Video instance segmentation with mask tubes.

    Submodules (state-dict names, identical to the image model's): ``backbone``, ``sem_seg_head``
    (whose predictor must be a video decoder, e.g. ``VideoMultiScaleMaskedTransformerDecoder``),
    and ``criterion``. ``pixel_mean``/``pixel_std`` are non-persistent buffers.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        criterion: Optional[nn.Module] = None,
        num_frames: int,
        metadata,
        size_divisibility: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        test_topk_per_video: int = 10,
    ):
        """
        Args:
            backbone, sem_seg_head: as :class:`MaskFormer`; the head returns ``pred_logits``
                [B, Q, K+1] and ``pred_masks`` [B, Q, T, h, w].
            criterion: training loss (``weight_dict`` attribute), None for inference only.
            num_frames: frames per training clip (``INPUT.SAMPLING_FRAME_NUM``).
            metadata: dataset metadata (``thing_classes``; used by evaluators and the demo).
            size_divisibility: pad frames to a multiple of this; negative = the backbone's.
            pixel_mean, pixel_std: per-channel normalisation, ``INPUT.FORMAT`` order, 0-255 scale.
            test_topk_per_video: (query, class) pairs kept per video (10 in the original).
        """
        super().__init__()
        # Module names as in the published state dict: backbone, sem_seg_head, criterion.
        self.backbone, self.sem_seg_head, self.criterion = backbone, sem_seg_head, criterion
        self.num_frames = num_frames
        self.metadata = metadata
        self.size_divisibility = backbone.size_divisibility if size_divisibility < 0 else size_divisibility
        register_pixel_normalization(self, pixel_mean, pixel_std)
        self.test_topk_per_video = test_topk_per_video

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        clip = {"num_frames": cfg.INPUT.SAMPLING_FRAME_NUM, "test_topk_per_video": cfg.TEST.VIDEO_DETECTIONS}
        return dict(
            clip,
            backbone=backbone,
            sem_seg_head=build_sem_seg_head(cfg, backbone.output_shape()),
            criterion=VideoSetCriterion(cfg),
            metadata=MetadataCatalog.get(cfg.DATASETS.TRAIN[0]),
            size_divisibility=cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_video(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise every frame of every clip and pad them into one batch [sum T, 3, H_pad, W_pad]
        (bottom/right, with 0 after normalisation), clip-major."""
        frames = [frame for video in batched_inputs for frame in video["image"]]
        return normalized_batch(frames, self.pixel_mean, self.pixel_std, self.size_divisibility)

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: one dict per clip with ``image``: list of T uint8 [3, H, W] frames
                (``INPUT.FORMAT`` order, all the same size), optional ``height``/``width`` (output
                size), and in training ``instances``: list of T per-frame ``Instances`` with
                ``gt_ids`` int64 [G] (-1 = instance absent from that frame), ``gt_classes`` [G] and
                ``gt_masks`` [G, H, W] (bool tensor or ``BitMasks``), the same G instances in the
                same order in every frame.

        Returns:
            In training, a dict of weighted losses. In inference (one clip per call, as the
            original), the dict of :func:`video_instance_inference` for ``batched_inputs[0]``.

        Raises:
            RuntimeError: training without a criterion.
            ValueError: inference on more than one clip.
        """
        if not self.training and len(batched_inputs) != 1:
            raise ValueError(f"VideoMaskFormer infers one video per call, got {len(batched_inputs)}")
        images = self.preprocess_video(batched_inputs)
        # normalised in float32, then cast to the network's dtype (TEST.PRECISION)
        outputs = self.sem_seg_head(self.backbone(images.tensor.to(parameter_dtype(self.backbone))))

        if self.training:
            targets = self.prepare_targets(batched_inputs, images)
            return weighted_losses(self.criterion, outputs, targets, owner="VideoMaskFormer")

        outputs = float32_head_outputs(outputs)
        video = batched_inputs[0]
        image_size = images.image_sizes[0]
        return video_instance_inference(
            outputs["pred_logits"][0],
            outputs["pred_masks"][0],
            padded_size=images.tensor.shape[-2:],
            image_size=image_size,
            output_size=(video.get("height", image_size[0]), video.get("width", image_size[1])),
            topk=self.test_topk_per_video,
        )

    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict[str, torch.Tensor]]:
        """Per-clip targets ``{"labels": [G], "ids": [G, T], "masks": float [G, T, H_pad, W_pad]}``,
        keeping the instances present (id != -1) in at least one frame; a tube is 0 on the frames
        where its instance is absent."""
        padded_h, padded_w = images.tensor.shape[-2:]
        targets = []
        for video in batched_inputs:
            frames = [inst.to(self.device) for inst in video["instances"]]
            num_instances = len(frames[0])
            masks = torch.zeros(
                (num_instances, len(frames), padded_h, padded_w), dtype=torch.bool, device=self.device
            )
            for t, inst in enumerate(frames):
                gt_masks = inst.gt_masks.tensor if hasattr(inst.gt_masks, "tensor") else inst.gt_masks
                masks[:, t, : gt_masks.shape[1], : gt_masks.shape[2]] = gt_masks
            ids = torch.stack([inst.gt_ids for inst in frames], dim=1)
            valid = (ids != -1).any(dim=1)
            targets.append(
                {"labels": frames[-1].gt_classes[valid], "ids": ids[valid], "masks": masks[valid].float()}
            )
        return targets
