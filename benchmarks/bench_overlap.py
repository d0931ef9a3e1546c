"""Window placement and overlap of the default tiling, on trained weights: Y-PSNR change and window count.

For each trained model (and each task it holds) and each of its task's benchmark sets, the mean Y-PSNR of the
exact path (``--tiling official``, fp32) and its change under the overlap tiling at several overlaps, for two
placements: ``even`` (``ipt.inference.window_starts``: the fewest windows, spread evenly) and ``grid`` (the
placement before it: a regular grid at the stride ``48 - overlap`` plus one window flush with the end). The window
count per set says what each choice costs: inference time is the window count times the time per window.

    python benchmarks/bench_overlap.py --root ../shared/benchmarks \
        --trained runs/finetune/*/model.pt --out docs/BENCHMARKS.md

All fp32 on the CPU (the tiling's own change, not the precision's). Section ``bench_overlap``, or
``bench_overlap_<tag>`` with ``--tag`` (another set of models or overlaps beside it).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import save_results  # noqa: E402

import ipt.inference  # noqa: E402
from ipt.data.testsets import load_benchmark, resolve_datasets  # noqa: E402
from ipt.device import describe  # noqa: E402
from ipt.inference import window_starts  # noqa: E402
from ipt.restore import Restorer  # noqa: E402
from ipt.scoring import evaluate, restorer_fn  # noqa: E402
from ipt.tasks import task_scale  # noqa: E402

SECTION = "bench_overlap"
PLACEMENTS = ("even", "grid")


def section_name(r: dict) -> str:
    """``bench_overlap``, or ``bench_overlap_<tag>`` for a run saved with ``--tag`` (runs before it have none)."""
    return SECTION + (f"_{r['tag']}" if r.get("tag") else "")


def grid_starts(length: int, patch: int, overlap: int) -> list[int]:
    """The placement before ``window_starts``: a regular grid at stride ``patch - overlap``, plus one window flush
    with the end (whose overlap with the one before can be a single pixel)."""
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, patch - overlap))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


@contextmanager
def placement(name: str):
    """Run the library's overlap tiling with the named placement."""
    saved = ipt.inference.window_starts
    ipt.inference.window_starts = window_starts if name == "even" else grid_starts
    try:
        yield
    finally:
        ipt.inference.window_starts = saved


def window_count(sizes: list[tuple[int, int]], name: str, overlap: int, patch: int = 48) -> int:
    starts = window_starts if name == "even" else grid_starts
    return sum(len(starts(h, patch, overlap)) * len(starts(w, patch, overlap)) for h, w in sizes)


def mean_psnr(model, task: str, data, tiling: str, overlap: int | None = None) -> float:
    r = Restorer(model, task, tiling=tiling, overlap=overlap, precision="fp32", device="cpu")
    return evaluate(restorer_fn(r), data, scale=task_scale(task))["psnr_y"]


def sweep(weights: str, root: Path, overlaps: list[int], limit: int | None) -> list[dict]:
    from ipt.checkpoint import load_model

    model = load_model(weights)  # read once: every tiling of every set runs the same weights
    rows = []
    for task in model.spec.task_names:
        names, _ = resolve_datasets(root, task)
        for ds in names:
            data = load_benchmark(root, ds, task, limit=limit)
            sizes = [tuple(p.lq.shape[-2:]) if torch.is_tensor(p.lq) else p.lq.shape[:2] for p in data.pairs]
            t0 = time.perf_counter()
            row = {"weights": weights, "task": task, "dataset": ds, "images": len(data.pairs), "changes": {}}
            row["exact_psnr"] = mean_psnr(model, task, data, "official")
            for name in PLACEMENTS:
                for o in overlaps:
                    with placement(name):
                        change = mean_psnr(model, task, data, "overlap", o) - row["exact_psnr"]
                    row["changes"][f"{name}/{o}"] = {"psnr_change": change, "windows": window_count(sizes, name, o)}
            row["seconds"] = time.perf_counter() - t0
            print(
                f"{weights} {task} {ds}: exact {row['exact_psnr']:.4f} dB; "
                + ", ".join(f"{k} {v['psnr_change']:+.4f} ({v['windows']} w)" for k, v in row["changes"].items()),
                flush=True,
            )
            rows.append(row)
    return rows


def to_markdown(r: dict, command: str) -> str:
    hw = r["hardware"]
    keys = [f"{n}/{o}" for n in PLACEMENTS for o in r["overlaps"]]
    lines = [
        "## Window placement and overlap on trained weights" + (f" ({r['tag']})" if r.get("tag") else ""),
        "",
        f"Command: `{command}`",
        "",
        f"Hardware: {hw['cpu_model']} ({hw['cpu_capability']}"
        + (f", x86 family-model-stepping {hw['cpu_id']}" if hw.get("cpu_id") else "")
        + f", {hw['threads']} threads), torch {hw['torch']}; "
        f"{r['date']}. fp32 on the CPU throughout; "
        + (f"the first {r['limit']} images of each set (by name)." if r.get("limit") else "whole sets.")
        + " The images scored are in brackets after each set.",
        "",
        "Each cell: the mean Y-PSNR change (dB) of the overlap tiling against the exact path (`--tiling official "
        "--precision fp32`) on that set, and the windows the tiling evaluates for the whole set (48-px windows, "
        "LR pixels). `even/o`: the fewest windows whose neighbours overlap by at least o px, spread evenly "
        "(`ipt.inference.window_starts`); `grid/o`: a grid at stride 48 - o plus a last window flush with the end "
        "(the placement before it).",
        "",
        "| model | task | set | exact path (dB) | " + " | ".join(keys) + " |",
        "|---|---|---|---:|" + "---:|" * len(keys),
    ]
    for row in r["rows"]:
        cells = [f"{row['changes'][k]['psnr_change']:+.4f} ({row['changes'][k]['windows']})" for k in keys]
        lines.append(
            f"| `{row['weights']}` | {row['task']} | {row['dataset']} ({row['images']}) | {row['exact_psnr']:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    lines += ["", "| summary over the rows above | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for label, fn in (("mean change (dB)", statistics.fmean), ("worst change (dB)", min)):
        vals = [fn([row["changes"][k]["psnr_change"] for row in r["rows"]]) for k in keys]
        lines.append(f"| {label} | " + " | ".join(f"{v:+.4f}" for v in vals) + " |")
    totals = [sum(row["changes"][k]["windows"] for row in r["rows"]) for k in keys]
    lines.append("| windows, all rows | " + " | ".join(str(t) for t in totals) + " |")
    return "\n".join(lines) + "\n\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("../shared/benchmarks"), help="benchmark sets")
    ap.add_argument("--trained", nargs="+", default=[], help="trained checkpoints (each of its tasks is scored)")
    ap.add_argument("--overlaps", default="12,8,6", help="overlaps in LR pixels, comma-separated")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="markdown file to update (e.g. docs/BENCHMARKS.md)")
    ap.add_argument("--tag", default="", help="section bench_overlap_<tag> instead of bench_overlap")
    ap.add_argument("--render", type=Path, default=None, help="rewrite the section from this saved JSON; run nothing")
    args = ap.parse_args()
    if args.tag and not re.fullmatch(r"[A-Za-z0-9_-]+", args.tag):
        ap.error(f"--tag {args.tag!r}: letters, digits, '_' and '-' only (it names a section and a file)")
    if args.render and args.tag:
        ap.error("--tag with --render: the saved JSON names its own section")
    if args.render:
        r = json.loads(args.render.read_text())
        save_results(args.out or Path("docs/BENCHMARKS.md"), section_name(r), "cpu", to_markdown(r, r["command"]), r)
        return
    if not args.trained:
        ap.error("--trained: give at least one trained checkpoint")
    overlaps = [int(o) for o in args.overlaps.split(",")]
    rows = [row for w in args.trained for row in sweep(w, args.root, overlaps, args.limit)]
    r = {"hardware": describe(), "date": time.strftime("%Y-%m-%d"), "overlaps": overlaps, "limit": args.limit}
    r["tag"] = args.tag
    command = (
        f"python benchmarks/bench_overlap.py --root {args.root} --trained {' '.join(args.trained)}"
        + (f" --overlaps {args.overlaps}" if args.overlaps != "12,8,6" else "")
        + (f" --limit {args.limit}" if args.limit else "")
        + (f" --tag {args.tag}" if args.tag else "")
        + (f" --out {args.out}" if args.out else "")
    )
    r |= {"rows": rows, "command": command}
    md = to_markdown(r, command)
    print(md)
    if args.out:
        save_results(args.out, section_name(r), "cpu", md, r)


if __name__ == "__main__":
    main()
