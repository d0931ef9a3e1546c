"""Training throughput and model FLOP utilisation (MFU) of one IPT training step, against a measured matmul peak.

One step = forward with decoder tokens, L1 + 0.1 x patch contrastive loss, backward, Adam update (the objective of
``ipt.train.losses``) on synthetic 48-px LQ batches for sr_x2. FLOPs of the step are counted by
``torch.utils.flop_counter`` (matmuls, convolutions, attention); the peak is a measured square matmul of the same
dtype on this device. bf16 uses autocast; on CPUs without native bf16 (AVX2) it is expected to be far slower.

    python benchmarks/bench_train.py --device cpu --out docs/BENCHMARKS.md    # section bench_train
    python benchmarks/bench_train.py --device cuda --out docs/BENCHMARKS.md   # section bench_train_cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import save_results, sync  # noqa: E402

from ipt.config import ModelSpec  # noqa: E402
from ipt.device import cpu_has_fast_bf16, describe  # noqa: E402
from ipt.model import build_ipt  # noqa: E402
from ipt.train.config import MODEL_SIZES  # noqa: E402
from ipt.train.losses import ipt_objective  # noqa: E402

SECTION = "bench_train"  # CPU runs; a CUDA run writes its own section, bench_train_cuda


def matmul_peak(dtype: torch.dtype, device: str, n: int = 2048, repeat: int = 5) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(repeat):
        a @ b
    sync(device)
    return 2 * n**3 * repeat / (time.perf_counter() - t)


def step_fn(model, opt, x, y, precision: str, device: str):
    def step():
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16"):
            out, tokens = model(x, "sr_x2", return_tokens=True)
            loss = ipt_objective(out.float(), y, tokens.float())["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def training_step(size: str, batch: int, precision: str, device: str, compiled: bool = False):
    """(model, step): a seeded sr_x2 IPT of ``size`` with Adam, and one training step of it on a random batch of
    48-px inputs (``compiled``: the step runs ``torch.compile`` of the model)."""
    torch.manual_seed(0)
    spec = ModelSpec.for_tasks(["sr_x2"], **(MODEL_SIZES[size] | {"patch_size": 48}))
    model = build_ipt(spec).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-5)
    x = torch.rand(batch, 3, 48, 48, device=device) * 255
    y = torch.rand(batch, 3, 96, 96, device=device) * 255
    return model, step_fn(torch.compile(model) if compiled else model, opt, x, y, precision, device)


def measure(size: str, batch: int, steps: int, precision: str, device: str) -> dict:
    model, step = training_step(size, batch, precision, device)
    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    dt = (time.perf_counter() - t) / steps
    return {
        "size": size,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "precision": precision,
        "batch": batch,
        "s_per_step": dt,
        "samples_per_s": batch / dt,
        "gflop_per_step": flops / 1e9,
        "achieved_gflops": flops / dt / 1e9,
    }


def _slowdown(runs: list[dict]) -> str:
    """'8-12x': the range over sizes of bf16 s/step over fp32 s/step."""
    by = {(r["size"], r["precision"]): r["s_per_step"] for r in runs}
    ratios = [by[s, "bf16"] / by[s, "fp32"] for s, p in by if p == "fp32" and (s, "bf16") in by]
    return f"{min(ratios):.0f}-{max(ratios):.0f}x" if ratios else "(not measured)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    cuda = a.device.startswith("cuda")
    native_bf16 = cuda or cpu_has_fast_bf16()
    n_peak = 8192 if cuda else 2048  # a GPU needs a large product to approach its peak
    peaks = {"fp32": matmul_peak(torch.float32, a.device, n=n_peak) / 1e9}
    # Without native bf16 a 2048^3 bf16 matmul takes ~15 s here; 512^3 shows the (emulated) rate well enough.
    n_bf16 = n_peak if native_bf16 else 512
    peaks["bf16"] = matmul_peak(torch.bfloat16, a.device, n=n_bf16, repeat=5 if native_bf16 else 2) / 1e9
    # Without native bf16 each bf16 step is ~10x slower than fp32 (one timed step, for the record).
    bf16_steps = None if native_bf16 else 1
    runs = []
    plan = (
        [("tiny", 16, 5), ("small", 16, 3), ("paper", 2, 1)]
        if a.device == "cpu"
        else [("tiny", 64, 20), ("small", 64, 20), ("paper", 16, 10)]
    )
    for size, batch, steps in plan:
        for precision in ("fp32", "bf16"):
            r = measure(size, batch, (precision == "bf16" and bf16_steps) or steps, precision, a.device)
            # Emulated bf16 (no native support) has no meaningful peak: part of the step runs in fp32 under autocast
            r["mfu"] = r["achieved_gflops"] / peaks[precision] if precision == "fp32" or native_bf16 else None
            runs.append(r)
            print(json.dumps(r), flush=True)
    result = {"hardware": describe(), "device": a.device, "peak_gflops": peaks, "runs": runs}
    if a.out:
        hw = result["hardware"]
        lines = [
            "## Training throughput and MFU (one step: forward, L1 + contrastive, backward, Adam)",
            "",
            f"`python benchmarks/bench_train.py --device {a.device} --out {a.out}` on "
            + (f"{hw['cuda']} (torch {hw['torch']})" if cuda else f"{hw['cpu_model']} ({hw['cpu_capability']}, ")
            + ("" if cuda else f"{hw['threads']} threads)")
            + f", device `{a.device}`. Measured matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s"
            f" ({n_peak}^3), bf16 {peaks['bf16']:.1f} GFLOP/s ({n_bf16}^3). 48-px LQ windows, sr_x2.",
            "",
            "| size | params | precision | batch | s/step | samples/s | GFLOP/step | GFLOP/s | MFU |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|",
            *[
                f"| {r['size']} | {r['params_m']:.1f} M | {r['precision']} | {r['batch']} | {r['s_per_step']:.2f} |"
                f" {r['samples_per_s']:.{1 if r['samples_per_s'] >= 1 else 2}f} | {r['gflop_per_step']:.1f} |"
                f" {r['achieved_gflops']:.0f} |"
                f" {'n/a' if r['mfu'] is None else format(r['mfu'], '.0%')} |"
                for r in runs
            ],
            "",
            "MFU is against the measured matmul peak of the same dtype on this machine (not a datasheet number).",
            *(
                []
                if native_bf16
                else [
                    "",
                    f"This CPU has no native bf16: autocast emulates it (matmul peak {peaks['bf16']:.1f} GFLOP/s,"
                    f" {peaks['fp32'] / peaks['bf16']:.0f}x below fp32), so bf16 steps are"
                    f" {_slowdown(runs)} slower than fp32 here (one timed step each) and the training CLI keeps fp32"
                    " on CPU unless `--precision bf16` is asked for. Their MFU is n/a: autocast leaves part of the"
                    " step in fp32, so the emulated bf16 matmul rate is no ceiling for it.",
                ]
            ),
            "",
        ]
        if cuda:
            lines[0] = lines[0].replace("MFU (", "MFU on a GPU (")
        save_results(a.out, SECTION, a.device, "\n".join(lines), result)


if __name__ == "__main__":
    main()
