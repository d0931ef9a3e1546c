"""Seconds per image and Y-PSNR on Set5 x2 for the paper-size IPT in both tilings (and bf16 where native).

The weights are random (seeded): the times are real, the absolute PSNR is not meaningful, and the PSNR change between
tilings is measured on the same weights. With random weights each window's output is far from the image, so the
change between tilings is an upper bound on what trained weights show.

    python benchmarks/bench_tiling.py --root ../shared/benchmarks --out docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import write_section  # noqa: E402

from ipt.benchmark import evaluate, make_restore_fn  # noqa: E402
from ipt.config import ModelSpec  # noqa: E402
from ipt.data.benchmarks import load_benchmark  # noqa: E402
from ipt.device import cpu_has_fast_bf16, describe  # noqa: E402
from ipt.model import build_ipt  # noqa: E402

SECTION = "bench_tiling"


def run(root: Path, device: str, limit: int | None) -> dict:
    torch.manual_seed(0)
    weights = Path(tempfile.mkdtemp()) / "IPT_sr2_random.pt"
    torch.save(build_ipt(ModelSpec.for_tasks(["sr_x2"])).state_dict(), weights)
    data = load_benchmark(root, "Set5", "sr_x2", limit=limit)
    native_bf16 = device.startswith("cuda") or cpu_has_fast_bf16()
    results: dict = {"hardware": describe(), "device": device, "images": len(data.pairs), "runs": {}}
    for precision in ("fp32", "bf16") if native_bf16 else ("fp32",):
        for tiling in ("official", "overlap"):
            fn, info = make_restore_fn(str(weights), "sr_x2", tiling=tiling, precision=precision, device=device)
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
        "## Tiling speed and fidelity, Set5 x2, paper-size IPT (random weights)",
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
            f"| {name} | {v['seconds_per_image']:.1f} | {base['seconds_per_image'] / v['seconds_per_image']:.2f}x "
            f"| {v['psnr_y']:.3f} | {v['psnr_y'] - base['psnr_y']:+.3f} |"
        )
    if "bf16_note" in r:
        lines += ["", f"bf16: {r['bf16_note']}."]
    lines += [
        "",
        "Random weights make every window's output far from the image, so the PSNR change between tilings here is "
        "a stress value, not the change trained weights would show; it is re-measured with trained weights once "
        "the training issue produces them.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("../shared/benchmarks"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--limit", type=int, default=None, help="first N images only (smoke runs)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    r = run(args.root, args.device, args.limit)
    command = f"python benchmarks/bench_tiling.py --root {args.root} --device {args.device}"
    command += (f" --limit {args.limit}" if args.limit else "") + (f" --out {args.out}" if args.out else "")
    md = to_markdown(r, command)
    print(md)
    if args.out:
        write_section(args.out, SECTION, md)
        args.out.with_name("bench_tiling.json").write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
