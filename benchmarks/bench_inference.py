"""Inference speed of the paper-size IPT (random weights) on this machine.

Measures (1) one forward of a batch of 48x48 windows in fp32 and in bf16 autocast, with the output difference
between the two, and (2) a 256x256 x2 restore with the official tiling and with the default overlap tiling.
bf16 is timed on one small batch only when the CPU has no native bf16 (AVX2 emulates it 10-100x slower).

    python benchmarks/bench_inference.py --out docs/BENCHMARKS.md                          # section bench_inference
    python benchmarks/bench_inference.py --device cuda --batch 64 --out docs/BENCHMARKS.md   # bench_inference_cuda

Results go to a marked section of the output markdown file (other sections are kept) and to a JSON file beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from ipt.config import ModelSpec
from ipt.device import autocast, cpu_has_fast_bf16, describe
from ipt.inference import forward_chop_official, forward_tiled
from ipt.model import build_ipt

SECTION = "bench_inference"


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so a wall-clock time covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, repeat: int, device: torch.device) -> float:
    fn()  # warm-up
    sync(device)
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.clamp(0, 255).round() - b.clamp(0, 255).round()) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255**2 / mse)


def run(batch: int, repeat: int, device: torch.device, tilings: bool) -> dict:
    torch.manual_seed(0)
    model = build_ipt(ModelSpec.for_tasks(["sr_x2"])).to(device).eval()
    x = (torch.rand(batch, 3, 48, 48) * 255).to(device)
    res: dict = {"hardware": describe(), "batch": batch, "device": str(device)}
    gflop = 66.65  # per 48x48 x2 window (IPT_REFERENCE 3.5)
    with torch.inference_mode():
        y32 = model(x, "sr_x2")
        t32 = _time(lambda: model(x, "sr_x2"), repeat, device)
        res["fp32_s_per_window"] = t32 / batch
        res["fp32_gflops"] = gflop * batch / t32
        native = device.type == "cuda" or cpu_has_fast_bf16()
        nb = batch if native else min(batch, 2)
        with autocast(device, "bf16"):
            y16 = model(x[:nb], "sr_x2").float()
            t16 = _time(lambda: model(x[:nb], "sr_x2"), repeat if native else 1, device)
        res["bf16_s_per_window"] = t16 / nb
        res["bf16_speedup"] = t32 / batch / (t16 / nb)
        res["bf16_vs_fp32_psnr_db"] = _psnr(y16, y32[:nb])
        res["bf16_vs_fp32_max_abs"] = (y16 - y32[:nb]).abs().max().item()
        if tilings:
            img = (torch.rand(1, 3, 256, 256) * 255).to(device)
            for name, fn in (
                ("official", lambda: forward_chop_official(lambda w: model(w, "sr_x2"), img, 2, batch=batch)),
                ("overlap", lambda: forward_tiled(lambda w: model(w, "sr_x2"), img, 2, batch=batch)),
            ):
                if device.type == "cuda":
                    fn()  # warm-up: the first CUDA call of a shape pays for kernel selection
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                res[f"restore256_{name}_s"] = time.perf_counter() - t0
    return res


def to_markdown(r: dict, command: str) -> str:
    hw = r["hardware"]
    lines = [
        "## Inference speed, paper-size IPT (115.5M params, random weights)",
        "",
        f"Command: `{command}`",
        "",
        f"Hardware: {hw['cpu_model']} (torch CPU capability {hw['cpu_capability']}, native bf16: {hw['fast_bf16']}, "
        f"{hw['threads']} threads), CUDA: {hw['cuda']}, torch {hw['torch']}; device `{r['device']}`.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| fp32, s per 48x48 window (batch {r['batch']}) | {r['fp32_s_per_window']:.3g} |",
        f"| fp32 throughput (66.65 GFLOP per x2 window) | {r['fp32_gflops']:.0f} GFLOP/s |",
        f"| bf16 autocast, s per window | {r['bf16_s_per_window']:.3g} |",
        f"| bf16 speed-up over fp32 | {r['bf16_speedup']:.2f}x |",
        f"| bf16 vs fp32 output, PSNR of quantized outputs | {r['bf16_vs_fp32_psnr_db']:.2f} dB |",
        f"| bf16 vs fp32 output, max abs difference (0..255) | {r['bf16_vs_fp32_max_abs']:.2f} |",
    ]
    if "restore256_official_s" in r:
        lines += [
            f"| 256x256 x2 restore, official tiling (361 distinct windows; official code runs 397) | "
            f"{r['restore256_official_s']:.3g} s |",
            f"| 256x256 x2 restore, overlap tiling (49 windows, 12-px overlap) | {r['restore256_overlap_s']:.3g} s |",
        ]
    return "\n".join(lines) + "\n"


def save_results(out: Path, section: str, device: str, body: str, result: dict) -> str:
    """Write ``body`` as section ``section`` of ``out`` (``<section>_cuda`` for a CUDA run, so it keeps the CPU's)
    and ``result`` as ``<that name>.json`` beside it; returns the name."""
    name = section + ("_cuda" if torch.device(device).type == "cuda" else "")
    write_section(out, name, body)
    (out.parent / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return name


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the block between <!-- name:start --> and <!-- name:end --> in ``path``."""
    from flows.experiment import replace_section, write_text

    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery number below names the command that made it.\n"
    write_text(path, replace_section(text, name, body))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-tilings", action="store_true", help="skip the 256x256 restores")
    ap.add_argument("--out", type=Path, default=None, help="markdown file to update (e.g. docs/BENCHMARKS.md)")
    args = ap.parse_args()
    r = run(args.batch, args.repeat, torch.device(args.device), not args.no_tilings)
    command = (
        "python benchmarks/bench_inference.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in (("batch", args.batch), ("repeat", args.repeat), ("device", args.device))
        )
        + (" --no-tilings" if args.no_tilings else "")
        + (f" --out {args.out}" if args.out else "")
    )
    md = to_markdown(r, command)
    print(md)
    if args.out:
        save_results(args.out, SECTION, args.device, md, r)


if __name__ == "__main__":
    main()
