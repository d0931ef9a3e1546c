"""``RefineConfig``: the strict, frozen configuration of ``ipt refine`` (params.yaml ``refine`` section).

Defaults and modes: docs/refine.md#design-choices-and-differences-from-the-paper.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ipt.config import DEFAULT_SEED, strict_from_dict
from ipt.errors import IPTError


class RefineError(IPTError):
    """A refinement run or a refined model cannot be set up; the message names the file, option or command."""


@dataclass(frozen=True)
class RefineConfig:
    """``base``: the restorer to refine (project checkpoint, run folder, official file or ``models:/`` URI).
    ``shards``: root of ``<shards>/<task>/`` pair shards (the training data of ``ipt finetune``). ``crop``: random
    LQ crop side taken from each shard patch (0: the whole patch). ``calibration``: training patches used to
    recalibrate the BN statistics of the ``random`` prior. ``zero_init``: PTG-RM's last decoder conv starts at zero,
    so the untrained refiner returns the (clamped) base output exactly (not the reference's default init, which
    starts from a random residual that a short run does not remove; docs/refine.md)."""

    task: str = "sr_x2"
    base: str = ""
    prior: str = "mobilenet_v2_imagenet"
    prior_layer: int = 17
    prior_spatial: bool = False
    shards: str = "data/pairs"
    out: str = "runs/refine/{task}"
    steps: int = 500
    batch_size: int = 8
    crop: int = 0
    flip: bool = True
    lr: float = 1e-4
    min_lr: float = 1e-7
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 0.0
    joint: bool = False
    calibration: int = 64
    channels: int = 16
    blocks: int = 4
    zero_init: bool = True
    seed: int = DEFAULT_SEED
    shuffle_buffer: int = 64
    num_workers: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        if not self.base:
            raise RefineError("refine needs `base`: the restorer to refine (checkpoint, run folder or models:/ URI)")
        for name in ("steps", "batch_size", "channels", "blocks"):
            if getattr(self, name) < 1:
                raise RefineError(f"refine.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("crop", "calibration", "shuffle_buffer", "num_workers"):
            if getattr(self, name) < 0:
                raise RefineError(f"refine.{name} must be >= 0, got {getattr(self, name)}")
        if self.crop and self.crop % 4:
            raise RefineError(f"refine.crop must be a multiple of 4 (PTG-RM works at 1/4 size), got {self.crop}")
        if not (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise RefineError(
                f"refine.betas must be two numbers in [0, 1) (Adam's beta1, beta2), got {list(self.betas)}"
            )
        if not all(math.isfinite(v) for v in (self.lr, self.min_lr, self.grad_clip)):
            raise RefineError(
                f"refine: lr, min_lr and grad_clip must be finite, got {self.lr}, {self.min_lr}, {self.grad_clip}"
            )
        if not 0 < self.min_lr <= self.lr:
            raise RefineError(f"refine: need 0 < min_lr <= lr, got lr {self.lr}, min_lr {self.min_lr}")
        if self.grad_clip < 0:
            raise RefineError(f"refine.grad_clip must be >= 0, got {self.grad_clip}")
        if "://" in str(self.shards) and not str(self.shards).startswith("file://"):
            raise RefineError(
                f"refine.shards {self.shards}: training reads pair shards from a local folder (remote URLs are not "
                "supported yet); fetch them first (`dvc pull`, or `aws s3 sync`) and pass that folder"
            )

    @property
    def out_dir(self) -> str:
        return self.out.format(task=self.task, prior=self.prior)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RefineConfig:
        try:
            return strict_from_dict(cls, dict(data))
        except RefineError:
            raise
        except (ValueError, TypeError) as e:
            raise RefineError(str(e)) from None
