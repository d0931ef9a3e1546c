"""Where the time of one paper-size IPT training step goes, by batch size and precision (a CUDA device or the CPU).

bench_train.py measured the paper-size step at 7% of the bf16 matmul peak on an H200 (batch 16) against 70% in
fp32, so bf16 barely paid. This script measures the same step (bench_train's ``training_step``: forward with decoder
tokens, L1 + 0.1 x contrastive, backward, Adam) over batch sizes, then profiles one bf16 step and groups the device
time by kind of kernel (matmul, convolution, attention, elementwise/normalisation, optimizer, copies), to say what
to speed up first.

    python benchmarks/profile_train.py --device cuda --out docs/BENCHMARKS.md     # section profile_train_cuda

``--compile`` also times ``torch.compile`` of the model (its compile time reported apart).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import save_results, sync  # noqa: E402
from bench_train import training_step  # noqa: E402

from ipt.device import describe  # noqa: E402
from ipt.train.config import MODEL_SIZES  # noqa: E402

SECTION = "profile_train"
KINDS = (  # first match wins; names of CUDA kernels and of ATen ops on the CPU
    ("attention", ("flash", "fmha", "attention", "sdpa", "efficient_attention")),
    ("convolution", ("conv", "cudnn", "implicit_gemm", "winograd", "dgrad", "wgrad", "fprop")),
    ("matmul", ("gemm", "matmul", "mm", "cublas", "cutlass", "addmm", "linear", "sm90_xmma", "nvjet")),
    ("optimizer", ("adam", "multi_tensor", "foreach", "_fused")),
    ("copies/casts", ("copy", "memcpy", "memset", "cat", "to_copy", "transpose", "contiguous")),
    ("reductions/softmax/norms", ("reduce", "softmax", "sum", "mean", "max", "norm")),
)


def kind_of(name: str) -> str:
    low = name.lower()
    return next((k for k, keys in KINDS if any(key in low for key in keys)), "elementwise/other")


def is_annotation(name: str) -> bool:
    return name.startswith(("Optimizer.", "ProfilerStep", "## "))


def setup(batch: int, precision: str, device: str, compiled: bool = False, size: str = "paper"):
    return training_step(size, batch, precision, device, compiled)[1]


def time_step(step, device: str, steps: int) -> tuple[float, float]:
    """(seconds of the first call, seconds per step after it)."""
    sync(device)
    t = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - t
    step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return first, (time.perf_counter() - t) / steps


def breakdown(step, device: str) -> tuple[dict[str, float], list[tuple[str, float]], float]:
    """Device time (ms) of one step by kind, the top kernels, and the host's wall time of the step (ms)."""
    cuda = device.startswith("cuda")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    step()
    sync(device)
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        step()
        sync(device)
        wall = (time.perf_counter() - t) * 1e3
    by_kind: dict[str, float] = defaultdict(float)
    kernels: dict[str, float] = defaultdict(float)
    for e in prof.events():
        if cuda:
            # kernels only: a user annotation (Optimizer.step#Adam.step) spans kernels that are counted themselves
            if e.device_type != torch.autograd.DeviceType.CUDA or is_annotation(e.name):
                continue
            us = e.device_time  # kernels: their own time on the device
        else:
            if e.cpu_parent is not None:  # top-level ATen ops only
                continue
            us = e.cpu_time_total
        by_kind[kind_of(e.name)] += us / 1e3
        kernels[e.name] += us / 1e3
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:12]
    return dict(by_kind), top, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", choices=sorted(MODEL_SIZES), default="paper")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64, 128])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--profile-batch", type=int, default=16)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    res: dict = {"hardware": describe(), "device": a.device, "runs": [], "profile": {}}
    for batch in a.batches:
        for precision in ("fp32", "bf16"):
            first, dt = time_step(setup(batch, precision, a.device, size=a.size), a.device, a.steps)
            row = {"batch": batch, "precision": precision, "compiled": False, "first_s": first, "s_per_step": dt}
            row["samples_per_s"] = batch / dt
            if a.device.startswith("cuda"):
                row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                torch.cuda.reset_peak_memory_stats()
            res["runs"].append(row)
            print(json.dumps(row), flush=True)
    for precision in ("fp32", "bf16"):
        by_kind, top, wall = breakdown(setup(a.profile_batch, precision, a.device, size=a.size), a.device)
        res["profile"][precision] = {"batch": a.profile_batch, "wall_ms": wall, "by_kind_ms": by_kind, "top": top}
        print(precision, json.dumps(res["profile"][precision]), flush=True)
    save(res, a)
    if a.compile:  # last: its compile time is long and open-ended; what came before is saved already
        for precision in ("fp32", "bf16"):
            batch = a.profile_batch
            first, dt = time_step(setup(batch, precision, a.device, compiled=True, size=a.size), a.device, a.steps)
            row = {"batch": batch, "precision": precision, "compiled": True, "first_s": first, "s_per_step": dt}
            row["samples_per_s"] = batch / dt
            res["runs"].append(row)
            print(json.dumps(row), flush=True)
            save(res, a)


def save(res: dict, a: argparse.Namespace) -> None:
    if a.out:
        save_results(a.out, SECTION, a.device, to_markdown(res, a), res)


def to_markdown(res: dict, a: argparse.Namespace) -> str:
    hw = res["hardware"]
    where = hw["cuda"] if a.device.startswith("cuda") else f"{hw['cpu_model']} ({hw['cpu_capability']})"
    cmd = f"python benchmarks/profile_train.py --device {a.device} --size {a.size}"
    cmd += f" --batches {' '.join(map(str, a.batches))}"
    cmd += f" --steps {a.steps} --profile-batch {a.profile_batch}" + (" --compile" if a.compile else "")
    lines = [
        f"## IPT training step ({a.size} size): batch size, precision, and where the device time goes",
        "",
        f"`{cmd} --out {a.out}` on {where} (torch {hw['torch']}); random 48-px sr_x2 batches, bench_train's step.",
        "",
        "| batch | precision | compiled | first call (s) | s/step | samples/s | bf16 speed-up |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    fp32 = {(r["batch"], r["compiled"]): r["s_per_step"] for r in res["runs"] if r["precision"] == "fp32"}
    for r in res["runs"]:
        speed = fp32.get((r["batch"], r["compiled"]))
        up = f"{speed / r['s_per_step']:.2f}x" if r["precision"] == "bf16" and speed else ""
        lines.append(
            f"| {r['batch']} | {r['precision']} | {'yes' if r['compiled'] else 'no'} | {r['first_s']:.2f} "
            f"| {r['s_per_step']:.4f} | {r['samples_per_s']:.0f} | {up} |"
        )
    for precision, p in res["profile"].items():
        total = sum(p["by_kind_ms"].values())
        lines += [
            "",
            f"One {precision} step at batch {p['batch']}: {p['wall_ms']:.1f} ms wall, {total:.1f} ms of"
            f" {'kernel' if a.device.startswith('cuda') else 'top-level op'} time, by kind:",
            "",
            "| kind | ms | share |",
            "|---|---:|---:|",
            *[
                f"| {k} | {v:.2f} | {v / total:.0%} |"
                for k, v in sorted(p["by_kind_ms"].items(), key=lambda kv: -kv[1])
            ],
            "",
            "Top kernels: " + "; ".join(f"`{n[:60]}` {ms:.2f} ms" for n, ms in p["top"][:6]) + ".",
        ]
    if res.get("note"):
        lines += ["", res["note"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
