"""Dataset mappers that turn a video (YouTube-VIS) or a still image (COCO pseudo-clip) into a clip
for :class:`~mask2former.video.VideoMaskFormer`.

Output dict (input keys kept, ``annotations`` removed):
    ``image``: list of T uint8 [3, H, W] frames (``INPUT.FORMAT`` order, all the same size);
    ``instances`` (training, and pseudo-clips at test time): list of T ``Instances`` holding the same
    G instances in the same order, ``gt_ids`` int64 [G] (-1 where the instance is not visible in
    that frame), ``gt_classes`` int64 [G] (contiguous ids) and ``gt_masks`` bool [G, H, W];
    ``length``: T; ``height``/``width``: the output size (the source frame size).
"""
import copy
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from fvcore.transforms.transform import CropTransform, Transform, TransformList

from ...config import configurable
from ...data.dataset_mappers.augmentations import RandomCrop, RandomFlip, apply_augmentations
from ...data.dataset_mappers.common import annotation_masks, image_to_tensor, read_image_checked
from ...data.dataset_mappers.registry import register_mapper
from ...data.transforms import ResizeShortestEdge
from ...structures import Instances

__all__ = [
    "COCOPseudoClipDatasetMapper",
    "YTVISDatasetMapper",
    "build_clip_augmentations",
    "moving_crop_boxes",
    "sample_frame_indices",
]

_BY_CLIP = "_by_clip"


def build_clip_augmentations(cfg, is_train: bool) -> Tuple[List, bool, bool]:
    """The augmentation of the original video configs.

    Training: ResizeShortestEdge(``MIN_SIZE_TRAIN``, ``MAX_SIZE_TRAIN``,
    ``MIN_SIZE_TRAIN_SAMPLING`` without its ``_by_clip`` suffix), then a horizontal/vertical flip
    unless ``RANDOM_FLIP`` is "none", then ``RandomCrop`` when ``CROP.ENABLED``. "choice_by_clip" /
    "flip_by_clip" draw the size / flip once per clip, otherwise once per frame. Test: the
    ``MIN_SIZE_TEST`` resize.

    Returns:
        ``(augmentations, resize_by_clip, flip_by_clip)``.

    Raises:
        ValueError: ``INPUT.AUGMENTATIONS`` is not empty (the original's extra colour/rotation
            augmentations are not implemented) or an unknown ``RANDOM_FLIP``.
    """
    if not is_train:
        return [ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")], True, True
    if list(cfg.INPUT.AUGMENTATIONS):
        raise ValueError(f"INPUT.AUGMENTATIONS={list(cfg.INPUT.AUGMENTATIONS)} is not supported; use []")
    style = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    augs = [ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, style.replace(_BY_CLIP, ""))]
    flip = cfg.INPUT.RANDOM_FLIP
    direction = flip.replace("flip_by_clip", "horizontal")
    if direction not in ("horizontal", "vertical", "none"):
        raise ValueError(f"INPUT.RANDOM_FLIP must be horizontal, vertical, none or flip_by_clip, got {flip!r}")
    if direction != "none":
        augs.append(RandomFlip(horizontal=direction == "horizontal", vertical=direction == "vertical"))
    if cfg.INPUT.CROP.ENABLED:
        augs.append(RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    return augs, style.endswith(_BY_CLIP), flip == "flip_by_clip"


def _clip_mapper_args(cfg, is_train: bool) -> Dict:
    """The constructor arguments both clip mappers read from ``cfg``: mode, the augmentations of
    :func:`build_clip_augmentations` and ``INPUT.FORMAT``."""
    augmentations, resize_by_clip, flip_by_clip = build_clip_augmentations(cfg, is_train)
    return {"is_train": is_train, "augmentations": augmentations, "resize_by_clip": resize_by_clip,
            "flip_by_clip": flip_by_clip, "image_format": cfg.INPUT.FORMAT}


def _augment_clip(augs, frames: Sequence[np.ndarray], resize_by_clip: bool, flip_by_clip: bool):
    """Apply ``augs`` to every frame; the transforms drawn for frame 0 are reused for all frames when
    both flags are set (frames of one clip have one size), otherwise drawn per frame."""
    out, transforms = [], []
    shared = None
    for frame in frames:
        if resize_by_clip and flip_by_clip and shared is not None:
            tfm = shared
            image = tfm.apply_image(frame)
        else:
            image, _, tfm = apply_augmentations(augs, frame)
            shared = tfm
        out.append(image)
        transforms.append(tfm)
    return out, transforms


def sample_frame_indices(length: int, num_frames: int, frame_range: int, shuffle: bool,
                         rng: np.random.Generator) -> List[int]:
    """Training frames of a video, as the original: a random reference frame plus ``num_frames - 1``
    frames drawn with replacement from the others within ``frame_range`` of it, sorted (then
    shuffled if ``shuffle``). A 1-frame video gives the reference frame ``num_frames`` times."""
    ref = int(rng.integers(length))
    others = [i for i in range(max(0, ref - frame_range), min(length, ref + frame_range + 1)) if i != ref]
    picked = rng.choice(others, num_frames - 1).tolist() if others else [ref] * (num_frames - 1)
    indices = sorted(picked + [ref])
    if shuffle:
        rng.shuffle(indices)
    return indices


def _clip_instances(frame_annos: Sequence[Sequence[Dict]], transforms: Sequence[Transform],
                    input_size: Tuple[int, int], output_sizes: Sequence[Tuple[int, int]]) -> List[Instances]:
    """Per-frame ``Instances`` over the union of the non-crowd instance ids of the clip (in order of
    first appearance); an instance absent from a frame, or whose mask is empty there after the
    transforms, has ``gt_ids`` -1 and an empty mask in that frame."""
    order, classes = {}, {}
    for annos in frame_annos:
        for anno in annos:
            if not anno.get("iscrowd", 0):
                order.setdefault(anno["id"], len(order))
                classes.setdefault(anno["id"], anno["category_id"])
    gt_classes = torch.as_tensor([classes[i] for i in order], dtype=torch.int64)
    clip = []
    for annos, tfm, size in zip(frame_annos, transforms, output_sizes):
        annos = [a for a in annos if not a.get("iscrowd", 0)]
        masks = np.zeros((len(order),) + tuple(size), dtype=bool)
        ids = np.full(len(order), -1, dtype=np.int64)
        if annos:
            rows = [order[a["id"]] for a in annos]
            masks[rows] = annotation_masks(annos, tfm, input_size, size)
            visible = masks[rows].any(axis=(1, 2))
            ids[np.asarray(rows)[visible]] = np.asarray([a["id"] for a in annos])[visible]
        instances = Instances(tuple(size))
        instances.gt_ids = torch.as_tensor(ids)
        instances.gt_classes = gt_classes.clone()
        instances.gt_masks = torch.as_tensor(masks)
        clip.append(instances)
    return clip


@register_mapper("ytvis_clip")
class YTVISDatasetMapper:
    """YouTube-VIS video dict (:func:`load_ytvis_json`) -> clip.

    Training: ``sampling_frame_num`` frames (:func:`sample_frame_indices`), augmented as
    :func:`build_clip_augmentations`, with ``instances``. Test: all frames, resized, no instances.
    """

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations: List, resize_by_clip: bool, flip_by_clip: bool,
                 image_format: str, sampling_frame_num: int, sampling_frame_range: int,
                 sampling_frame_shuffle: bool):
        self.is_train = is_train
        self.augmentations = augmentations
        self.resize_by_clip, self.flip_by_clip = resize_by_clip, flip_by_clip
        self.image_format = image_format
        # (frames per clip, half-width of the window they are drawn from, shuffle their order)
        self.frame_sampling = (sampling_frame_num, sampling_frame_range, sampling_frame_shuffle)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return dict(
            _clip_mapper_args(cfg, is_train),
            sampling_frame_num=cfg.INPUT.SAMPLING_FRAME_NUM,
            sampling_frame_range=cfg.INPUT.SAMPLING_FRAME_RANGE,
            sampling_frame_shuffle=cfg.INPUT.SAMPLING_FRAME_SHUFFLE,
        )

    def __call__(self, dataset_dict: Dict) -> Dict:
        """Raises: FileNotFoundError (missing frame), ValueError (frame size differs from the dict)."""
        dataset_dict = copy.deepcopy(dataset_dict)
        length = dataset_dict["length"]
        if self.is_train:
            rng = np.random.default_rng(np.random.randint(2**31))
            indices = sample_frame_indices(length, *self.frame_sampling, rng)
        else:
            indices = list(range(length))
        file_names = dataset_dict.pop("file_names")
        per_frame_annotations = dataset_dict.pop("annotations", None)
        frames = []
        for i in indices:
            record = {"file_name": file_names[i], "height": dataset_dict["height"],
                      "width": dataset_dict["width"]}
            frames.append(read_image_checked(record, self.image_format))
        images, transforms = _augment_clip(self.augmentations, frames, self.resize_by_clip, self.flip_by_clip)
        dataset_dict.update(file_names=[file_names[i] for i in indices], frame_indices=indices,
                            image=[image_to_tensor(im) for im in images])
        if self.is_train and per_frame_annotations is not None:
            dataset_dict["instances"] = _clip_instances(
                [per_frame_annotations[i] for i in indices], transforms, frames[0].shape[:2],
                [im.shape[:2] for im in images],
            )
        return dataset_dict


def moving_crop_boxes(height: int, width: int, num_frames: int, crop_fraction: float, max_shift: float,
                      rng: np.random.Generator) -> np.ndarray:
    """Windows of a camera panning over a still image: a ``crop_fraction`` x ``crop_fraction`` window
    (of the image height and width) starting at a random position and moving by a constant random
    velocity of at most ``max_shift`` of the image side per frame along each axis; it stops at the
    image border.

    Returns:
        int64 [num_frames, 4] boxes (x0, y0, x1, y1), end exclusive, in pixels.

    Raises:
        ValueError: ``crop_fraction`` not in (0, 1] or ``max_shift`` negative.
    """
    if not 0 < crop_fraction <= 1 or max_shift < 0:
        raise ValueError(f"need 0 < crop_fraction <= 1 and max_shift >= 0, got {crop_fraction}, {max_shift}")
    ch, cw = max(1, int(round(height * crop_fraction))), max(1, int(round(width * crop_fraction)))
    start = rng.uniform(0, 1, 2) * (height - ch, width - cw)
    velocity = rng.uniform(-max_shift, max_shift, 2) * (height, width)
    t = np.arange(num_frames)[:, None]
    pos = np.rint(np.clip(start + t * velocity, 0, (height - ch, width - cw))).astype(np.int64)
    return np.concatenate([pos[:, ::-1], pos[:, ::-1] + (cw, ch)], axis=1)


@register_mapper("coco_pseudo_clip")
class COCOPseudoClipDatasetMapper:
    """COCO instance dict (``load_coco_json``) -> pseudo-clip of ``num_frames`` frames cut from the
    one image by :func:`moving_crop_boxes`; the instance masks are cut by the same windows (an
    instance keeps its id across frames; -1 where its mask leaves the window).

    Training: random windows, then the clip augmentation at the crop size; ``instances`` at the
    augmented size. Test: windows drawn from a generator seeded with ``image_id`` (the same clip
    every time); frames resized by the test resize, ``instances`` at the window size, which is the
    output ``height``/``width``, so they serve as the evaluation ground truth.
    """

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations: List, resize_by_clip: bool, flip_by_clip: bool,
                 image_format: str, num_frames: int, crop_fraction: float, max_shift: float):
        self.is_train = is_train
        self.augmentations = augmentations
        self.resize_by_clip, self.flip_by_clip = resize_by_clip, flip_by_clip
        self.image_format = image_format
        self.num_frames = num_frames
        self.crop_fraction, self.max_shift = crop_fraction, max_shift

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return dict(
            _clip_mapper_args(cfg, is_train),
            num_frames=cfg.INPUT.SAMPLING_FRAME_NUM,
            crop_fraction=cfg.INPUT.PSEUDO_CLIP_CROP_FRACTION,
            max_shift=cfg.INPUT.PSEUDO_CLIP_MAX_SHIFT,
        )

    def __call__(self, dataset_dict: Dict) -> Dict:
        """Raises: FileNotFoundError (missing image), ValueError (image size differs from the dict)."""
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_checked(dataset_dict, self.image_format)
        h, w = image.shape[:2]
        seed = np.random.randint(2**31) if self.is_train else int(dataset_dict.get("image_id", 0))
        boxes = moving_crop_boxes(h, w, self.num_frames, self.crop_fraction, self.max_shift,
                                  np.random.default_rng(seed))
        crops = [
            CropTransform(int(x0), int(y0), int(x1 - x0), int(y1 - y0), w, h) for x0, y0, x1, y1 in boxes
        ]
        frames = [crop.apply_image(image) for crop in crops]
        images, transforms = _augment_clip(self.augmentations, frames, self.resize_by_clip, self.flip_by_clip)
        annos = [dict(a, id=i) for i, a in enumerate(dataset_dict.pop("annotations", []))]
        crop_h, crop_w = frames[0].shape[:2]
        if self.is_train:
            tfms = [TransformList([crop, tfm]) for crop, tfm in zip(crops, transforms)]
            sizes = [im.shape[:2] for im in images]
        else:
            tfms, sizes = crops, [(crop_h, crop_w)] * len(frames)
        dataset_dict.update(
            image=[image_to_tensor(im) for im in images], length=len(frames), crop_boxes=boxes,
            video_id=dataset_dict.get("image_id"), height=crop_h, width=crop_w,
            file_names=[dataset_dict["file_name"]] * len(frames),
            instances=_clip_instances([annos] * len(frames), tfms, (h, w), sizes),
        )
        return dataset_dict
