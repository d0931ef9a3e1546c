"""Peak memory of a whole-image x4 restore against the input size: windows streamed, outputs blended in place.

Each measurement is a fresh process (peak RSS from ``getrusage``): the model, a random LR image of N x N, and
``forward_tiled`` (the default overlap tiling) at batch 64, beside the same restore with every window's output held
at once before blending (what the tiling did before it streamed). The canvas of an N x N x4 restore alone is
``(4N)^2 x 3 x 4`` bytes of fp32 sums plus ``(4N)^2 x 4`` of weights; the input and output images add ``N^2 x 12`` and
``(4N)^2 x 12``.

    python benchmarks/bench_memory.py --sizes 512,1024,2048 --model tiny --out docs/BENCHMARKS.md
    python benchmarks/bench_memory.py --sizes 256,512 --model paper --precision bf16 --out docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import save_results  # noqa: E402

from ipt.device import describe  # noqa: E402

SECTION = "bench_memory"


def held_all_at_once(window_fn, x: torch.Tensor, scale: int, patch: int, overlap: int, batch: int) -> torch.Tensor:
    """The overlap tiling as it was before streaming: every window cut, every output kept, then blended."""
    from ipt.inference import _pad_to, _ramp, run_windows, window_starts

    xp, h, w = _pad_to(x, patch)
    b, c, hh, ww = xp.shape
    rows, cols = window_starts(hh, patch, overlap), window_starts(ww, patch, overlap)
    win = xp.unfold(2, patch, 1).unfold(3, patch, 1)
    windows = win[:, :, rows][:, :, :, cols].permute(0, 2, 3, 1, 4, 5).reshape(-1, c, patch, patch)
    out = run_windows(window_fn, windows, batch)
    P = patch * scale
    out = out.view(b, len(rows), len(cols), c, P, P)
    ramp = _ramp(P, overlap * scale)
    weight = ramp[:, None] * ramp[None, :]
    acc = torch.zeros(b, c, hh * scale, ww * scale)
    norm = torch.zeros(hh * scale, ww * scale)
    for i, r in enumerate(rows):
        for j, cc in enumerate(cols):
            acc[:, :, r * scale : r * scale + P, cc * scale : cc * scale + P] += out[:, i, j] * weight
            norm[r * scale : r * scale + P, cc * scale : cc * scale + P] += weight
    return (acc / norm)[:, :, : h * scale, : w * scale]


def child(size: int, model_size: str, precision: str, mode: str) -> dict:
    """One measurement in this process (run as a subprocess by the parent)."""
    from ipt.config import ModelSpec
    from ipt.device import autocast
    from ipt.inference import forward_tiled
    from ipt.model import build_ipt
    from ipt.train.config import MODEL_SIZES

    torch.manual_seed(0)
    extra = {} if model_size == "paper" else MODEL_SIZES[model_size]
    model = build_ipt(ModelSpec.for_tasks(["sr_x4"], **extra)).eval()
    patch = model.spec.patch_size
    x = torch.rand(1, 3, size, size) * 255

    def fn(w: torch.Tensor) -> torch.Tensor:
        with autocast(torch.device("cpu"), precision):
            return model(w, "sr_x4").float()

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    with torch.inference_mode():
        if mode == "streamed":
            y = forward_tiled(fn, x, 4, patch=patch, overlap=patch // 4, batch=64)
        else:
            y = held_all_at_once(fn, x, 4, patch, patch // 4, 64)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"size": size, "mode": mode, "out": list(y.shape), "peak_rss": peak, "before_rss": base, "seconds": dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512,1024,2048")
    ap.add_argument("--model", default="tiny", choices=["tiny", "small", "paper"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--modes", default="streamed,held")
    ap.add_argument("--child", nargs=2, metavar=("SIZE", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.model, args.precision, args.child[1])))
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for mode in args.modes.split(","):
            cmd = [sys.executable, __file__, "--model", args.model, "--precision", args.precision]
            out = subprocess.run(cmd + ["--child", str(size), mode], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{size} {mode}: peak RSS {row['peak_rss'] / 2**20:.0f} MiB, {row['seconds']:.1f} s", flush=True)
    r = {"hardware": describe(), "model": args.model, "precision": args.precision, "rows": rows}
    command = (
        f"python benchmarks/bench_memory.py --sizes {args.sizes} --model {args.model} --precision {args.precision}"
        + (f" --modes {args.modes}" if args.modes != "streamed,held" else "")
        + (f" --out {args.out}" if args.out else "")
    )
    hw = r["hardware"]
    lines = [
        f"## Peak memory of an x4 restore by input size ({args.model} IPT, {args.precision})",
        "",
        f"Command: `{command}`",
        "",
        f"{hw['cpu_model']} ({hw['cpu_capability']}, native bf16: {hw['cpu_bf16']}), torch {hw['torch']}; each row a "
        "fresh process, peak RSS from getrusage (the model and torch included); overlap tiling, batch 64. "
        "'streamed': the tiling as it is (each batch blended into the canvas as it comes); 'held': every window's "
        "output kept until the blend (as it was).",
        "",
        "| input | output | mode | peak RSS (MiB) | RSS before the restore (MiB) | growth over it (MiB) | s |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        grow = (row["peak_rss"] - row["before_rss"]) / 2**20
        lines.append(
            f"| {row['size']}^2 | {row['out'][-1]}^2 | {row['mode']} | {row['peak_rss'] / 2**20:.0f} | "
            f"{row['before_rss'] / 2**20:.0f} | {grow:.0f} | {row['seconds']:.1f} |"
        )
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        name = f"{SECTION}_{args.model}_{args.precision}"
        save_results(args.out, name, "cpu", md, r)


if __name__ == "__main__":
    main()
