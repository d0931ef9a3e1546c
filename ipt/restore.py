"""A whole-image restorer: an IPT, a task, a tiling, a device and a precision. uint8 in, uint8 out."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ipt.device import autocast, resolve_device, resolve_precision
from ipt.inference import quantize, restore_image
from ipt.model import IPT


@dataclass
class Restorer:
    model: IPT
    task: str
    tiling: str = "overlap"
    overlap: int | None = None  # None: a quarter of the window
    batch: int = 64
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self) -> None:
        self.model.spec.index_of(self.task)  # KeyError naming the model's tasks
        patch = self.model.spec.patch_size
        if self.overlap is not None and not 0 <= self.overlap < patch:
            raise ValueError(f"overlap must be in [0, {patch}) for this model's {patch}-px windows, not {self.overlap}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, not {self.batch}")
        self._device = resolve_device(self.device)
        self._precision = resolve_precision(self.precision, self._device)
        self.model = self.model.to(self._device).eval()
        self.scale = self.model.scale(self.task)

    @property
    def precision_used(self) -> str:
        return self._precision

    def _windows(self, w: Tensor) -> Tensor:
        with autocast(self._device, self._precision):
            out = self.model(w.to(self._device), self.task)
        return out.float().cpu()

    @torch.inference_mode()
    def restore_tensor(self, x: Tensor) -> Tensor:
        """(1, 3, H, W) float in [0, 255] -> (1, 3, H*s, W*s) unclamped float."""
        p = self.model.spec.patch_size
        return restore_image(
            self._windows, x, self.scale, tiling=self.tiling, patch=p, overlap=self.overlap, batch=self.batch
        )

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H*s, W*s, 3) uint8, clamped and rounded as the official evaluation."""
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
        y = quantize(self.restore_tensor(x), self.model.spec.rgb_range)
        return y[0].permute(1, 2, 0).to(torch.uint8).numpy()


def refined_restorer(
    weights: str | os.PathLike, task: str | None, *, tracking_uri: str | None = None, **kw: Any
) -> Any:
    """Base + PTG-RM (``ipt.refine``) when ``weights`` is a refiner checkpoint, else None. ``kw``: Restorer options
    and ``num_heads``. Raises ``ValueError`` (RefineError) naming the file when its base or prior cannot be had."""
    from ipt.refine.checkpoint import is_refiner_checkpoint

    if not is_refiner_checkpoint(weights):
        return None
    from ipt.refine.restore import open_refined

    return open_refined(weights, task, tracking_uri=tracking_uri, **kw)
