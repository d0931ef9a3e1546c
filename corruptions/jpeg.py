"""``jpeg``: JPEG compression artefacts (encode with Pillow at ``quality``, decode back), e.g. task ``jpeg_q10``.

Encoder settings: docs/corruptions.md#jpeg-a-users-task-eg-jpeg_q10-the-worked-example-below.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Generator, Tensor

from ._levels import quantize_uint8
from .registry import register

__all__ = ["MAX_QUALITY", "MIN_QUALITY", "check_quality", "jpeg", "jpeg_roundtrip_uint8"]

MIN_QUALITY, MAX_QUALITY = 1, 95  # Pillow: above 95 disables parts of the compression and bloats files
_MODES = {1: "L", 3: "RGB"}


def _check_quality(quality: int) -> int:
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)):
        raise ValueError(f"jpeg quality must be an integer in {MIN_QUALITY}..{MAX_QUALITY}, got {quality!r}")
    if not MIN_QUALITY <= int(quality) <= MAX_QUALITY:
        raise ValueError(f"jpeg quality must be in {MIN_QUALITY}..{MAX_QUALITY}, got {quality}")
    return int(quality)


def check_quality(*, quality: int) -> int:
    """The registry's ``check`` hook: ``quality`` as an int, ``ValueError`` unless an integer in 1..95."""
    return _check_quality(quality)


def jpeg_roundtrip_uint8(img: np.ndarray, quality: int) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 -> the same shape after a JPEG encode/decode in memory at ``quality``."""
    import io

    from PIL import Image  # the one non-torch dependency of corruptions/: Pillow is a core project dependency

    quality = _check_quality(quality)
    mode = "L" if img.ndim == 2 else "RGB"
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(
        buf, format="JPEG", quality=quality, subsampling="4:2:0", optimize=False, progressive=False
    )
    buf.seek(0)
    with Image.open(buf) as decoded:
        out = np.asarray(decoded.convert(mode))
    return np.ascontiguousarray(out)


@register("jpeg", deterministic=True, check=check_quality)
def jpeg(x: Tensor, *, generator: Generator, quality: int) -> Tensor:
    """Quantize to uint8, JPEG-encode at ``quality`` (1..95, 4:2:0) and decode; output in [0, 1] on k/255 levels.

    ``x`` has 1 (grayscale JPEG) or 3 (RGB, YCbCr 4:2:0 inside the codec) channels. The uint8 quantization is
    ``floor(255 x + 0.5)`` (MATLAB's im2uint8, as ``bicubic_down`` and the corrupt stage); every batch item is
    encoded on its own. ``generator`` is unused (the corruption is deterministic).
    """
    quality = _check_quality(quality)
    b, c, h, w = x.shape
    if c not in _MODES:
        raise ValueError(f"jpeg takes 1 or 3 channels, got {c}")
    levels = quantize_uint8(x).cpu().numpy()  # (B, C, H, W)
    items = []
    for i in range(b):
        img = levels[i, 0] if c == 1 else levels[i].transpose(1, 2, 0)
        out = jpeg_roundtrip_uint8(img, quality)
        items.append(out[None] if c == 1 else out.transpose(2, 0, 1))
    y = torch.from_numpy(np.ascontiguousarray(np.stack(items)))
    return y.to(device=x.device, dtype=x.dtype) / 255.0
