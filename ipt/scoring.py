"""The scoring runner: a restore callable over test sets -> per-image and mean metrics (no tracker imported here)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from corruptions import imresize_uint8
from ipt.config import DEFAULT_SEED, ConfigError
from ipt.data.testsets import BenchmarkDataError, BenchmarkSet, check_corruption, input_scale, task_kind
from ipt.device import PRECISIONS
from ipt.errors import IPTError
from ipt.fileio import file_sha256
from ipt.inference import TILINGS
from ipt.metrics import PROTOCOLS, as_chw, check_protocol, crop_border_for, score
from ipt.modeluri import MODEL_URI_PREFIX
from ipt.tasks import BASELINES  # noqa: F401 (re-exported: the names --model takes besides weights)

RestoreFn = Callable[[np.ndarray | Tensor], np.ndarray | Tensor]
OnResult = Callable[[str, dict[str, Any]], None]
OnOutput = Callable[[str, Any, Tensor], None]

# Published reference rows (PSNR dB / SSIM, Y channel, border crop = scale) the baselines are checked against.
# Bicubic: the rows the SR literature tabulates (VDSR, EDSR, RCAN, the IPT paper). Input: the IPT paper's Table 3
# "Input" column for Rain100L (IPT_REFERENCE 6.3).
PUBLISHED_BICUBIC: dict[tuple[str, int], tuple[float, float]] = {
    ("Set5", 2): (33.66, 0.9299),
    ("Set5", 3): (30.39, 0.8682),
    ("Set5", 4): (28.42, 0.8104),
    ("Set14", 2): (30.24, 0.8688),
    ("Set14", 3): (27.55, 0.7742),
    ("Set14", 4): (26.00, 0.7027),
    ("B100", 2): (29.56, 0.8431),
    ("B100", 3): (27.21, 0.7385),
    ("B100", 4): (25.96, 0.6675),
    ("Urban100", 2): (26.88, 0.8403),
    ("Urban100", 3): (24.46, 0.7349),
    ("Urban100", 4): (23.14, 0.6577),
}
PUBLISHED_INPUT: dict[tuple[str, str], tuple[float, float]] = {("derain", "Rain100L"): (26.90, 0.8384)}


@dataclass(frozen=True)
class BenchmarkConfig:
    """What one scoring run is: the model, the sets and the protocol. Built once (``ipt benchmark`` builds it from its
    flags and the params file's ``benchmark`` section) and checked here, whoever builds it."""

    task: str
    model: str
    root: str
    datasets: tuple[str, ...] | None = None  # None: the task's standard sets that are present
    protocol: str = "ipt"
    tiling: str = "official"
    precision: str = "fp32"
    device: str = "auto"
    batch: int = 64
    num_heads: int = 12
    seed: int = DEFAULT_SEED
    limit: int | None = None  # images per set (the first N by name); None: all

    def __post_init__(self) -> None:
        checks = [
            (self.protocol in PROTOCOLS, f"protocol {self.protocol!r} is not one of {sorted(PROTOCOLS)}"),
            (self.tiling in TILINGS, f"tiling {self.tiling!r} is not one of {list(TILINGS)}"),
            (self.precision in PRECISIONS, f"precision {self.precision!r} is not one of {list(PRECISIONS)}"),
            (isinstance(self.batch, int) and self.batch >= 1, f"batch must be a positive integer, not {self.batch!r}"),
            (
                isinstance(self.num_heads, int) and self.num_heads >= 1,
                f"num_heads must be >= 1, not {self.num_heads!r}",
            ),
            (isinstance(self.seed, int), f"seed must be an integer, not {self.seed!r}"),
            (
                self.limit is None or (isinstance(self.limit, int) and self.limit >= 1),
                f"limit must be >= 1 or None, not {self.limit!r}",
            ),
            (bool(self.task), "task is empty"),
            (bool(self.model), "model is empty"),
            (bool(self.root), "root is empty"),
            (
                self.datasets is None or (len(self.datasets) > 0 and all(self.datasets)),
                f"datasets {self.datasets!r} is empty",
            ),
        ]
        bad = [why for ok, why in checks if not ok]
        if bad:
            raise ConfigError(f"benchmark: {'; '.join(bad)}")

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> BenchmarkConfig:
        """From a mapping holding (at least) the fields (an argparse namespace's ``vars``): ``datasets`` as a comma
        list or a sequence, ``limit`` 0 meaning all, everything else as the field."""
        v = {f.name: values[f.name] for f in fields(cls) if values.get(f.name) is not None}
        if isinstance(v.get("datasets"), str):
            v["datasets"] = tuple(d.strip() for d in v["datasets"].split(",") if d.strip()) or None
        elif v.get("datasets") is not None:
            v["datasets"] = tuple(v["datasets"])
        if v.get("limit") == 0:
            v["limit"] = None
        for key in ("task", "model", "root"):
            if key not in v:
                raise ConfigError(f"benchmark: {key} is not set")
        return cls(**{k: str(x) if k in ("model", "root") else x for k, x in v.items()})


class BenchmarkModelError(IPTError):
    """The ``--model`` argument cannot be turned into a restore function for the task."""


def _shape(x: np.ndarray | Tensor) -> tuple[int, int]:
    return tuple(x.shape[:2]) if isinstance(x, np.ndarray) else tuple(x.shape[-2:])


def evaluate(
    restore_fn: RestoreFn,
    dataset: BenchmarkSet,
    *,
    scale: int,
    protocol: str = "ipt",
    on_result: OnResult | None = None,
    on_output: OnOutput | None = None,
) -> dict[str, Any]:
    """Restore and score every pair of ``dataset``; return the means and the per-image values.

    ``lq`` is a uint8 (h, w, 3) array, or a float32 (1, 3, H, W) tensor on 0..255 for denoising; the output may be
    an (H, W, 3) array or a (1, 3, H, W) / (3, H, W) tensor on 0..255, unclamped: it is quantized
    (``clamp(0, 255).round()``) before scoring, as in the official evaluation.
    ``scale`` is the output/input size ratio (the crop border is ``scale`` for SR, 0 for x1). ``on_result`` is called
    as ``on_result(dataset.name, record)`` after each image (record = name + metrics + seconds); ``on_output`` as
    ``on_output(dataset.name, pair, output)`` with the (C, H, W) float64 output, e.g. to keep sample images.
    """
    check_protocol(protocol)
    border = crop_border_for(scale)
    per_image: list[dict[str, Any]] = []
    seconds = 0.0
    if hasattr(restore_fn, "begin_set"):
        restore_fn.begin_set([pair.lq for pair in dataset.pairs])
    for pair in dataset.pairs:
        t0 = time.perf_counter()
        h, w = _shape(pair.lq)
        try:  # an image too small for the tiling or for the crop border: name it
            out = restore_fn(pair.lq)
            dt = time.perf_counter() - t0
            sr = as_chw(out)
            if tuple(sr.shape[-2:]) != (h * scale, w * scale):
                got, want = tuple(sr.shape[-2:]), (h * scale, w * scale)
                raise ValueError(f"output is {got} for a {h}x{w} input at x{scale}; expected {want}")
            H, W = pair.hr.shape[:2]
            record = {"name": pair.name, **score(sr[:, :H, :W], pair.hr, crop_border=border, protocol=protocol)}
        except ValueError as e:  # the inference's own (too small for the tiling), a wrong output size
            raise BenchmarkDataError(f"{dataset.name}/{pair.name} in {dataset.folder} ({h}x{w} input): {e}") from None
        seconds += dt
        per_image.append(record)
        if on_output is not None:
            on_output(dataset.name, pair, sr)
        if on_result is not None:
            on_result(dataset.name, {**record, "seconds": dt})
    n = len(per_image)
    if n == 0:
        raise ValueError(f"{dataset.folder}: no images to evaluate")
    return {
        "images": n,
        **{k: statistics.fmean(r[k] for r in per_image) for k in ("psnr_y", "ssim_y", "psnr_rgb")},
        "seconds_per_image": seconds / n,
        "per_image": per_image,
    }


# ------------------------------------------------------------------------------------------------ restore functions


def bicubic_fn(scale: int) -> RestoreFn:
    """The SR baseline: MATLAB-compatible bicubic upscaling of the uint8 LR by ``scale``."""

    def fn(lq: np.ndarray | Tensor) -> np.ndarray:
        if not isinstance(lq, np.ndarray) or lq.dtype != np.uint8:
            raise TypeError("the bicubic baseline takes uint8 (h, w, 3) LR images")
        return imresize_uint8(lq, float(scale))

    return fn


def identity_fn(lq: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """The x1 baseline: the degraded input itself (quantized by the evaluation, like any output)."""
    return lq


def restorer_fn(restorer: Any) -> RestoreFn:
    """Wrap an :class:`ipt.restore.Restorer`: float input goes in unquantized, the output comes back unclamped."""

    def tensor(lq: np.ndarray | Tensor) -> Tensor:
        x = torch.from_numpy(np.ascontiguousarray(lq)).permute(2, 0, 1)[None] if isinstance(lq, np.ndarray) else lq
        return x.float()

    def fn(lq: np.ndarray | Tensor) -> Tensor:
        return restorer.restore_tensor(tensor(lq))

    if hasattr(restorer, "begin_set"):  # a refiner: its prior probe may need the set's images before the first
        fn.begin_set = lambda inputs: restorer.begin_set([tensor(lq) for lq in inputs])  # type: ignore[attr-defined]
    return fn


def make_restore_fn(
    model: str,
    task: str,
    *,
    tiling: str = "overlap",
    precision: str = "auto",
    device: str = "auto",
    batch: int = 64,
    num_heads: int = 12,
    tracking_uri: str | None = None,
    corruption: Mapping[str, Any] | None = None,
    prior_probe: str = "own",
) -> tuple[RestoreFn, dict[str, Any]]:
    """``bicubic`` | ``identity`` | ``baseline`` (the one that fits the task) | a weights path | a ``models:/`` URI
    -> (restore function, run info: how the model ran, from :func:`ipt.restore.open_restorer`). ``corruption``: a
    custom task's spec (its scale decides the baseline: bicubic above 1, the degraded input at 1). ``prior_probe``
    ``zero`` runs a PTG-RM refiner with its prior's output set to zero (a refiner only)."""
    kind, param = task_kind(task, corruption)
    upscales = kind == "sr" or (kind == "custom" and param > 1)
    if model == "baseline":
        model = "bicubic" if upscales else "identity"
    if model == "bicubic":
        if not upscales:
            raise BenchmarkModelError(f"the bicubic baseline is for sr_xN tasks, not {task!r}; use --model identity")
        return bicubic_fn(int(param)), {"tiling": None, "precision": None}
    if model == "identity":
        if upscales:
            raise BenchmarkModelError(f"the identity baseline is for x1 tasks, not {task!r}; use --model bicubic")
        return identity_fn, {"tiling": None, "precision": None}
    from ipt.restore import open_restorer

    runner = open_restorer(
        model,
        task,
        tiling=tiling,
        batch=batch,
        device=device,
        precision=precision,
        num_heads=num_heads,
        tracking_uri=tracking_uri,
    )
    if prior_probe != "own":
        if not hasattr(runner, "prior_probe"):
            raise BenchmarkModelError(f"{model}: not a PTG-RM refiner; the prior probe ({prior_probe}) needs one")
        runner.prior_probe = prior_probe
    local = model
    if model.startswith(MODEL_URI_PREFIX):
        from ipt.modeluri import resolve_model_uri

        local = str(resolve_model_uri(model, tracking_uri))  # cached: the file open_restorer read
    info = runner.describe() | {"model_sha256": file_sha256(local), "notes": list(runner.notes)}
    return restorer_fn(runner), info


def run_benchmark(
    restore_fn: RestoreFn,
    datasets: list[BenchmarkSet],
    *,
    task: str,
    model: str,
    protocol: str,
    info: dict[str, Any],
    hardware: dict[str, str],
    on_result: OnResult | None = None,
    on_output: OnOutput | None = None,
    corruption: Mapping[str, Any] | None = None,
    seed: int | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """The full report: run metadata, the protocol id and one :func:`evaluate` block per dataset. A custom task
    (``corruption`` given) also records the corruption that made its inputs (name, params, scale, seed).

    ``model_sha256`` (from ``info``; None for a baseline) says which weights were scored, so ``ipt register`` can
    check the report against a checkpoint; ``seed`` (the denoising noise seed) and ``limit`` (images per set, None
    for all) say what was scored."""
    kind, _ = task_kind(task, corruption)
    scale = input_scale(task, corruption)
    report: dict[str, Any] = {
        "task": task,
        "model": model,
        "protocol": protocol,
        "protocol_id": PROTOCOLS[check_protocol(protocol)],
        "model_sha256": info.get("model_sha256"),
        "tiling": info.get("tiling"),
        "precision": info.get("precision"),
        "precision_reason": info.get("precision_reason"),
        "device": info.get("device", "cpu"),
        "seed": seed,
        "limit": limit,
        "hardware": hardware,
    }
    if info.get("refiner"):
        report["refiner"] = info["refiner"]
    if kind == "custom":
        name, params, _ = check_corruption(task, corruption)
        report["corruption"] = next((d.corruption for d in datasets if d.corruption), {"name": name, "params": params})
    report["datasets"] = {}
    for d in datasets:
        block = evaluate(restore_fn, d, scale=scale, protocol=protocol, on_result=on_result, on_output=on_output)
        report["datasets"][d.name] = {"images": block["images"], "images_total": d.total} | block
    return report
