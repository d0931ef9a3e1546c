"""A refined restorer: the base IPT, then PTG-RM guided by a frozen prior (held outside the trainable modules).

Scales and whole-image inference: docs/refine.md#design-choices-and-differences-from-the-paper.
"""

from __future__ import annotations

from torch import Tensor, nn

from ipt.inference import restore_image
from ipt.model import IPT
from ipt.refine.priors import Prior
from ipt.refine.ptgrm import PTGRM


class RefinedIPT(nn.Module):
    """``base`` and ``refiner`` are submodules (saved, optionally trained); ``prior`` is not: it never enters
    ``parameters()``, ``state_dict()`` or ``train()``."""

    def __init__(self, base: IPT, refiner: PTGRM, prior: Prior, task: str) -> None:
        super().__init__()
        if refiner.spec.prior_dim != prior.dim:
            raise ValueError(f"PTG-RM takes a {refiner.spec.prior_dim}-d prior, {prior.name!r} gives {prior.dim}")
        if refiner.spec.spatial_prior != prior.spatial:
            kinds = {True: "spatial maps", False: "a pooled vector"}
            raise ValueError(
                f"PTG-RM takes {kinds[refiner.spec.spatial_prior]}, prior {prior.name!r} gives {kinds[prior.spatial]}"
            )
        self.base, self.refiner, self.task = base, refiner, task
        self.__dict__["prior"] = prior  # not a registered submodule (see the class docstring)
        self.scale = base.scale(task)
        self.rgb_range = float(base.spec.rgb_range)

    def base_output(self, lq: Tensor, *, tiling: str = "overlap", batch: int = 64) -> Tensor:
        """The base's [0, 255] output for (B, 3, h, w) ``lq`` in [0, 255]: one call for a window-sized input, the
        tiled inference otherwise (differentiable either way)."""
        p = self.base.spec.patch_size
        if lq.shape[-2:] == (p, p):
            return self.base(lq, self.task)
        return restore_image(lambda w: self.base(w, self.task), lq, self.scale, tiling=tiling, patch=p, batch=batch)

    def refine(self, base_out: Tensor, lq: Tensor, g: Tensor | None = None) -> Tensor:
        """PTG-RM on the base's output ([0, 255] in and out); ``g`` is computed from ``lq`` unless given.

        ``clamp(base_out, 0, 255) + 255 r``: the same value as ``255 PTGRM(base_out / 255, ...)`` but with the base
        never divided and re-multiplied, so a zero residual (an untrained ``zero_init`` refiner) returns the
        clamped base bit for bit, and its quantised output (``clamp(0, 255).round()``) is the base's own.
        """
        r = self.rgb_range
        lq01 = lq / r
        if g is None:
            g = self.prior(lq01)
        res, _ = self.refiner.residual(base_out / r, lq01, g.to(lq.device))
        return base_out.clamp(0, r) + res * r

    def forward(self, lq: Tensor) -> Tensor:
        return self.refine(self.base_output(lq), lq)

    def freeze_base(self) -> None:
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.base.eval()

    def train(self, mode: bool = True) -> RefinedIPT:
        super().train(mode)
        if not any(p.requires_grad for p in self.base.parameters()):
            self.base.eval()  # a frozen base stays in eval mode (dropout off)
        return self
