"""Reconstruction-quality metrics for leaked images.

Arrays are floats shaped (C, H, W) or (H, W). SSIM follows Wang et al. (2004):
an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, statistics taken
only where the whole window fits inside the image ("valid" region), averaged
over that region and then over channels. This is the same definition as the
reference MATLAB code and as scikit-image's ``structural_similarity(...,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=...)``.
Batches are paired with references by the optimal one-to-one assignment the
text scorers use (``textleak.metrics``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from ..metrics import assign_references

__all__ = ["mse", "psnr", "ssim", "match_images"]

_SSIM_SIGMA = 1.5
_SSIM_WIN = 11
# scipy's Gaussian radius is int(truncate * sigma + 0.5); 3.5 * 1.5 -> 5,
# i.e. an 11-tap (normalised) kernel, matching Wang et al.'s window.
_SSIM_TRUNCATE = 3.5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected an image shaped (H, W) or (C, H, W), got {a.shape}")
    return a, b


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error over all pixels (and channels)."""
    a, b = _pair(a, b)
    return float(np.mean((a - b) ** 2))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    err = mse(a, b)
    if err == 0:
        return math.inf
    return float(10 * np.log10(data_range**2 / err))


def _ssim_channel(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    def blur(img: np.ndarray) -> np.ndarray:
        return gaussian_filter(img, sigma=_SSIM_SIGMA, truncate=_SSIM_TRUNCATE, mode="reflect")

    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    # Biased (weighted population) moments, as in Wang et al.; no n/(n-1).
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    # Drop the border where the window would hang over the edge: what remains
    # is exactly the "valid" convolution, so the padding mode is irrelevant.
    pad = _SSIM_WIN // 2
    return float(ssim_map[pad:-pad, pad:-pad].mean())


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Structural similarity (Wang et al. 2004), mean over channels.

    Both spatial sides must be at least 11 pixels, the window size.
    """
    a, b = _pair(a, b)
    if min(a.shape[-2:]) < _SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {_SSIM_WIN}x{_SSIM_WIN}, got {a.shape}")
    if a.ndim == 2:
        a, b = a[None], b[None]
    return float(np.mean([_ssim_channel(x, y, data_range) for x, y in zip(a, b)]))


def match_images(
    predictions: Sequence[np.ndarray], references: Sequence[np.ndarray]
) -> list[int]:
    """Optimal one-to-one pairing of images minimising total MSE.

    Returns, for each reference index, the matched prediction index or -1.
    """
    gain = np.zeros((len(references), len(predictions)))
    for i, ref in enumerate(references):
        for j, pred in enumerate(predictions):
            gain[i, j] = -mse(pred, ref)
    return assign_references(gain, len(references))
