"""MATLAB-compatible bicubic ``imresize`` in numpy (no I/O), bit-exact on uint8 images.

The facts that make it exact: docs/corruptions.md#matlab-bicubic-the-facts-that-make-it-bit-exact.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ._levels import round_half_away_uint8

__all__ = ["contributions", "imresize_float", "imresize_uint8", "output_length"]


def _cubic(x: np.ndarray) -> np.ndarray:
    """MATLAB's bicubic kernel (a = -0.5)."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * (
        (ax > 1) & (ax <= 2)
    )


def output_length(in_length: int, scale: float) -> int:
    """MATLAB's output length ``ceil(in_length * scale)``, robust to scale = 1/s not being exact in binary."""
    exact = in_length * scale
    nearest = round(exact)
    if abs(exact - nearest) < 1e-9 * max(1.0, abs(exact)):
        return int(nearest)
    return int(math.ceil(exact))


@lru_cache(maxsize=64)
def contributions(in_length: int, out_length: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and 0-based source indices, both (out_length, P), exactly as MATLAB's ``contributions()``.

    Antialiasing is on (MATLAB's default for bicubic). Columns whose weights are all zero are dropped, as MATLAB does.
    """
    kernel_width = 4.0
    if scale < 1:
        kernel_width = kernel_width / scale

        def h(t: np.ndarray) -> np.ndarray:
            return scale * _cubic(scale * t)

    else:
        h = _cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)[:, None]
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    p = int(math.ceil(kernel_width)) + 2
    ind = left + np.arange(p, dtype=np.float64)[None, :]  # 1-based, may fall outside [1, in_length]
    weights = h(u - ind)
    weights = weights / weights.sum(axis=1, keepdims=True)
    aux = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])  # mirror fold, 0-based
    indices = aux[np.mod(ind.astype(np.int64) - 1, aux.size)]
    keep = np.any(weights != 0, axis=0)
    weights, indices = weights[:, keep], indices[:, keep]
    weights.setflags(write=False)
    indices.setflags(write=False)
    return weights, indices


def _resize_axis(img: np.ndarray, axis: int, out_length: int, scale: float) -> np.ndarray:
    """One 1-D pass in float64: sum over taps in MATLAB's order (tap by tap, sequentially)."""
    weights, indices = contributions(img.shape[axis], out_length, scale)
    src = np.ascontiguousarray(np.moveaxis(img, axis, 0), dtype=np.float64)
    src = src.reshape(src.shape[0], -1)  # (in_length, everything else): each tap is one contiguous row gather
    acc = np.zeros((out_length, src.shape[1]), dtype=np.float64)
    tap = np.empty_like(acc)
    for j in range(weights.shape[1]):
        np.take(src, indices[:, j], axis=0, out=tap)
        tap *= weights[:, j, None]
        acc += tap
    rest = np.moveaxis(img, axis, 0).shape[1:]
    return np.moveaxis(acc.reshape((out_length,) + rest), 0, axis)


def _dimension_order(scales: tuple[float, float]) -> list[int]:
    """MATLAB resizes the dimension with the smallest scale first; stable sort, so rows first on ties."""
    return sorted(range(2), key=lambda d: scales[d])


def _normalise_scale(scale: float | tuple[float, float]) -> tuple[float, float]:
    if isinstance(scale, tuple | list):
        sh, sw = (float(s) for s in scale)
    else:
        sh = sw = float(scale)
    if sh <= 0 or sw <= 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    return sh, sw


def _resize(img: np.ndarray, scale: float | tuple[float, float], *, quantize: bool) -> np.ndarray:
    if img.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) array, got shape {img.shape}")
    scales = _normalise_scale(scale)
    out = img
    for axis in _dimension_order(scales):
        length = output_length(img.shape[axis], scales[axis])
        out = _resize_axis(out, axis, length, scales[axis])
        if quantize:
            out = round_half_away_uint8(out)
    return out


def imresize_uint8(img: np.ndarray, scale: float | tuple[float, float]) -> np.ndarray:
    """MATLAB ``imresize(img, scale, 'bicubic')`` for a uint8 (H, W) or (H, W, C) array; returns uint8.

    ``scale`` < 1 shrinks (pass ``1 / s`` for an integer factor s), > 1 enlarges; a pair gives (rows, cols) scales.
    Any trailing channel axis (C may be large, e.g. B*C stacked images) is resized independently.
    """
    if img.dtype != np.uint8:
        raise TypeError(f"imresize_uint8 expects a uint8 array, got {img.dtype}")
    return _resize(img, scale, quantize=True)


def imresize_float(img: np.ndarray, scale: float | tuple[float, float]) -> np.ndarray:
    """Same resize in float64 with no intermediate rounding (MATLAB's path for double input); returns float64."""
    return _resize(np.asarray(img, dtype=np.float64), scale, quantize=False)
