"""MobileNetV2 in torchvision's state-dict layout, so the ImageNet weights load with ``strict=True`` (pure torch).

Design notes: docs/refine.md#priors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def channels_at(layer: int) -> int:
    """Output channels of ``features.<layer>`` (0..18)."""
    widths = [32] + [c for _, c, n, _ in SETTINGS for _ in range(n)] + [1280]
    if not 0 <= layer < len(widths):
        raise ValueError(f"MobileNetV2 has features.0 .. features.{len(widths) - 1}, not features.{layer}")
    return widths[layer]


class ConvBNReLU6(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = [ConvBNReLU6(cin, hidden, kernel=1)] if expansion != 1 else []
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """The ImageNet classifier; :meth:`pooled` gives the global average of ``features.<layer>`` instead."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU6(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBNReLU6(cin, 1280, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))

    def pooled(self, x: Tensor, layer: int = 18) -> Tensor:
        """Global average of ``features.<layer>``'s output (B, channels_at(layer)); later layers are not run."""
        for i, block in enumerate(self.features):
            x = block(x)
            if i == layer:
                return x.mean(dim=(2, 3))
        raise ValueError(f"no features.{layer}")

    def maps(self, x: Tensor, layers: tuple[int, ...]) -> list[Tensor]:
        """The outputs of ``features.<layer>`` for each of ``layers`` (ascending); later layers are not run."""
        out: list[Tensor] = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in layers:
                out.append(x)
                if len(out) == len(layers):
                    return out
        raise ValueError(f"no features.{max(layers)}")


def random_init_(model: MobileNetV2, generator: torch.Generator) -> MobileNetV2:
    """Seeded torchvision-style init: kaiming-normal (fan_out) convs, unit BN, N(0, 0.01) classifier."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
            with torch.no_grad():
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=generator)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            with torch.no_grad():
                m.weight.normal_(0.0, 0.01, generator=generator)
            nn.init.zeros_(m.bias)
    return model


def normalize_imagenet(x01: Tensor) -> Tensor:
    """[0, 1] RGB (clamped) -> ImageNet-normalised input."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x01.dtype, device=x01.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=x01.dtype, device=x01.device)[:, None, None]
    return (x01.clamp(0, 1) - mean) / std
