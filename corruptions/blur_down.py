"""``blur_down``: Gaussian blur, then MATLAB-bicubic downscale (the SR literature's "BD" degradation, e.g. RDN's
7x7 kernel of sigma 1.6 at x3); output in [0, 1] on k/255 levels."""

from __future__ import annotations

import numpy as np
import torch
from torch import Generator, Tensor

from ._imresize import imresize_uint8
from ._levels import quantize_uint8, round_half_away_uint8
from .registry import is_finite_number, register

__all__ = ["blur_down", "blur_down_size", "check_blur_down", "gaussian_kernel"]


def check_blur_down(*, scale: int, sigma: float = 1.6, size: int = 7) -> tuple[int, float, int]:
    """(scale, sigma, size); ``ValueError`` naming the parameter: scale and size positive integers, size odd,
    sigma a finite number > 0."""
    if not is_finite_number(scale) or int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer (the SR factor), got {scale!r}")
    if not is_finite_number(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0 (the blur's std in pixels), got {sigma!r}")
    if not is_finite_number(size) or int(size) != size or size < 1 or int(size) % 2 == 0:
        raise ValueError(f"size must be an odd positive integer (the kernel's side in pixels), got {size!r}")
    return int(scale), float(sigma), int(size)


def blur_down_size(h: int, w: int, *, scale: int, sigma: float = 1.6, size: int = 7) -> tuple[int, int]:
    """MATLAB imresize's output size ``ceil(h / scale), ceil(w / scale)`` (the blur keeps the size)."""
    scale = check_blur_down(scale=scale, sigma=sigma, size=size)[0]
    return -(-h // scale), -(-w // scale)


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian of ``size`` taps (MATLAB's ``fspecial('gaussian', size, sigma)`` is its outer
    product with itself)."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-(r**2) / (2.0 * sigma * sigma))
    return k / k.sum()


def _blur(levels: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Separable blur of (H, W, N) uint8 levels with replicate borders (``imfilter(.., 'replicate')``), rounded
    back to uint8 as MATLAB does for a uint8 image."""
    k, pad = gaussian_kernel(size, sigma), size // 2
    x = np.pad(levels.astype(np.float64), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    h, w = levels.shape[:2]
    rows = sum(k[i] * x[i : i + h] for i in range(size))
    out = sum(k[j] * rows[:, j : j + w] for j in range(size))
    return round_half_away_uint8(out)


@register("blur_down", out_size=blur_down_size, deterministic=True, check=check_blur_down)
def blur_down(x: Tensor, *, generator: Generator, scale: int, sigma: float = 1.6, size: int = 7) -> Tensor:
    """Output in [0, 1] on k/255 levels: quantize to uint8, Gaussian blur, MATLAB-bicubic downscale by ``scale``.

    The blur is ``size`` x ``size`` taps of std ``sigma`` with replicate borders, rounded back to uint8 (as MATLAB's
    ``imfilter`` on a uint8 image), then ``imresize(.., 1/scale, 'bicubic')``. Deterministic.
    """
    scale, sigma, size = check_blur_down(scale=scale, sigma=sigma, size=size)
    b, c, h, w = x.shape
    levels = quantize_uint8(x).cpu().numpy().reshape(b * c, h, w).transpose(1, 2, 0)  # (H, W, B*C)
    small = imresize_uint8(np.ascontiguousarray(_blur(levels, size, sigma)), 1.0 / scale)
    h2, w2 = small.shape[:2]
    out = torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1))).reshape(b, c, h2, w2)
    return out.to(device=x.device, dtype=x.dtype) / 255.0
