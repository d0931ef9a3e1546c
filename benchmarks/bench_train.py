"""Training throughput and model FLOP utilisation (MFU) of one IPT training step, against a measured matmul peak.

One step = forward with decoder tokens, L1 + 0.1 x patch contrastive loss, backward, Adam update (the objective of
``ipt.train.losses``) on synthetic 48-px LQ batches for sr_x2. FLOPs of the step are counted by
``torch.utils.flop_counter`` (matmuls, convolutions, attention); the peak is a measured square matmul of the same
dtype on this device. bf16 uses autocast; on CPUs without native bf16 (AVX2) it is expected to be far slower.

    python benchmarks/bench_train.py --out docs/BENCHMARKS.md
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
from bench_inference import write_section  # noqa: E402

from ipt.config import ModelSpec  # noqa: E402
from ipt.device import cpu_has_fast_bf16, describe  # noqa: E402
from ipt.model import build_ipt  # noqa: E402
from ipt.train.config import MODEL_SIZES  # noqa: E402
from ipt.train.losses import ipt_objective  # noqa: E402

SECTION = "bench_train"


def matmul_peak(dtype: torch.dtype, device: str, n: int = 2048, repeat: int = 5) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(repeat):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
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


def measure(size: str, batch: int, steps: int, precision: str, device: str) -> dict:
    torch.manual_seed(0)
    spec = ModelSpec.for_tasks(["sr_x2"], **(MODEL_SIZES[size] | {"patch_size": 48}))
    model = build_ipt(spec).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-5)
    x = torch.rand(batch, 3, 48, 48, device=device) * 255
    y = torch.rand(batch, 3, 96, 96, device=device) * 255
    step = step_fn(model, opt, x, y, precision, device)
    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    native_bf16 = a.device.startswith("cuda") or cpu_has_fast_bf16()
    peaks = {"fp32": matmul_peak(torch.float32, a.device) / 1e9}
    # Without native bf16 a 2048^3 bf16 matmul takes ~15 s here; 512^3 shows the (emulated) rate well enough.
    peaks["bf16"] = matmul_peak(
        torch.bfloat16, a.device, n=2048 if native_bf16 else 512, repeat=5 if native_bf16 else 2
    )
    peaks["bf16"] /= 1e9
    precisions = ("fp32", "bf16") if native_bf16 else ("fp32",)
    runs = []
    plan = (
        [("tiny", 16, 5), ("small", 16, 3), ("paper", 2, 1)]
        if a.device == "cpu"
        else [("tiny", 64, 20), ("small", 64, 20), ("paper", 16, 10)]
    )
    for size, batch, steps in plan:
        for precision in precisions:
            r = measure(size, batch, steps, precision, a.device)
            r["mfu"] = r["achieved_gflops"] / peaks[precision]
            runs.append(r)
            print(json.dumps(r), flush=True)
    result = {"hardware": describe(), "device": a.device, "peak_gflops": peaks, "runs": runs}
    if a.out:
        hw = result["hardware"]
        lines = [
            "## Training throughput and MFU (one step: forward, L1 + contrastive, backward, Adam)",
            "",
            f"`python benchmarks/bench_train.py --out {a.out}` on {hw['cpu_model']} ({hw['cpu_capability']}, "
            f"{hw['threads']} threads), device `{a.device}`. Measured matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s"
            f" (2048^3), bf16 {peaks['bf16']:.1f} GFLOP/s ({2048 if native_bf16 else 512}^3). 48-px LQ windows, sr_x2.",
            "",
            "| size | params | precision | batch | s/step | samples/s | GFLOP/step | GFLOP/s | MFU |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|",
            *[
                f"| {r['size']} | {r['params_m']:.1f} M | {r['precision']} | {r['batch']} | {r['s_per_step']:.2f} |"
                f" {r['samples_per_s']:.1f} | {r['gflop_per_step']:.1f} | {r['achieved_gflops']:.0f} |"
                f" {r['mfu']:.0%} |"
                for r in runs
            ],
            "",
            "MFU is against the measured matmul peak of the same dtype on this machine (not a datasheet number).",
            *(
                []
                if native_bf16
                else [
                    "",
                    f"bf16 training steps not run: this CPU has no native bf16 (its bf16 matmul runs at"
                    f" {peaks['bf16']:.1f} GFLOP/s, {peaks['fp32'] / peaks['bf16']:.0f}x below fp32), so the training"
                    " CLI keeps fp32 on CPU unless `--precision bf16` is asked for.",
                ]
            ),
            "",
        ]
        write_section(a.out, SECTION, "\n".join(lines))
        (a.out.parent / "bench_train.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
