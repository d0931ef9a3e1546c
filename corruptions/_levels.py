"""Float images to uint8 levels the way MATLAB's im2uint8 does: ``floor(255 x + 0.5)``, saturated (every corruption
and the corrupt stage quantize their outputs with it)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["quantize_uint8", "round_half_away_uint8"]


def quantize_uint8(x: Tensor) -> Tensor:
    """Float in [0, 1] -> uint8 levels, ``x * 255`` rounded half away from zero (MATLAB's im2uint8) and saturated."""
    return torch.floor(x.detach() * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8)


def round_half_away_uint8(x: np.ndarray) -> np.ndarray:
    """A float array on the 0..255 scale to uint8 as MATLAB does: round half away from zero, saturate to [0, 255]."""
    return np.clip(np.floor(np.abs(x) + 0.5) * np.sign(x), 0, 255).astype(np.uint8)
