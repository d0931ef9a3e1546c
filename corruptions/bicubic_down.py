"""``bicubic_down``: MATLAB ``imresize(x, 1/scale, 'bicubic')`` on the uint8-quantized image (the EDSR/IPT LR)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Generator, Tensor

from ._imresize import imresize_uint8
from ._levels import quantize_uint8
from .registry import is_finite_number, register

__all__ = ["bicubic_down", "bicubic_down_size", "check_scale"]


def check_scale(*, scale: int) -> int:
    """``scale`` as an int; ``ValueError`` unless it is a positive integer (2.0 is accepted, 2.5, 0, "2" are not)."""
    if not is_finite_number(scale) or int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer (the SR factor), got {scale!r}")
    return int(scale)


def bicubic_down_size(h: int, w: int, *, scale: int) -> tuple[int, int]:
    """MATLAB's output size ``ceil(h / scale), ceil(w / scale)`` (exact integer arithmetic)."""
    scale = check_scale(scale=scale)
    return -(-h // scale), -(-w // scale)


@register("bicubic_down", out_size=bicubic_down_size, deterministic=True, check=check_scale)
def bicubic_down(x: Tensor, *, generator: Generator, scale: int) -> Tensor:
    """Quantize to uint8, MATLAB-bicubic downscale by ``scale``, back to float; output in [0, 1] on k/255 levels."""
    scale = check_scale(scale=scale)
    b, c, h, w = x.shape
    levels = quantize_uint8(x).cpu().numpy()  # (B, C, H, W)
    stacked = np.ascontiguousarray(levels.reshape(b * c, h, w).transpose(1, 2, 0))  # (H, W, B*C)
    small = imresize_uint8(stacked, 1.0 / scale)  # every channel of every item resized independently
    h2, w2 = small.shape[:2]
    out = torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1))).reshape(b, c, h2, w2)
    return out.to(device=x.device, dtype=x.dtype) / 255.0
