"""Semantic-segmentation folders (images + label PNGs with matching names) -> dataset dicts."""
import os
from typing import List

from ._paths import require_dir

__all__ = ["load_sem_seg"]


def _stems(folder: str, ext: str) -> dict:
    """Relative path without extension -> full path, of the ``*.ext`` files under ``folder``."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            if name.endswith("." + ext):
                full = os.path.join(dirpath, name)
                out[os.path.splitext(os.path.relpath(full, folder))[0]] = full
    return out


def load_sem_seg(
    gt_root: str, image_root: str, layout: str, gt_ext: str = "png", image_ext: str = "jpg"
) -> List[dict]:
    """Pair images with label maps by relative path (extension ignored), sorted by that path.

    Images without a label map (and label maps without an image) are left out.

    Args:
        gt_root: folder of label maps (uint8 PNG, pixel = contiguous class id, 255 = ignore).
        image_root: folder of images.
        layout: expected-layout text used in ``FileNotFoundError`` messages.

    Returns:
        One ``{file_name, sem_seg_file_name}`` dict per pair.

    Raises:
        FileNotFoundError: a folder is missing or no pair is found.
    """
    require_dir(image_root, layout)
    require_dir(gt_root, layout)
    images = _stems(image_root, image_ext)
    labels = _stems(gt_root, gt_ext)
    common = sorted(images.keys() & labels.keys())
    if not common:
        raise FileNotFoundError(
            f"No '*.{image_ext}' image in '{image_root}' has a '*.{gt_ext}' label map in "
            f"'{gt_root}'. Expected layout: {layout}."
        )
    return [{"file_name": images[k], "sem_seg_file_name": labels[k]} for k in common]
