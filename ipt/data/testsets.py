"""Benchmark test sets in the layouts users have, paired by file name, loaded into memory for one run.

Layouts and input generation: docs/benchmark_protocol.md#test-data---root.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from corruptions import apply, imresize_uint8, quantize_uint8, sample_generator
from corruptions.gaussian_noise import gaussian_noise
from ipt.config import DEFAULT_SEED
from ipt.data.images import IMAGE_EXTENSIONS, read_image
from ipt.errors import IPTError
from ipt.tasks import TaskError, from_entry, paper_kind

DEFAULT_DATASETS: dict[str, tuple[str, ...]] = {
    "sr": ("Set5", "Set14", "B100", "Urban100"),
    "denoise": ("CBSD68", "McMaster", "Urban100"),
    "derain": ("Rain100L",),
    "custom": ("Set5", "Set14"),  # a user's task: its corruption applied to these clean images
}
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N"})
_MAX_LISTED = 5


class BenchmarkDataError(IPTError):
    """A benchmark folder is missing, empty, unpaired or in an unexpected layout; the message names the folder."""


@dataclass(frozen=True)
class BenchmarkPair:
    name: str
    lq: np.ndarray | Tensor  # uint8 (h, w, 3); float32 (1, 3, H, W) in [0, 255] for denoising
    hr: np.ndarray  # uint8 (H, W, 3), or (H, W) for a single-channel reference


@dataclass
class BenchmarkSet:
    name: str
    task: str
    scale: int
    folder: Path
    layout: str
    pairs: list[BenchmarkPair]
    notes: list[str] = field(default_factory=list)
    corruption: dict[str, Any] | None = None  # custom tasks: name, params, scale, seed of the inputs made here
    total: int | None = None  # images the set holds (``pairs`` may be the first ``limit`` of them)

    def __post_init__(self) -> None:
        if self.total is None:
            self.total = len(self.pairs)


def task_kind(task: str, corruption: Mapping[str, Any] | None = None) -> tuple[str, float]:
    """``sr_x4`` -> ("sr", 4); ``denoise_s30`` -> ("denoise", 30.0); ``derain`` -> ("derain", 1); any other task
    with a ``corruption`` spec (``{"name": ..., **params}``) -> ("custom", the scale its corruption implies)."""
    kind = paper_kind(task)
    if kind is not None:
        return kind
    if corruption is not None:
        return "custom", check_corruption(task, corruption)[2]
    raise BenchmarkDataError(
        f"unknown task {task!r}: expected sr_xN, denoise_sNN or derain, or a corruption spec for it "
        f"(its corrupt.tasks entry in params.yaml)"
    )


def input_scale(task: str, corruption: Mapping[str, Any] | None = None) -> int:
    """How many times ``task``'s model upsamples its test inputs: N for ``sr_xN`` and a custom task whose corruption
    downscales by N, else 1 (denoising, deraining, a custom corruption at full size)."""
    kind, param = task_kind(task, corruption)
    return int(param) if kind in ("sr", "custom") else 1


def resolve_datasets(
    root: Path, task: str, requested: Iterable[str] | None = None, corruption: Mapping[str, Any] | None = None
) -> tuple[list[str], list[str]]:
    """Dataset names to run and notes. Absent defaults are skipped with a note; an absent requested set is an error."""
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkDataError(f"{root}: benchmark root folder not found")
    kind, _ = task_kind(task, corruption)
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if requested:
        names = list(requested)
        for n in names:
            if not (root / n).is_dir():
                raise BenchmarkDataError(f"{root}: unknown dataset {n!r}: no folder {root / n}; found {present}")
        return names, []
    names, notes = [], []
    for n in DEFAULT_DATASETS[kind]:
        if (root / n).is_dir():
            names.append(n)
        else:
            notes.append(f"skipping default dataset {n} for {task}: not found under {root}")
    if not names:
        raise BenchmarkDataError(f"{root}: none of the default {task} datasets {list(DEFAULT_DATASETS[kind])} found")
    return names, notes


def load_benchmark(
    root: Path,
    name: str,
    task: str,
    *,
    seed: int = DEFAULT_SEED,
    limit: int | None = None,
    corruption: Mapping[str, Any] | None = None,
) -> BenchmarkSet:
    """Load dataset ``name`` under ``root`` for ``task``; ``limit`` keeps the first N images by name.

    ``corruption`` (``{"name": ..., **params}``, the task's ``corrupt.tasks`` entry) is used for tasks other than
    sr_xN / denoise_sNN / derain, whose inputs are made from the clean images here."""
    folder = Path(root) / name
    if not folder.is_dir():
        raise BenchmarkDataError(f"{folder}: dataset folder not found")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    kind, param = task_kind(task, corruption)
    if kind == "sr":
        return _load_sr(folder, task, int(param), limit)
    if kind == "denoise":
        return _load_denoise(folder, task, param, seed, limit)
    if kind == "custom":
        return _load_custom(folder, task, corruption, seed, limit)
    return _load_derain(folder, task, limit)


# ------------------------------------------------------------------------------------------------ helpers


def _images(folder: Path) -> dict[str, Path]:
    """Image files directly in ``folder`` keyed by stem (a stem present twice is an error)."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
            if p.stem in out:
                raise BenchmarkDataError(f"{folder}: two images named {p.stem!r} ({out[p.stem].name}, {p.name})")
            out[p.stem] = p
    return out


def _require(folder: Path, files: dict[str, Path], expected: str) -> None:
    if not files:
        raise BenchmarkDataError(f"{folder}: no images found; expected {expected}")


def _listed(names: Iterable[str]) -> str:
    names = sorted(names)
    more = f" (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


def _check_paired(a_dir: Path, a: Iterable[str], b_dir: Path, b: Iterable[str], a_fmt: str, b_fmt: str) -> None:
    """Keys of ``a`` and ``b`` must match; the error lists up to 5 names from each side, in that side's naming."""
    only_a, only_b = set(a) - set(b), set(b) - set(a)
    if not only_a and not only_b:
        return
    parts = []
    if only_a:
        parts.append(f"{len(only_a)} in {a_dir} without a match in {b_dir}: {_listed(a_fmt.format(k) for k in only_a)}")
    if only_b:
        parts.append(f"{len(only_b)} in {b_dir} without a match in {a_dir}: {_listed(b_fmt.format(k) for k in only_b)}")
    raise BenchmarkDataError("unmatched pairs: " + "; ".join(parts))


def _read(path: Path) -> tuple[np.ndarray, bool]:
    """(H, W, 3) uint8 RGB and whether the file is single-channel."""
    rgb, _notes = read_image(path)  # an ImageReadError naming the file when it cannot be decoded
    with Image.open(path) as im:
        gray = im.mode in GRAY_MODES
    return rgb, gray


def _reference(rgb: np.ndarray, gray: bool) -> np.ndarray:
    return np.ascontiguousarray(rgb[..., 0]) if gray else rgb


def _keys(files: dict[str, Path], limit: int | None) -> list[str]:
    keys = sorted(files)
    return keys[:limit] if limit else keys


# ------------------------------------------------------------------------------------------------ SR


def _load_sr(folder: Path, task: str, s: int, limit: int | None) -> BenchmarkSet:
    hr_dir, lr_dir = folder / "HR", folder / "LR_bicubic" / f"X{s}"
    layout = f"EDSR: HR/<name>.png + LR_bicubic/X{s}/<name>x{s}.png"
    if not hr_dir.is_dir():
        hint = " (images are directly in the folder: move them into HR/)" if _images(folder) else ""
        raise BenchmarkDataError(f"{folder}: no HR/ folder; expected the {layout} layout{hint}")
    hrs = _images(hr_dir)
    _require(hr_dir, hrs, "HR/<name>.png (any Pillow format)")
    notes: list[str] = []
    if lr_dir.is_dir():
        lr_files = _images(lr_dir)
        _require(lr_dir, lr_files, f"<name>x{s}.png files")
        suffix = f"x{s}"
        lrs = {k[: -len(suffix)] if k.endswith(suffix) else k: p for k, p in lr_files.items()}
        _check_paired(hr_dir, hrs, lr_dir, lrs, "{}", "{}" + suffix)
    else:
        lrs = {}
        notes.append(
            f"{folder}: no LR_bicubic/X{s}; LR made with the MATLAB-compatible bicubic from HR mod-cropped to {s} "
            "(in memory, not written)"
        )
    pairs = []
    for k in _keys(hrs, limit):
        hr, gray = _read(hrs[k])
        H, W = hr.shape[:2]
        if k in lrs:
            lr, _ = _read(lrs[k])
            h, w = lr.shape[:2]
            if h not in (H // s, -(-H // s)) or w not in (W // s, -(-W // s)):
                raise BenchmarkDataError(
                    f"{lr_dir}: {lrs[k].name} is {h}x{w} (HxW) but {hr_dir / hrs[k].name} is {H}x{W}: "
                    f"expected {H // s}x{W // s} (HR / {s}, from HR mod-cropped to {s})"
                )
        else:
            lr = imresize_uint8(np.ascontiguousarray(hr[: H - H % s, : W - W % s]), 1.0 / s)
        ref = hr[: min(H, lr.shape[0] * s), : min(W, lr.shape[1] * s)]
        pairs.append(BenchmarkPair(k, lr, _reference(np.ascontiguousarray(ref), gray)))
    return BenchmarkSet(folder.name, task, s, folder, layout, pairs, notes, total=len(hrs))


# ------------------------------------------------------------------------------------------------ denoise


def noisy_input(clean: np.ndarray, *, sigma: float, seed: int, task: str, name: str) -> Tensor:
    """(1, 3, H, W) float32 in [0, 255]: clean + N(0, sigma^2), clamped, not quantized; deterministic per name."""
    x = torch.from_numpy(np.ascontiguousarray(clean)).permute(2, 0, 1)[None].float() / 255.0
    return gaussian_noise(x, generator=sample_generator(seed, task, name), sigma=sigma) * 255.0


def _clean_images(folder: Path) -> tuple[Path, dict[str, Path]]:
    """The clean images of a flat set: ``folder/HR/`` if it exists, else ``folder`` itself (never empty)."""
    hr_dir = folder / "HR"
    src = hr_dir if hr_dir.is_dir() else folder
    clean = _images(src)
    _require(src, clean, f"clean images in {folder}/HR/ or directly in {folder}/")
    return src, clean


def _load_denoise(folder: Path, task: str, sigma: float, seed: int, limit: int | None) -> BenchmarkSet:
    src, clean = _clean_images(folder)
    pairs = []
    for k in _keys(clean, limit):
        rgb, gray = _read(clean[k])
        noisy = noisy_input(rgb, sigma=sigma, seed=seed, task=task, name=k)
        pairs.append(BenchmarkPair(k, noisy, _reference(rgb, gray)))
    layout = "HR/<name>.png" if src != folder else "<name>.png"
    note = f"{folder.name}: noisy inputs from seed {seed} (gaussian_noise, sigma {sigma:g}, sample_generator per name)"
    return BenchmarkSet(folder.name, task, 1, folder, layout, pairs, [note], total=len(clean))


# ------------------------------------------------------------------------------------------------ derain


def _load_derain(folder: Path, task: str, limit: int | None) -> BenchmarkSet:
    rainy_dir = folder / "rainy"
    expected = "rainy/rain-N.png with clean norain-N.png beside rainy/ (PReNet layout) or in norain/"
    if not rainy_dir.is_dir():
        raise BenchmarkDataError(f"{folder}: no rainy/ folder; expected {expected}")
    rainy = {k: p for k, p in _images(rainy_dir).items() if k.startswith("rain")}
    _require(rainy_dir, rainy, "rain-N.png files (names starting with 'rain')")
    clean_dir = folder / "norain" if (folder / "norain").is_dir() else folder
    clean = {k[2:]: p for k, p in _images(clean_dir).items() if k.startswith("norain")}
    _require(clean_dir, clean, f"clean norain-N.png files ({expected})")
    _check_paired(rainy_dir, rainy, clean_dir, clean, "{}", "no{}")
    pairs = []
    for k in _keys(rainy, limit):
        lq, _ = _read(rainy[k])
        rgb, gray = _read(clean[k])
        if lq.shape != rgb.shape:
            raise BenchmarkDataError(
                f"{rainy_dir}: {rainy[k].name} is {lq.shape[0]}x{lq.shape[1]} but {clean[k]} is "
                f"{rgb.shape[0]}x{rgb.shape[1]} (HxW): a pair must have the same size"
            )
        pairs.append(BenchmarkPair(k, lq, _reference(rgb, gray)))
    layout = "rainy/rain-N + " + ("norain/norain-N" if clean_dir != folder else "norain-N beside rainy/")
    return BenchmarkSet(folder.name, task, 1, folder, layout, pairs, total=len(rainy))


# ------------------------------------------------------------------------------------------------ custom tasks


def check_corruption(task: str, corruption: Mapping[str, Any]) -> tuple[str, dict[str, Any], int]:
    """(registry name, params, scale) of a ``{"name": ..., **params}`` spec; errors name the task's entry."""
    where = f"corruption spec of task {task!r} (corrupt.tasks.{task})"
    if not isinstance(corruption, Mapping) or not isinstance(corruption.get("name"), str):
        raise BenchmarkDataError(
            f"{where}: expected a mapping with a 'name' (a registered corruption), got {corruption!r}"
        )
    try:
        spec = from_entry(task, corruption)  # checked as the corrupt stage checks it; the scale from its out_size
    except TaskError as e:
        raise BenchmarkDataError(f"{where}: {str(e).split(': ', 1)[-1]}") from None
    return spec.corruption, dict(spec.params), spec.scale


def corrupted_input(clean: np.ndarray, *, corruption: Mapping[str, Any], seed: int, task: str, name: str) -> np.ndarray:
    """uint8 (h, w, 3): ``clean`` (uint8 (H, W, 3)) corrupted exactly as the corrupt stage makes a training LQ:
    generator ``sample_generator(seed, task, name)``, then ``quantize_uint8``."""
    fn_name, params, _ = check_corruption(task, corruption)
    x = torch.from_numpy(np.ascontiguousarray(clean)).permute(2, 0, 1)[None].float() / 255.0
    lq = quantize_uint8(apply(fn_name, x, generator=sample_generator(seed, task, name), **params))
    return np.ascontiguousarray(lq[0].permute(1, 2, 0).numpy())


def _load_custom(folder: Path, task: str, corruption: Mapping[str, Any], seed: int, limit: int | None) -> BenchmarkSet:
    fn_name, params, s = check_corruption(task, corruption)
    src, clean = _clean_images(folder)
    pairs = []
    for k in _keys(clean, limit):
        rgb, gray = _read(clean[k])
        H, W = rgb.shape[0] - rgb.shape[0] % s, rgb.shape[1] - rgb.shape[1] % s
        if H == 0 or W == 0:
            raise BenchmarkDataError(f"{src}: {clean[k].name} is smaller than the task's scale {s}")
        hr = np.ascontiguousarray(rgb[:H, :W])
        lq = corrupted_input(hr, corruption=corruption, seed=seed, task=task, name=k)
        if lq.shape[:2] != (H // s, W // s):
            raise BenchmarkDataError(
                f"task {task}: {fn_name} {params} maps {clean[k].name} ({H}x{W}) to {lq.shape[0]}x{lq.shape[1]}, "
                f"not {H // s}x{W // s} (scale {s} of the spec)"
            )
        pairs.append(BenchmarkPair(k, lq, _reference(hr, gray)))
    layout = "HR/<name>.png" if src != folder else "<name>.png"
    spec = {"name": fn_name, "params": params, "scale": s, "seed": seed}
    note = (
        f"{folder.name}: {task} inputs made in memory from the clean images: {fn_name} {params}, seed {seed} "
        "(sample_generator per name), quantized to uint8 as the corrupt stage"
    )
    return BenchmarkSet(folder.name, task, s, folder, layout, pairs, [note], spec, total=len(clean))
