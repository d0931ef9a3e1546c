"""Tiny benchmark trees for tests (EDSR SR layout, flat denoise layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from corruptions import imresize_uint8


def make_sr_set(root: Path, name: str = "Set5", n: int = 2, size: tuple[int, int] = (60, 72), scales=(2,)) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        y, x = np.mgrid[0 : size[0], 0 : size[1]]
        img = (np.stack([x * 3, y * 3, (x + y) * 2], -1) + rng.integers(0, 20, (*size, 3))) % 256
        hr = img.astype(np.uint8)
        (root / name / "HR").mkdir(parents=True, exist_ok=True)
        Image.fromarray(hr).save(root / name / "HR" / f"img{i}.png")
        for s in scales:
            d = root / name / "LR_bicubic" / f"X{s}"
            d.mkdir(parents=True, exist_ok=True)
            h, w = size[0] - size[0] % s, size[1] - size[1] % s
            Image.fromarray(imresize_uint8(hr[:h, :w], 1 / s)).save(d / f"img{i}x{s}.png")
    return root
