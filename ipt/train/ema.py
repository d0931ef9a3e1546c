"""An exponential moving average of the weights: ``ema = decay * ema + (1 - decay) * w`` after every update.

docs/training.md#validation-ema-best-checkpoint."""

from __future__ import annotations

import copy
from typing import Any

import torch

from ipt.model import IPT


class WeightEMA:
    """A frozen eval-mode copy of ``model`` that follows its weights; buffers are copied as they are."""

    def __init__(self, model: IPT, decay: float) -> None:
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: IPT) -> None:
        mine = list(self.model.parameters())
        torch._foreach_lerp_(mine, [p.detach() for p in model.parameters()], 1.0 - self.decay)
        for b, src in zip(self.model.buffers(), model.buffers(), strict=True):
            b.copy_(src)

    def state_dict(self) -> dict[str, Any]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state, strict=True)
