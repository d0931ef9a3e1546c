"""Whole-image inference with a window model (pure torch, no I/O): the ``official`` and ``overlap`` tilings.

Design notes: docs/design.md#iptinferencepy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

WindowFn = Callable[[Tensor], Tensor]
TILINGS = ("overlap", "official")


def run_windows(window_fn: WindowFn, windows: Tensor, batch: int) -> Tensor:
    """Evaluate ``window_fn`` on ``windows`` in chunks of ``batch``."""
    return torch.cat([window_fn(windows[i : i + batch]) for i in range(0, windows.shape[0], batch)], dim=0)


def default_overlap(patch: int) -> int:
    """The overlap tiling's default overlap: a quarter of the window (12 LR px for the paper's 48-px windows).

    Less saves windows (Set5 x2: 112 at 12 px, 89 at 6) but costs more than 0.02 dB on some sets with trained
    weights (docs/BENCHMARKS.md#window-placement-and-overlap-on-trained-weights)."""
    return patch // 4


def window_starts(length: int, patch: int, overlap: int) -> list[int]:
    """Starts of the fewest ``patch``-px windows covering [0, length) with neighbours overlapping by >= ``overlap``
    px, spread evenly: the first flush with 0, the last with the end, every overlap within a pixel of the others.

    (A regular grid plus one window flush with the end, as before, leaves one thin last overlap where seams show:
    docs/BENCHMARKS.md#window-placement-and-overlap-on-trained-weights.)"""
    if not 0 <= overlap < patch:
        raise ValueError(f"overlap must be in [0, {patch}), got {overlap}")
    if length <= patch:
        return [0]
    span, step = length - patch, patch - overlap
    gaps = -(-span // step)  # ceil: gaps of at most ``step``
    return [(i * span + gaps // 2) // gaps for i in range(gaps + 1)]


# ----------------------------------------------------------------------------------------------------------------
# Official forward_chop
# ----------------------------------------------------------------------------------------------------------------


def _fold_mean(tiles: Tensor, out_hw: tuple[int, int], stride: int) -> Tensor:
    """Average (n, C, th, tw) tiles laid row-major on a regular grid of the given stride into (C, *out_hw)."""
    n, c, th, tw = tiles.shape
    cols = tiles.reshape(n, c * th * tw).t().unsqueeze(0)
    total = F.fold(cols, out_hw, (th, tw), stride=stride)
    ones = F.fold(torch.ones_like(cols[:, :1].expand(1, th * tw, n)), out_hw, (th, tw), stride=stride)
    return (total / ones)[0]


def _strip(tiles: Tensor, length: int, axis: int, patch: int, stride: int, margin: int) -> Tensor:
    """1-D blend of windows along ``axis`` (3 = columns, 2 = rows) over ``length`` output pixels (HR units).

    Pixels covered by one window take it; elsewhere the mean of the windows' central parts (``margin`` px trimmed
    on both sides along the axis) that cover them; the outer ``margin`` px come from the first/last window.
    """
    n, c = tiles.shape[:2]
    out = (
        torch.empty(c, patch, length, dtype=tiles.dtype, device=tiles.device)
        if axis == 3
        else torch.empty(c, length, patch, dtype=tiles.dtype, device=tiles.device)
    )
    t = tiles if axis == 3 else tiles.transpose(2, 3)
    o = out if axis == 3 else out.transpose(1, 2)
    o[..., :margin] = t[0, ..., :margin]
    o[..., length - margin :] = t[-1, ..., patch - margin :]
    o[..., margin : length - margin] = _fold_mean(t[..., margin : patch - margin], (patch, length - 2 * margin), stride)
    return out


def forward_chop_official(window_fn: WindowFn, x: Tensor, scale: int, patch: int = 48, batch: int = 64) -> Tensor:
    """Exact re-implementation of the released ``forward_chop`` for one image ``x`` (1, C, H, W), H, W >= patch."""
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"official tiling takes one image (1, C, H, W), got {tuple(x.shape)}")
    _, c, h, w = x.shape
    if h < patch or w < patch:
        raise ValueError(f"official tiling needs H, W >= {patch} (got {h}x{w}); use the default 'overlap' tiling")
    step = patch // 4  # 12 for 48-px windows: the official stride (shave / 2)
    hc, wc = (h - patch) % step, (w - patch) % step
    hp, wp = h - hc, w - wc
    rows, cols = list(range(0, hp - patch + 1, step)), list(range(0, wp - patch + 1, step))
    coords = {(r, cc) for r in rows for cc in cols}
    coords |= {(h - patch, cc) for cc in cols} | {(r, w - patch) for r in rows} | {(h - patch, w - patch)}
    order = sorted(coords)
    windows = torch.stack([x[0, :, r : r + patch, cc : cc + patch] for r, cc in order])
    out = run_windows(window_fn, windows, batch)
    tile = dict(zip(order, out, strict=True))

    P, S, M = patch * scale, step * scale, step * scale  # HR window, HR stride, HR margin (= stride)
    grid = torch.stack([tile[(r, cc)] for r in rows for cc in cols])
    canvas = torch.zeros(c, hp * scale, wp * scale, dtype=out.dtype, device=out.device)
    canvas[:, :P, :] = _strip(torch.stack([tile[(0, cc)] for cc in cols]), wp * scale, 3, P, S, M)
    canvas[:, :, :P] = _strip(torch.stack([tile[(r, 0)] for r in rows]), hp * scale, 2, P, S, M)
    inner = _fold_mean(grid[..., M : P - M, M : P - M], ((hp - 2 * step) * scale, (wp - 2 * step) * scale), S)
    canvas[:, M : hp * scale - M, M : wp * scale - M] = inner
    bottom = _strip(torch.stack([tile[(h - patch, cc)] for cc in cols]), wp * scale, 3, P, S, M)
    right = _strip(torch.stack([tile[(r, w - patch)] for r in rows]), hp * scale, 2, P, S, M)
    corner = tile[(h - patch, w - patch)]

    # Split points exactly as the official concatenation (int() truncation on one side, +0.5 on the other).
    a_h, b_h = int((patch - hc) / 2 * scale), int((patch - hc) / 2 * scale + 0.5)
    a_w, b_w = int((patch - wc) / 2 * scale), int((patch - wc) / 2 * scale + 0.5)
    left_col = torch.cat([canvas[:, : hp * scale - a_h], bottom[:, b_h:]], dim=1)
    right_col = torch.cat([right[:, : hp * scale - a_h], corner[:, b_h:]], dim=1)
    return torch.cat([left_col[..., : wp * scale - a_w], right_col[..., b_w:]], dim=2).unsqueeze(0)


# ----------------------------------------------------------------------------------------------------------------
# Default tiling: each window once, batched, feathered blend, any image size
# ----------------------------------------------------------------------------------------------------------------


def _ramp(n: int, margin: int) -> Tensor:
    """Weights rising linearly over ``margin`` px at both ends of an ``n``-px window (strictly positive)."""
    if margin <= 0:
        return torch.ones(n)
    i = torch.arange(n, dtype=torch.float64)
    r = torch.minimum(i + 0.5, n - i - 0.5) / margin
    return r.clamp(max=1.0).float()


def _pad_to(x: Tensor, patch: int) -> tuple[Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = max(0, patch - h), max(0, patch - w)
    if ph == 0 and pw == 0:
        return x, h, w
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), h, w


def forward_tiled(
    window_fn: WindowFn, x: Tensor, scale: int, patch: int = 48, overlap: int | None = None, batch: int = 64
) -> Tensor:
    """Restore (B, C, H, W) images of any size with overlapping ``patch`` windows, each computed once.

    Windows are cut and evaluated ``batch`` at a time and each output is blended into the canvas as it comes, so
    memory holds the input, the canvas and one batch: it grows with the image, not with its window count."""
    if overlap is None:
        overlap = default_overlap(patch)
    xp, h, w = _pad_to(x, patch)
    b, c, hh, ww = xp.shape
    rows, cols = window_starts(hh, patch, overlap), window_starts(ww, patch, overlap)  # (they check the overlap)
    coords = [(i, r, cc) for i in range(b) for r in rows for cc in cols]
    P = patch * scale
    ramp = _ramp(P, overlap * scale)
    acc = norm = weight = None
    for k in range(0, len(coords), batch):
        chunk = coords[k : k + batch]
        out = window_fn(torch.stack([xp[i, :, r : r + patch, cc : cc + patch] for i, r, cc in chunk]))
        if acc is None:
            weight = (ramp[:, None] * ramp[None, :]).to(device=out.device, dtype=out.dtype)
            acc = torch.zeros(b, out.shape[1], hh * scale, ww * scale, dtype=out.dtype, device=out.device)
        for (i, r, cc), o in zip(chunk, out, strict=True):
            acc[i, :, r * scale : r * scale + P, cc * scale : cc * scale + P] += o * weight
        del out
    norm = torch.zeros(hh * scale, ww * scale, dtype=acc.dtype, device=acc.device)
    for r in rows:
        for cc in cols:
            norm[r * scale : r * scale + P, cc * scale : cc * scale + P] += weight
    return acc.div_(norm)[:, :, : h * scale, : w * scale]  # in place: the canvas becomes the output


def restore_image(
    window_fn: WindowFn,
    x: Tensor,
    scale: int,
    *,
    tiling: str = "overlap",
    patch: int = 48,
    overlap: int | None = None,
    batch: int = 64,
) -> Tensor:
    """Dispatch to a tiling by name. ``x`` is (1, C, H, W) in the model's range; output is unclamped.

    ``overlap=None`` uses :func:`default_overlap` (12 LR pixels for the paper's 48-pixel windows)."""
    if tiling == "official":
        return forward_chop_official(window_fn, x, scale, patch=patch, batch=batch)
    if tiling == "overlap":
        return forward_tiled(window_fn, x, scale, patch=patch, overlap=overlap, batch=batch)
    raise ValueError(f"unknown tiling {tiling!r}; known: {list(TILINGS)}")


def quantize(x: Tensor, rgb_range: int = 255) -> Tensor:
    """The official evaluation's ``clamp(0, rgb_range).round()``."""
    return x.clamp(0, rgb_range).round()
