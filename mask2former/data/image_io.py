"""Reading images and label maps from disk with clear errors."""
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


def read_image(file_name, format: str = "RGB") -> np.ndarray:
    """Read an image file, applying its EXIF orientation.

    Args:
        file_name: path to a JPEG/PNG/... file.
        format: "RGB", "BGR" (colour images, returned as uint8 [H, W, 3]) or "L" / None
            (returned as stored, e.g. uint8 [H, W] for label maps, uint8 [H, W, 3] for panoptic PNGs).

    Raises:
        FileNotFoundError: if ``file_name`` does not exist.
        ValueError: if the file cannot be decoded as an image.
    """
    path = Path(file_name)
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path}")
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if format in ("RGB", "BGR"):
                image = image.convert("RGB")
            elif format is not None:
                image = image.convert(format)
            array = np.asarray(image).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"Cannot decode image file {path}: {e}") from e
    if format == "BGR":
        array = array[:, :, ::-1].copy()
    return array
