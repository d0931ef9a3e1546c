"""IPT's training objective: L1 + lambda x patch-level supervised-contrastive loss on the decoder tokens (pure torch).

Definition and the choices left open: docs/training.md#the-contrastive-loss-ipttrainlossespatch_contrastive.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

TEMPERATURE = 0.07
CONTRASTIVE_WEIGHT = 0.1


PIXEL_LOSSES = ("l1", "charbonnier")


def l1(out: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error on the [0, 255] scale the model works in (the official ``1*L1``)."""
    return F.l1_loss(out.float(), target.float())


def charbonnier(out: Tensor, target: Tensor, eps: float) -> Tensor:
    """mean(sqrt(d^2 + eps^2)) - eps on the [0, 255] scale: L1 for errors >> eps, quadratic below (0 at d = 0).

    Unlike L1, whose gradient has the full magnitude at any error, a pixel that is already right pulls on the weights
    in proportion to its (small) error; that matters for sparse corruptions such as rain streaks (docs/training.md).
    """
    d = out.float() - target.float()
    return (d.square() + eps * eps).sqrt().mean() - eps


def patch_contrastive(
    tokens: Tensor,
    *,
    temperature: float = TEMPERATURE,
    base_temperature: float = TEMPERATURE,
    contrast: Tensor | None = None,
    offset: int = 0,
) -> Tensor:
    """SupCon over patch tokens with images as classes; mean over the anchors ``tokens`` (B, N, E).

    Args:
        contrast: the full contrast set (B_all, N, E) when it is more than the anchors (DDP: every rank's tokens);
            its images ``offset .. offset + B - 1`` must be the anchors themselves.
    """
    if tokens.dim() != 3 or tokens.shape[1] < 2:
        raise ValueError(f"patch_contrastive needs (B, N >= 2, E) tokens, got {tuple(tokens.shape)}")
    b, n, e = tokens.shape
    anchors = F.normalize(tokens.float(), dim=-1).reshape(b * n, e)
    keys = anchors if contrast is None else F.normalize(contrast.float(), dim=-1).reshape(-1, e)
    if contrast is not None and not 0 <= offset <= contrast.shape[0] - b:
        raise ValueError(f"offset {offset} does not place {b} anchor images inside {contrast.shape[0]}")
    logits = anchors @ keys.T / temperature  # (b*n, b_all*n)
    rows = torch.arange(b * n, device=tokens.device)
    own = rows + offset * n  # each anchor's own column
    image_of_row = rows // n + offset
    image_of_col = torch.arange(keys.shape[0], device=tokens.device) // n
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[rows, own] = True
    logits = logits.masked_fill(is_self, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (image_of_row[:, None] == image_of_col[None, :]) & ~is_self
    mean_log_prob_pos = log_prob.masked_fill(~positive, 0.0).sum(1) / (n - 1)
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


def ipt_objective(
    out: Tensor,
    target: Tensor,
    tokens: Tensor,
    *,
    weight: float = CONTRASTIVE_WEIGHT,
    temperature: float = TEMPERATURE,
    gather: Callable[[Tensor], tuple[Tensor, int]] | None = None,
    pixel: str = "l1",
    eps: float = 1.0,
) -> dict[str, Tensor]:
    """``{"loss", "l1", "contrastive"}``: pixel loss + weight x patch contrastive (skipped, and reported 0, at weight
    0). ``pixel`` is ``l1`` (the paper's) or ``charbonnier`` (with ``eps``); ``l1`` is reported either way, so runs
    with either objective compare on the same metric.

    ``gather(tokens) -> (all ranks' tokens, this rank's first image index)`` turns on the global contrast set.
    """
    if pixel not in PIXEL_LOSSES:
        raise ValueError(f"unknown pixel loss {pixel!r}; known: {list(PIXEL_LOSSES)}")
    rec = l1(out, target)
    fit = rec if pixel == "l1" else charbonnier(out, target, eps)
    if weight == 0:
        con = torch.zeros((), device=rec.device)
    elif gather is None:
        con = patch_contrastive(tokens, temperature=temperature)
    else:
        everything, offset = gather(tokens.float())
        con = patch_contrastive(tokens, temperature=temperature, contrast=everything, offset=offset)
    return {"loss": fit + weight * con, "l1": rec.detach(), "contrastive": con.detach()}
