"""``gaussian_noise``: additive white Gaussian noise for the denoising tasks (sigma on the 0..255 scale)."""

from __future__ import annotations

import torch
from torch import Generator, Tensor

from .registry import is_finite_number, register

__all__ = ["check_sigma", "gaussian_noise"]


def check_sigma(*, sigma: float) -> float:
    """``sigma`` as a float; ``ValueError`` unless it is a finite real number >= 0 (NaN would zero every pixel)."""
    if not is_finite_number(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0 (noise std on the 0..255 scale), got {sigma!r}")
    return float(sigma)


@register("gaussian_noise", check=check_sigma)
def gaussian_noise(x: Tensor, *, generator: Generator, sigma: float) -> Tensor:
    """Add i.i.d. N(0, (sigma/255)^2) noise per pixel and channel, then clip; output float in [0, 1], not quantized.

    Noise is drawn from ``generator`` one batch item after the other (item 0 first), so a batch of one gives the
    same noise as that item alone. Rounding to uint8, if any, is the caller's explicit step.
    """
    sigma = check_sigma(sigma=sigma)
    noise = torch.empty_like(x)
    for i in range(x.shape[0]):
        noise[i] = torch.randn(x.shape[1:], generator=generator, dtype=x.dtype, device=x.device)
    return (x + noise * (sigma / 255.0)).clamp(0.0, 1.0)
