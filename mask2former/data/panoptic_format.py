"""The COCO panoptic PNG encoding: segment id = R + 256 * G + 256**2 * B."""
import numpy as np

__all__ = ["rgb2id", "id2rgb"]

_MAX_ID = 256**3


def rgb2id(color: np.ndarray) -> np.ndarray:
    """Segment ids of a COCO panoptic colour image.

    Args:
        color: integer array [..., 3] (R, G, B).

    Returns:
        int64 array [...]: ``R + 256 * G + 256**2 * B``.
    """
    color = np.asarray(color).astype(np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id2rgb(id_map: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb2id`.

    Args:
        id_map: integer array [...] of segment ids in ``[0, 256**3)``.

    Returns:
        uint8 array [..., 3] (R, G, B).

    Raises:
        ValueError: an id is negative or does not fit in 24 bits.
    """
    id_map = np.asarray(id_map).astype(np.int64)
    if id_map.size and (id_map.min() < 0 or id_map.max() >= _MAX_ID):
        raise ValueError(
            f"Panoptic ids must lie in [0, {_MAX_ID}), got [{id_map.min()}, {id_map.max()}]."
        )
    return np.stack([(id_map >> shift) & 255 for shift in (0, 8, 16)], axis=-1).astype(np.uint8)
