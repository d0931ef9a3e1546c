"""The IPT network: per-task heads and tails around one shared transformer body."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ipt.config import ModelSpec
from ipt.model.body import VisionTransformer
from ipt.model.heads import MeanShift, make_head, make_tail


class IPT(nn.Module):
    """Image Processing Transformer.

    Tasks are addressed by name (``model(x, "sr_x2")``); task i of ``spec.tasks`` owns ``head.i``, ``tail.i`` and
    query row i, which is exactly the official state-dict layout. Input and output are RGB in [0, rgb_range]
    (unclamped); the input must be ``patch_size`` x ``patch_size`` (use ``ipt.inference`` for whole images).
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.sub_mean = MeanShift(spec.rgb_range, -1)
        self.add_mean = MeanShift(spec.rgb_range, +1)
        self.head = nn.ModuleList(make_head(spec.n_colors, spec.n_feats) for _ in spec.tasks)
        self.body = VisionTransformer(
            img_dim=spec.patch_size,
            patch_dim=spec.patch_dim,
            num_channels=spec.n_feats,
            num_heads=spec.num_heads,
            num_layers=spec.num_layers,
            num_queries=spec.queries,
            dropout=spec.dropout,
            mlp=spec.mlp,
            pos_every=spec.pos_every,
            no_pos=spec.no_pos,
            no_norm=spec.no_norm,
            out_proj_bias=spec.out_proj_bias,
        )
        self.tail = nn.ModuleList(make_tail(s, spec.n_feats, spec.n_colors) for _, s in spec.tasks)
        if spec.image_residual:  # start as the baseline: the correction's last conv is zero
            for t in self.tail:
                nn.init.zeros_(t[-1].weight)
                nn.init.zeros_(t[-1].bias)

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.spec.task_names

    def scale(self, task: str) -> int:
        return self.spec.scale_of(task)

    def _check(self, x: Tensor) -> None:
        p = self.spec.patch_size
        if x.dim() != 4 or x.shape[1] != self.spec.n_colors or x.shape[-2:] != (p, p):
            raise ValueError(f"IPT expects (B, {self.spec.n_colors}, {p}, {p}) windows, got {tuple(x.shape)}")

    def forward(self, x: Tensor, task: str, return_tokens: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Restore windows ``x`` (B, 3, P, P) for ``task``; optionally also return the decoder tokens (B, N, E)."""
        self._check(x)
        i = self.spec.index_of(task)
        h = self.head[i](self.sub_mean(x))
        tokens = self.body.tokens(h, i)
        res = self.body.fold(tokens) + h
        if self.spec.image_residual:
            s = self.spec.tasks[i][1]
            base = x if s == 1 else F.interpolate(x, scale_factor=s, mode="bicubic", align_corners=False)
            out = self.tail[i](res) + base
        else:
            out = self.add_mean(self.tail[i](res))
        return (out, tokens) if return_tokens else out


def build_ipt(spec: ModelSpec) -> IPT:
    return IPT(spec)
