"""Whole-image restoration with a refined model: the base IPT window by window (``ipt.restore.Restorer``, any
tiling and precision), then PTG-RM once on the whole stitched image in fp32 with the prior of the whole input."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from ipt.inference import quantize
from ipt.refine.checkpoint import load_refined
from ipt.refine.config import RefineError
from ipt.refine.model import RefinedIPT
from ipt.restore import Restorer

# What the refiner is given as the prior's output g: the input image's own (how it runs), zeros, or the next image's
# of the set being scored (the probes of docs/refine.md: a refiner whose score does not move without its prior, or
# with another image's, has not learned to use what its prior says about the image).
PRIOR_PROBES = ("own", "zero", "next")


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
        self._set: list[tuple[Tensor, Tensor]] = []  # "next": (input, g) of each image of the set, in order
        self._at = 0
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
    def begin_set(self, images: list[Tensor]) -> None:
        """The images of the set about to be restored, in the order they will come ((1, 3, H, W) floats in
        [0, 255]): the ``next`` probe gives image i the prior's output of image i + 1 (the last, the first's). A
        pooled prior only: a spatial prior's maps have the size of their own image."""
        if self.prior_probe != "next":
            return
        if self.model.prior.spatial:
            raise RefineError(
                f"prior probe 'next': prior {self.model.prior.name!r} gives spatial maps, which fit only their own "
                "image; the next image's g is for a pooled prior"
            )
        if len(images) < 2:
            raise RefineError(f"prior probe 'next': the set has {len(images)} image(s); the next image's g needs two")
        lqs = [x.float().to(self._device) for x in images]
        self._set = [(lq, self.model.prior(lq / self.rgb_range)) for lq in lqs]
        self._at = 0

    def _next_g(self, lq: Tensor) -> Tensor:
        if not self._set:
            raise RuntimeError("prior probe 'next': begin_set(images) first (the set's images, in order)")
        i = self._at % len(self._set)
        if not torch.equal(self._set[i][0], lq):
            raise RuntimeError(f"prior probe 'next': expected image {i + 1} of the set begun, got another image")
        self._at += 1
        return self._set[(i + 1) % len(self._set)][1]

    @torch.inference_mode()
    def restore_tensor(self, x: Tensor) -> Tensor:
        """(1, 3, H, W) float in [0, 255] -> (1, 3, H*s, W*s) unclamped float (on CPU)."""
        base_out = self.base.restore_tensor(x).to(self._device)
        lq = x.float().to(self._device)
        g = None
        if self.prior_probe == "zero":  # does the refiner use its prior? its output with g = 0 instead of the image's
            g = torch.zeros_like(self.model.prior(lq / self.rgb_range))
        elif self.prior_probe == "next":  # does it use what g says about this image? another image's g instead
            g = self._next_g(lq)
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

    model = load_refined(path, tracking_uri=tracking_uri, num_heads=num_heads)
    if task is not None and task != model.task:
        raise RefineError(f"{path}: a PTG-RM refiner for task {model.task!r}, not {task!r}")
    return RefinedRestorer(model, **kw)
