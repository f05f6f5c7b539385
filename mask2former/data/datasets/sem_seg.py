"""Semantic-segmentation folders (images + label PNGs with matching names) -> dataset dicts."""
import os
from typing import List, Sequence, Union

from ._paths import require_dir

__all__ = ["load_sem_seg"]


def _stems(folder: str, ext: Union[str, Sequence[str]]) -> dict:
    """Relative path without extension -> full path, of the ``*.ext`` files under ``folder``
    (``ext``: one extension or several, compared case-insensitively)."""
    suffixes = tuple("." + e.lower() for e in ([ext] if isinstance(ext, str) else ext))
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            if name.lower().endswith(suffixes):
                full = os.path.join(dirpath, name)
                out[os.path.splitext(os.path.relpath(full, folder))[0]] = full
    return out


def _patterns(ext: Union[str, Sequence[str]]) -> str:
    return ", ".join("*." + e for e in ([ext] if isinstance(ext, str) else ext))


def load_sem_seg(
    gt_root: str,
    image_root: str,
    layout: str,
    gt_ext: str = "png",
    image_ext: Union[str, Sequence[str]] = "jpg",
) -> List[dict]:
    """Pair images with label maps by relative path (extension ignored), sorted by that path.

    Images without a label map (and label maps without an image) are left out.

    Args:
        gt_root: folder of label maps (uint8 PNG, pixel = contiguous class id, 255 = ignore).
        image_root: folder of images.
        layout: expected-layout text used in ``FileNotFoundError`` messages.
        image_ext: image extension(s), without the dot.

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
            f"No image ({_patterns(image_ext)}) in '{image_root}' has a '*.{gt_ext}' label map "
            f"in '{gt_root}'. Expected layout: {layout}."
        )
    return [{"file_name": images[k], "sem_seg_file_name": labels[k]} for k in common]
