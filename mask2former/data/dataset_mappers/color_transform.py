"""SSD photometric distortion (Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016) as a
deterministic :class:`fvcore.transforms.Transform` with already-sampled parameters."""
from typing import Optional

import cv2
import numpy as np
from fvcore.transforms.transform import Transform

__all__ = ["SSDColorTransform"]


class SSDColorTransform(Transform):
    """SSD colour distortion of a uint8 [H, W, 3] image (geometry untouched).

    Applied in this order: brightness ``+ beta``; then contrast ``* alpha`` before or after
    (``contrast_first``) saturation ``S * alpha_s`` and hue ``(H + delta) mod 180`` in OpenCV's HSV
    of the BGR image. ``None`` skips a step. Values are clipped to [0, 255].

    Args:
        is_rgb: the image is RGB (else BGR).
    """

    def __init__(
        self,
        is_rgb: bool,
        brightness_beta: Optional[float],
        contrast_alpha: Optional[float],
        saturation_alpha: Optional[float],
        hue_delta: Optional[int],
        contrast_first: bool,
    ):
        super().__init__()
        self.is_rgb, self.contrast_first = is_rgb, contrast_first
        self.brightness_beta, self.hue_delta = brightness_beta, hue_delta
        self.contrast_alpha, self.saturation_alpha = contrast_alpha, saturation_alpha

    @staticmethod
    def _affine(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def _contrast(self, img: np.ndarray) -> np.ndarray:
        if self.contrast_alpha is None:
            return img
        return self._affine(img, alpha=self.contrast_alpha)

    def _saturation_hue(self, img: np.ndarray) -> np.ndarray:
        if self.saturation_alpha is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            hsv[:, :, 1] = self._affine(hsv[:, :, 1], alpha=self.saturation_alpha)
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        if self.hue_delta is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + self.hue_delta) % 180
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        return img

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"SSD colour augmentation needs uint8 [H, W, 3], got {img.dtype} "
                             f"{img.shape}")
        bgr = np.ascontiguousarray(img[:, :, ::-1] if self.is_rgb else img)
        if self.brightness_beta is not None:
            bgr = self._affine(bgr, beta=self.brightness_beta)
        if self.contrast_first:
            bgr = self._saturation_hue(self._contrast(bgr))
        else:
            bgr = self._contrast(self._saturation_hue(bgr))
        return np.ascontiguousarray(bgr[:, :, ::-1]) if self.is_rgb else bgr

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation
