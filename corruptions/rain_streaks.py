"""``rain_streaks``: procedural synthetic rain for derain pretraining (we do not have the RainTrainL streak layers).

The recipe and its calibration: docs/corruptions.md#rain_streaks-derain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Generator, Tensor

from .registry import is_finite_number, register

__all__ = ["check_rain_params", "rain_layer", "rain_streaks", "streak_kernel"]

Range = Sequence[float]


def _check_range(name: str, value: Range, lo: float, hi: float) -> tuple[float, float]:
    bounds = f"{lo} <= lo <= hi" + (f" <= {hi}" if math.isfinite(hi) else "")
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(is_finite_number(v) for v in value)
        or not lo <= value[0] <= value[1] <= hi
    ):
        raise ValueError(f"{name} must be a range [lo, hi] of two finite numbers with {bounds}, got {value!r}")
    return float(value[0]), float(value[1])


def check_rain_params(
    *,
    density: float = 0.0027,
    length: Range = (15, 35),
    angle: Range = (-20, 20),
    intensity: Range = (0.3, 0.6),
    width: float = 0.6,
) -> dict[str, float | tuple[float, float]]:
    """The registry's ``check`` hook and the function's own validation: the params as floats, ``ValueError``
    naming the first bad one."""
    if not is_finite_number(density) or not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be a number in [0, 1], got {density!r}")
    if not is_finite_number(width) or width <= 0:
        raise ValueError(f"width must be a finite number > 0 (pixels), got {width!r}")
    return {
        "density": float(density),
        "width": float(width),
        "length": _check_range("length", length, 0.0, math.inf),
        "angle": _check_range("angle", angle, -90.0, 90.0),
        "intensity": _check_range("intensity", intensity, 0.0, math.inf),
    }


def streak_kernel(length: float, angle_deg: float, width: float, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An odd-sized (K, K) line kernel with peak 1: ``length`` px long, ``angle_deg`` from vertical, std ``width``."""
    radius = int(math.ceil(length / 2 + 2 * width))
    coords = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    dy, dx = torch.meshgrid(coords, coords, indexing="ij")
    theta = math.radians(angle_deg)
    along = dy * math.cos(theta) + dx * math.sin(theta)
    across = dx * math.cos(theta) - dy * math.sin(theta)
    taper = (1.0 - (2.0 * along / max(length, 1.0)) ** 2).clamp(min=0.0).sqrt()
    kernel = taper * torch.exp(-0.5 * (across / max(width, 1e-3)) ** 2)
    return (kernel / kernel.max()).to(dtype)


def _uniform(generator: Generator, lo: float, hi: float, device: torch.device) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64, device=device))


def rain_layer(
    h: int,
    w: int,
    *,
    generator: Generator,
    density: float,
    length: Range,
    angle: Range,
    intensity: Range,
    width: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """One (H, W) grayscale rain layer, values >= 0 (overlapping streaks may sum above the peak intensity)."""
    device = torch.device(device)
    theta = _uniform(generator, *angle, device)
    streak_len = _uniform(generator, *length, device)
    peak = _uniform(generator, *intensity, device)
    kernel = streak_kernel(streak_len, theta, width, dtype=dtype, device=device)
    pad = kernel.shape[-1] // 2
    u = torch.rand((h + 2 * pad, w + 2 * pad), generator=generator, dtype=dtype, device=device)
    seeds = torch.where(u < density, u / density, torch.zeros((), dtype=dtype, device=device))
    layer = F.conv2d(seeds[None, None], kernel[None, None])[0, 0]
    return layer * peak


@register("rain_streaks", check=check_rain_params)
def rain_streaks(
    x: Tensor,
    *,
    generator: Generator,
    density: float = 0.0027,
    length: Range = (15, 35),
    angle: Range = (-20, 20),
    intensity: Range = (0.3, 0.6),
    width: float = 0.6,
) -> Tensor:
    """Add slanted, semi-transparent synthetic rain streaks (one gray layer per item); output in [0, 1].

    Args:
        density: fraction of canvas pixels that seed a streak.
        length: [lo, hi] streak length in pixels; one value per item, drawn uniformly.
        angle: [lo, hi] streak angle in degrees from vertical (positive leans right going down); one per item.
        intensity: [lo, hi] peak brightness added by the brightest isolated streak; one per item.
        width: std in pixels of the streak's Gaussian cross profile.
    """
    checked = check_rain_params(density=density, length=length, angle=angle, intensity=intensity, width=width)
    b, _, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(b):
        layer = rain_layer(h, w, generator=generator, dtype=x.dtype, device=x.device, **checked)
        out[i] = (x[i] + layer).clamp(0.0, 1.0)
    return out
