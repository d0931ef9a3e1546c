"""Step decay by global step (BasicSR's ``total_iter`` style): lr = base x gamma ** (milestones passed)."""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

from torch.optim import Optimizer


class StepDecay:
    """``lr(step)`` for the update at 0-based ``step``: every update after the first ``m`` uses the rate decayed at
    milestone ``m`` (as MultiStepLR stepped once per update; kept as plain numbers so checkpoints load with
    ``weights_only=True``)."""

    def __init__(self, base_lr: float, milestones: tuple[int, ...] = (), gamma: float = 0.5) -> None:
        self.base_lr, self.milestones, self.gamma = float(base_lr), tuple(sorted(milestones)), float(gamma)

    def lr(self, step: int) -> float:
        return self.base_lr * self.gamma ** bisect_right(self.milestones, step)

    def apply(self, optimizer: Optimizer, step: int) -> float:
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {"base_lr": self.base_lr, "milestones": list(self.milestones), "gamma": self.gamma}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lr, self.gamma = float(state["base_lr"]), float(state["gamma"])
        self.milestones = tuple(int(m) for m in state["milestones"])
