"""Learning-rate schedules by global step, optionally after a linear warm-up: step decay (BasicSR's ``total_iter``
style, the paper's) and cosine annealing. Kept as plain numbers so checkpoints load with ``weights_only=True``."""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import Any

from torch.optim import Optimizer

SCHEDULES = ("step", "cosine")


class StepDecay:
    """``lr(step)`` for the update at 0-based ``step``: every update after the first ``m`` uses the rate decayed at
    milestone ``m`` (as MultiStepLR stepped once per update). With ``warmup`` > 0 the first ``warmup`` updates ramp
    linearly up to the rate: update ``s`` uses ``(s + 1) / warmup`` of it."""

    kind = "step"

    def __init__(self, base_lr: float, milestones: tuple[int, ...] = (), gamma: float = 0.5, warmup: int = 0) -> None:
        self.base_lr, self.milestones, self.gamma = float(base_lr), tuple(sorted(milestones)), float(gamma)
        self.warmup = int(warmup)

    def _warm(self, step: int) -> float:
        return (step + 1) / self.warmup if step < self.warmup else 1.0

    def lr(self, step: int) -> float:
        return self.base_lr * self.gamma ** bisect_right(self.milestones, step) * self._warm(step)

    def apply(self, optimizer: Optimizer, step: int) -> float:
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        state = {"kind": self.kind, "base_lr": self.base_lr, "warmup": self.warmup}
        return state | {"milestones": list(self.milestones), "gamma": self.gamma}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lr, self.gamma = float(state["base_lr"]), float(state["gamma"])
        self.milestones = tuple(int(m) for m in state["milestones"])
        self.warmup = int(state.get("warmup", 0))  # checkpoints from before warm-up existed had none


class CosineDecay(StepDecay):
    """Linear warm-up over ``warmup`` updates, then ``min_lr + (base - min_lr) (1 + cos(pi t)) / 2`` with t going
    from 0 at the end of the warm-up to 1 at update ``total`` (the run's ``steps`` when it started: extending a
    resumed run keeps the curve it began, as step decay keeps its milestones)."""

    kind = "cosine"

    def __init__(self, base_lr: float, total: int, warmup: int = 0, min_lr: float = 0.0) -> None:
        super().__init__(base_lr, (), 1.0, warmup)
        self.total, self.min_lr = int(total), float(min_lr)

    def lr(self, step: int) -> float:
        if step < self.warmup:
            return self.base_lr * self._warm(step)
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"total": self.total, "min_lr": self.min_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.total, self.min_lr = int(state["total"]), float(state["min_lr"])


def schedule_from_state(state: dict[str, Any]) -> StepDecay:
    """The schedule a checkpoint recorded (``kind`` absent: step decay, as every checkpoint before cosine)."""
    kind = state.get("kind", "step")
    sched = CosineDecay(1.0, 1) if kind == "cosine" else StepDecay(1.0)
    sched.load_state_dict(state)
    return sched
