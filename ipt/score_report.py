"""A score report's outputs: the JSON file, the scores file, the markdown table, the how-it-was-made line, MLflow
logging, samples. What goes where: docs/benchmark_protocol.md (Output)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ipt.metrics import as_chw

TIMING_KEYS = ("seconds_per_image",)  # measured, so new on every run: the table and MLflow (a file: --timings)
SCORE_KEYS = ("images", "images_total", "psnr_y", "ssim_y", "psnr_rgb")


def file_report(report: dict[str, Any], *, timings: bool = False) -> dict[str, Any]:
    """``report`` as ``ipt benchmark --out`` writes it: without the timings unless ``timings``, so the file is the
    same bytes whenever the model, the data, the code and the CPU kind are (a rerun leaves git and dvc.lock clean)."""
    if timings:
        return report
    sets = {n: {k: v for k, v in r.items() if k not in TIMING_KEYS} for n, r in report["datasets"].items()}
    return report | {"datasets": sets}


def scores(report: dict[str, Any]) -> dict[str, dict[str, float | int]]:
    """The numbers alone, per dataset (``{"Set5": {"images": 5, "images_total": 5, "psnr_y": ...}}``): what a DVC
    stage declares as ``metrics``, so ``dvc metrics diff`` shows score changes only. How they were made (hardware,
    versions, model hash, per-image values) stays in the report beside it, a plain output."""
    return {n: {k: r[k] for k in SCORE_KEYS if r.get(k) is not None} for n, r in report["datasets"].items()}


def partial_sets(report: dict[str, Any]) -> dict[str, str]:
    """``{dataset: "10 of 14"}`` for each set the report scored only part of (a ``--limit`` run)."""
    out = {}
    for name, r in report["datasets"].items():
        total = r.get("images_total")
        if total is not None and r["images"] < total:
            out[name] = f"{r['images']} of {total}"
    return out


def comparison_image(lq: np.ndarray | Tensor, output: Tensor, hr: np.ndarray, crop: int = 128) -> np.ndarray:
    """Input (nearest-upscaled to the output size), output and ground truth: the same central crop, side by side."""
    out = as_chw(output).clamp(0, 255).round()
    if out.shape[0] == 1:
        out = out.expand(3, -1, -1)
    H, W = hr.shape[:2]
    x = as_chw(lq).clamp(0, 255).round()
    x = x.expand(3, -1, -1) if x.shape[0] == 1 else x
    s = max(1, out.shape[-1] // x.shape[-1])
    x = x.repeat_interleave(s, dim=1).repeat_interleave(s, dim=2)
    gt = as_chw(hr).expand(3, -1, -1) if hr.ndim == 2 else as_chw(hr)
    c = min(crop, H, W)
    top, left = (H - c) // 2, (W - c) // 2
    tiles = [t[:, top : top + c, left : left + c] for t in (x, out, gt)]
    gap = torch.full((3, c, 4), 255.0, dtype=torch.float64)
    row = torch.cat([tiles[0], gap, tiles[1], gap, tiles[2]], dim=2)
    return row.permute(1, 2, 0).to(torch.uint8).numpy()


def markdown_table(report: dict[str, Any]) -> str:
    """One table: a row per dataset with the means and the time per image."""
    lines = [
        f"**{report['task']}**"
        + (f" on **{report['inputs']}**'s inputs" if report.get("inputs") else "")
        + (f", PTG-RM prior probe `{report['prior_probe']}`" if report.get("prior_probe") else "")
        + f", model `{report['model']}`, protocol `{report['protocol']}`"
        + (f", tiling `{report['tiling']}`" if report.get("tiling") else "")
        + (f", precision `{report['precision']}`" if report.get("precision") else "")
        + (
            f", inputs `{report['corruption']['name']}` {report['corruption']['params']}"
            if "corruption" in report
            else ""
        ),
        "",
        "| Dataset | Images | PSNR-Y (dB) | SSIM-Y | PSNR-RGB (dB) | s/image |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    partial = partial_sets(report)
    for name, r in report["datasets"].items():
        images = partial.get(name, str(r["images"]))
        lines.append(
            f"| {name} | {images} | {r['psnr_y']:.2f} | {r['ssim_y']:.4f} | {r['psnr_rgb']:.2f} "
            f"| {r['seconds_per_image']:.3f} |"
        )
    lines += ["", f"Protocol: {report['protocol_id']}", f"Made with: {how(report)}"]
    if partial:
        lines.append(
            f"Part of the sets only ({', '.join(f'{k}: {v}' for k, v in partial.items())}): not comparable with "
            "full-set scores"
        )
    return "\n".join(lines) + "\n"


def how(report: dict[str, Any]) -> str:
    """One line: how the numbers were made (precision, tiling, device, CPU and its bf16, torch, seed)."""
    hw = report.get("hardware") or {}
    parts = []
    if report.get("precision"):
        parts.append(
            f"precision {report['precision']}"
            + (
                f" ({report['precision_reason']})"
                if report.get("precision_reason") and report["precision_reason"] != "asked for"
                else ""
            )
        )
    if report.get("tiling"):
        parts.append(f"tiling {report['tiling']}")
    parts.append(f"device {report.get('device') or 'cpu'}")
    parts.append(f"CPU {hw.get('cpu_model', '?')} (native bf16: {hw.get('cpu_bf16', '?')})")
    if hw.get("cuda") not in (None, "none"):
        parts.append(f"GPU {hw['cuda']}")
    parts.append(f"torch {hw.get('torch', '?')}")
    if report.get("seed") is not None:
        parts.append(f"seed {report['seed']}")
    return ", ".join(parts)


def log_report(tracker: Any, report: dict[str, Any], samples: dict[str, np.ndarray], json_path: str | None) -> None:
    """Log a report to a tracker: ``<dataset>/psnr_y`` etc., run params, the protocol tag, images and the JSON."""
    task = report["task"]
    metrics = {
        f"{name}/{key}": r[key]
        for name, r in report["datasets"].items()
        for key in ("psnr_y", "ssim_y", "psnr_rgb", "seconds_per_image")
    }
    tracker.log_metrics(metrics)
    hw = report.get("hardware") or {}
    keys = ("task", "inputs", "prior_probe", "model", "protocol", "tiling", "precision", "device")
    params = {f"benchmark.{k}": report.get(k) for k in keys if k not in ("inputs", "prior_probe") or report.get(k)}
    params |= {"benchmark.seed": report.get("seed"), "benchmark.limit": report.get("limit")}
    params |= {f"benchmark.{k}": hw.get(k) for k in ("cpu_model", "cpu_bf16", "torch", "cuda")}
    params |= {
        f"{n}/images": f"{r['images']} of {r.get('images_total', r['images'])}" for n, r in report["datasets"].items()
    }
    tracker.log_params(params)
    tracker.set_tags({"metric_protocol": report["protocol_id"], "benchmark_task": task})
    for name, image in samples.items():
        tracker.log_image(image, f"benchmark/{task}/{name}_input_output_gt.png")
    if json_path:
        tracker.log_artifact(json_path, f"benchmark/{task}")
