"""Image-quality metrics (Y-PSNR, SSIM) under two named evaluation protocols, ``ipt`` and ``matlab`` (pure torch).

Protocols, formulas and layouts: docs/benchmark_protocol.md#the-two-protocols.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ipt.inference import quantize  # the official evaluation's clamp(0, 255).round()

ImageLike = np.ndarray | Tensor

PROTOCOLS: dict[str, str] = {
    "ipt": "ipt-v1: quantize clamp(0,255).round(); Y=16+(65.738R+129.057G+25.064B)/256 (official calc_psnr); "
    "gray replicated to RGB; crop=scale (0 for x1); SSIM gauss11/1.5 valid on Y; mean of per-image values",
    "matlab": "matlab-v1: quantize clamp(0,255).round(); Y=rgb2ycbcr(im2double) in double, not rounded "
    "(16+(65.481R+128.553G+24.966B)/255); gray scored on its own values; crop=scale (0 for x1); "
    "SSIM gauss11/1.5 valid on Y; mean of per-image values",
}
PSNR_CAP_DB = 100.0
IPT_Y_WEIGHTS = (65.738 / 256, 129.057 / 256, 25.064 / 256)
MATLAB_Y_WEIGHTS = (65.481 / 255, 128.553 / 255, 24.966 / 255)
MATLAB_GRAY_WEIGHTS = (65.481 / 219, 128.553 / 219, 24.966 / 219)  # rgb2gray = normalised BT.601 luma
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {sorted(PROTOCOLS)}")
    return protocol


def crop_border_for(scale: int) -> int:
    """The official shave: ``scale`` pixels for SR, none for x1 tasks (denoise, derain)."""
    return 0 if scale == 1 else scale


def as_chw(img: ImageLike) -> Tensor:
    """Any supported layout -> a float64 (C, H, W) tensor (C = 1 or 3), values unchanged."""
    if isinstance(img, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(img))
        t = t[None] if t.dim() == 2 else t.permute(2, 0, 1) if t.dim() == 3 else t
    elif isinstance(img, Tensor):
        t = img.detach().cpu()
        t = t[None] if t.dim() == 2 else t[0] if t.dim() == 4 and t.shape[0] == 1 else t
    else:
        raise TypeError(f"expected a numpy array or a torch tensor, got {type(img).__name__}")
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"expected an image with 1 or 3 channels, got shape {tuple(img.shape)}")
    return t.to(torch.float64)


def _weighted(c: Tensor, weights: tuple[float, float, float]) -> Tensor:
    w = torch.tensor(weights, dtype=c.dtype, device=c.device).view(3, 1, 1)
    return (c * w).sum(0)


def to_y(img: ImageLike, protocol: str = "ipt", *, pair_is_gray: bool | None = None) -> Tensor:
    """Quantized Y channel (H, W) float64 of ``img`` under ``protocol``.

    ``pair_is_gray`` (``matlab`` only) says whether the reference of the pair is single-channel; it defaults to
    whether ``img`` itself is. A gray pair is scored on gray values, everything else on rgb2ycbcr's Y.
    """
    c = quantize(as_chw(img))
    if check_protocol(protocol) == "ipt":
        return 16.0 + _weighted(c.expand(3, -1, -1), IPT_Y_WEIGHTS)
    gray = c.shape[0] == 1 if pair_is_gray is None else pair_is_gray
    if gray:
        return c[0] if c.shape[0] == 1 else _weighted(c, MATLAB_GRAY_WEIGHTS)
    return 16.0 + _weighted(c.expand(3, -1, -1), MATLAB_Y_WEIGHTS)


def _crop(x: Tensor, border: int) -> Tensor:
    if border < 0:
        raise ValueError(f"crop_border must be >= 0, got {border}")
    h, w = x.shape[-2:]
    if h <= 2 * border or w <= 2 * border:
        raise ValueError(f"image {h}x{w} is too small for crop_border={border}")
    return x[..., border : h - border, border : w - border] if border else x


def psnr_from_mse(mse: float, peak: float = 255.0) -> float:
    """``10 log10(peak^2 / mse)``, capped at :data:`PSNR_CAP_DB` (also for mse == 0)."""
    if not math.isfinite(mse) or mse < 0:
        raise ValueError(f"mse must be finite and >= 0, got {mse}")
    if mse == 0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(peak * peak / mse))


def _check_same(a: Tensor, b: Tensor) -> None:
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"images differ in size: {tuple(a.shape[-2:])} vs {tuple(b.shape[-2:])}")


def _y_pair(sr: ImageLike, hr: ImageLike, protocol: str) -> tuple[Tensor, Tensor]:
    gray = as_chw(hr).shape[0] == 1
    ys, yh = to_y(sr, protocol, pair_is_gray=gray), to_y(hr, protocol, pair_is_gray=gray)
    _check_same(ys, yh)
    return ys, yh


def _psnr_y(ys: Tensor, yh: Tensor, crop_border: int) -> float:
    d = _crop(ys - yh, crop_border)
    return psnr_from_mse(float((d * d).mean()))


def psnr_y(sr: ImageLike, hr: ImageLike, *, crop_border: int = 0, protocol: str = "ipt") -> float:
    """Y-channel PSNR of ``sr`` against the reference ``hr`` (both quantized first)."""
    return _psnr_y(*_y_pair(sr, hr, protocol), crop_border)


def psnr_rgb(sr: ImageLike, hr: ImageLike, *, crop_border: int = 0) -> float:
    """PSNR over all RGB values (quantized; a single-channel image is replicated to RGB)."""
    a, b = quantize(as_chw(sr)).expand(3, -1, -1), quantize(as_chw(hr)).expand(3, -1, -1)
    _check_same(a, b)
    d = _crop(a - b, crop_border)
    return psnr_from_mse(float((d * d).mean()))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """MATLAB ``fspecial('gaussian', size, sigma)`` as a normalised 1-D kernel (the 2-D window is its outer product)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(x * x) / (2 * sigma * sigma))
    return k / k.sum()


def _filter_valid(x: Tensor, k: Tensor) -> Tensor:
    """Separable 'valid' correlation of (..., H, W) with the 2-D window ``k k^T`` (MATLAB ``filter2(w, x, 'valid')``).

    Written as sums of shifted slices: float64 ``conv2d`` with 1-channel kernels is ~10x slower on CPU.
    """
    n = k.numel()
    h, w = x.shape[-2:]
    rows = sum(float(k[i]) * x[..., i : h - n + 1 + i, :] for i in range(n))
    return sum(float(k[j]) * rows[..., j : w - n + 1 + j] for j in range(n))


def ssim_map(a: Tensor, b: Tensor, peak: float = 255.0) -> Tensor:
    """The SSIM map of two (H, W) float images (Wang et al. 2004, ``ssim_index.m`` defaults)."""
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(a.shape[-2:])}")
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    a, b = a.to(torch.float64), b.to(torch.float64)
    f = _filter_valid(torch.stack([a, b, a * a, b * b, a * b]), gaussian_window().to(a.device))
    mu_a, mu_b = f[0], f[1]
    var_a, var_b, cov = f[2] - mu_a * mu_a, f[3] - mu_b * mu_b, f[4] - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    return num / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))


def _ssim_y(ys: Tensor, yh: Tensor, crop_border: int) -> float:
    return float(ssim_map(_crop(ys, crop_border), _crop(yh, crop_border)).mean())


def ssim_y(sr: ImageLike, hr: ImageLike, *, crop_border: int = 0, protocol: str = "ipt") -> float:
    """Y-channel SSIM of ``sr`` against ``hr`` (both quantized first), cropped by ``crop_border`` before filtering."""
    return _ssim_y(*_y_pair(sr, hr, protocol), crop_border)


def score(sr: ImageLike, hr: ImageLike, *, crop_border: int, protocol: str = "ipt") -> dict[str, float]:
    """``psnr_y``, ``ssim_y`` and ``psnr_rgb`` of one image pair (Y formed once)."""
    ys, yh = _y_pair(sr, hr, protocol)
    return {
        "psnr_y": _psnr_y(ys, yh, crop_border),
        "ssim_y": _ssim_y(ys, yh, crop_border),
        "psnr_rgb": psnr_rgb(sr, hr, crop_border=crop_border),
    }
