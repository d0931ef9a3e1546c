"""Seconds per image and Y-PSNR on Set5 (or another set) x2 for the paper-size IPT in both tilings (bf16 where native).

The weights are random (seeded): the times are real, the absolute PSNR is not meaningful, and the PSNR change between
tilings is measured on the same weights. With random weights each window's output is far from the image, so the
change between tilings is an upper bound on what trained weights show.

    python benchmarks/bench_tiling.py --root ../shared/benchmarks --out docs/BENCHMARKS.md       # bench_tiling
    python benchmarks/bench_tiling.py --root DIR --device cuda --out docs/BENCHMARKS.md        # bench_tiling_cuda
    python benchmarks/bench_tiling.py --root DIR --device cuda --dataset B100 --out ...       # bench_tiling_cuda_B100

On CUDA each configuration first restores one image untimed (kernel selection and allocator warm-up); the restore
returns its output on the CPU, so each image's time includes the device work and the copy back.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import save_results  # noqa: E402

from ipt.config import ModelSpec  # noqa: E402
from ipt.data.testsets import load_benchmark  # noqa: E402
from ipt.device import cpu_has_fast_bf16, describe  # noqa: E402
from ipt.model import build_ipt  # noqa: E402
from ipt.scoring import evaluate, make_restore_fn  # noqa: E402

SECTION = "bench_tiling"


def run(root: Path, device: str, limit: int | None, dataset: str = "Set5") -> dict:
    torch.manual_seed(0)
    weights = Path(tempfile.mkdtemp()) / "IPT_sr2_random.pt"
    torch.save(build_ipt(ModelSpec.for_tasks(["sr_x2"])).state_dict(), weights)
    data = load_benchmark(root, dataset, "sr_x2", limit=limit)
    native_bf16 = device.startswith("cuda") or cpu_has_fast_bf16()
    results: dict = {"hardware": describe(), "device": device, "dataset": dataset, "images": len(data.pairs)}
    results["runs"] = {}
    for precision in ("fp32", "bf16") if native_bf16 else ("fp32",):
        for tiling in ("official", "overlap"):
            fn, info = make_restore_fn(str(weights), "sr_x2", tiling=tiling, precision=precision, device=device)
            if device.startswith("cuda"):
                fn(data.pairs[0].lq)  # warm-up, untimed
            r = evaluate(fn, data, scale=2, protocol="ipt")
            results["runs"][f"{tiling}/{info['precision']}"] = {k: r[k] for k in ("psnr_y", "seconds_per_image")}
            print(tiling, info["precision"], r["psnr_y"], r["seconds_per_image"], flush=True)
    if not native_bf16:
        results["bf16_note"] = "not run: this CPU has no native bf16 (AVX2 emulates it about 10x slower than fp32)"
    return results


def to_markdown(r: dict, command: str) -> str:
    hw = r["hardware"]
    base = r["runs"]["official/fp32"]
    lines = [
        f"## Tiling speed and fidelity, {r.get('dataset', 'Set5')} x2, paper-size IPT (random weights)",
        "",
        f"Command: `{command}`",
        "",
        f"Hardware: {hw['cpu_model']} ({hw['cpu_capability']}, native bf16: {hw['fast_bf16']}, "
        f"{hw['threads']} threads), CUDA: {hw['cuda']}; device `{r['device']}`; {r['images']} images; protocol `ipt`.",
        "",
        "| tiling / precision | s per image | speed-up vs official fp32 | Y-PSNR (dB) | change vs official fp32 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, v in r["runs"].items():
        lines.append(
            f"| {name} | {v['seconds_per_image']:.3g} | {base['seconds_per_image'] / v['seconds_per_image']:.2f}x "
            f"| {v['psnr_y']:.3f} | {v['psnr_y'] - base['psnr_y']:+.3f} |"
        )
    if "bf16_note" in r:
        lines += ["", f"bf16: {r['bf16_note']}."]
    lines += [
        "",
        "Random weights make every window's output far from the image, so the PSNR change between tilings here is "
        "a stress value, not the change trained weights would show. Paper-size trained weights cannot be had on these "
        "machines (no downloads; training one needs GPUs), so it stays one.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("../shared/benchmarks"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dataset", default="Set5", help="a set under --root with an sr_x2 layout (Set5, Set14, B100)")
    ap.add_argument("--limit", type=int, default=None, help="first N images only (smoke runs)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    r = run(args.root, args.device, args.limit, args.dataset)
    command = f"python benchmarks/bench_tiling.py --root {args.root} --device {args.device}"
    command += f" --dataset {args.dataset}" if args.dataset != "Set5" else ""
    command += (f" --limit {args.limit}" if args.limit else "") + (f" --out {args.out}" if args.out else "")
    md = to_markdown(r, command)
    print(md)
    if args.out:
        # each set its own section (and a GPU run its own, beside the CPU's)
        section = SECTION + (f"_{args.dataset}" if args.dataset != "Set5" else "")
        save_results(args.out, section, args.device, md, r)


if __name__ == "__main__":
    main()
