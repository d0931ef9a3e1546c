"""Task heads and tails (official ``model/common.py`` layout: ``head.i.0`` conv, ``head.i.{1,2}.body`` ResBlocks,
``tail.i.0`` upsampler, ``tail.i.1`` conv)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# EDSR/IPT DIV2K RGB mean, in [0, 1]; the MeanShift layers scale it by rgb_range.
RGB_MEAN = (0.4488, 0.4371, 0.4040)


def conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=True)


class MeanShift(nn.Conv2d):
    """Fixed 1x1 conv adding (sign=+1) or subtracting (sign=-1) the dataset mean; saved, never trained."""

    def __init__(self, rgb_range: float, sign: int) -> None:
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(RGB_MEAN))
        for p in self.parameters():
            p.requires_grad = False


class ResBlock(nn.Module):
    def __init__(self, n_feats: int, k: int = 5) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(n_feats, n_feats, k), nn.ReLU(inplace=True), conv(n_feats, n_feats, k))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + x


def make_head(n_colors: int, n_feats: int) -> nn.Sequential:
    return nn.Sequential(conv(n_colors, n_feats, 3), ResBlock(n_feats), ResBlock(n_feats))


def make_upsampler(scale: int, n_feats: int) -> nn.Sequential:
    """conv + PixelShuffle(2) per factor of two, or one conv + PixelShuffle(3); empty for scale 1 (as official)."""
    layers: list[nn.Module] = []
    if scale & (scale - 1) == 0:
        for _ in range(int(math.log2(scale))):
            layers += [conv(n_feats, 4 * n_feats, 3), nn.PixelShuffle(2)]
    elif scale == 3:
        layers += [conv(n_feats, 9 * n_feats, 3), nn.PixelShuffle(3)]
    else:
        raise ValueError(f"unsupported scale {scale}")
    return nn.Sequential(*layers)


def make_tail(scale: int, n_feats: int, n_colors: int) -> nn.Sequential:
    return nn.Sequential(make_upsampler(scale, n_feats), conv(n_feats, n_colors, 3))
