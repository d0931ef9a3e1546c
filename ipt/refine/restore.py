"""Whole-image restoration with a refined model: the base IPT window by window (``ipt.restore.Restorer``, any
tiling and precision), then PTG-RM once on the whole stitched image in fp32 with the prior of the whole input."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from ipt.inference import quantize
from ipt.refine.checkpoint import load_refined
from ipt.refine.model import RefinedIPT
from ipt.restore import Restorer

# What the refiner is given as the prior's output g: the input image's own (how it runs), or zeros (the probe of
# docs/refine.md: a refiner whose score does not move without its prior has not learned to use it).
PRIOR_PROBES = ("own", "zero")


class RefinedRestorer:
    """The same interface as :class:`ipt.restore.Restorer` (``restore_tensor``, ``__call__``, ``precision_used``)."""

    def __init__(
        self,
        model: RefinedIPT,
        *,
        tiling: str = "overlap",
        overlap: int | None = None,
        batch: int = 64,
        device: str = "auto",
        precision: str = "auto",
        prior_probe: str = "own",
    ) -> None:
        if prior_probe not in PRIOR_PROBES:
            raise ValueError(f"prior probe {prior_probe!r}: one of {list(PRIOR_PROBES)}")
        self.prior_probe = prior_probe
        self.task = model.task
        self.base = Restorer(
            model.base, model.task, tiling=tiling, overlap=overlap, batch=batch, device=device, precision=precision
        )
        self._device = self.base._device
        self.model = model.to(self._device).eval()
        self.model.prior.to(self._device)
        self.scale = model.scale
        self.rgb_range = model.base.spec.rgb_range

    @property
    def precision_used(self) -> str:
        return self.base.precision_used

    @property
    def precision_info(self):
        return self.base.precision_info

    @property
    def notes(self) -> list[str]:
        return self.base.notes

    def describe(self) -> dict:
        probe = {} if self.prior_probe == "own" else {"prior_probe": self.prior_probe}
        return self.base.describe() | {"refiner": "ptgrm", "refiner_precision": "fp32"} | probe

    @torch.inference_mode()
    def restore_tensor(self, x: Tensor) -> Tensor:
        """(1, 3, H, W) float in [0, 255] -> (1, 3, H*s, W*s) unclamped float (on CPU)."""
        base_out = self.base.restore_tensor(x).to(self._device)
        lq = x.float().to(self._device)
        g = None
        if self.prior_probe == "zero":  # does the refiner use its prior? its output with g = 0 instead of the image's
            g = torch.zeros_like(self.model.prior(lq / self.rgb_range))
        return self.model.refine(base_out.float(), lq, g).cpu()

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H*s, W*s, 3) uint8, clamped and rounded as the official evaluation."""
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
        y = quantize(self.restore_tensor(x), self.rgb_range)
        return y[0].permute(1, 2, 0).to(torch.uint8).numpy()


def open_restorer(
    path: str | os.PathLike, task: str | None = None, *, tracking_uri: str | None = None, num_heads: int = 12, **kw
) -> RefinedRestorer:
    """A :class:`RefinedRestorer` for a refiner checkpoint (:data:`ipt.restore.OPENERS`); ``task``, if given, must
    be the one it was trained for."""
    from ipt.refine.config import RefineError

    model = load_refined(path, tracking_uri=tracking_uri, num_heads=num_heads)
    if task is not None and task != model.task:
        raise RefineError(f"{path}: a PTG-RM refiner for task {model.task!r}, not {task!r}")
    return RefinedRestorer(model, **kw)
