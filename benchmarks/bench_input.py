"""The training input pipeline per DataLoader worker, against the paper-size GPU step (how many workers one GPU needs).

What one worker does for its lanes (ipt.train.data.PairStream, the trainer's own code): read pair shards (WebDataset
tar streams, per-lane shuffle buffers), decode both PNGs, check them, apply the seeded flip / 90-degree rotation,
stack uint8 tensors; then what the rank's main process adds per batch (re-assembly in lane order and the float
conversion). Pair shards are made first, as the paper-scale run would make them: ``ipt shard`` of the
../shared/train photos (48-px LQ windows, crops for x4, ``--png-level``, the plan's 1 by default) and ``ipt corrupt``
for the six paper tasks of params.yaml. The crop happened there, in the data stages; the trainer reads
window-sized pairs. Rates are samples per CPU-second of the one process (``time.process_time``), so a shared, busy
machine does not lower them (its wall rate is recorded too), and one thread as in a DataLoader worker.

    nice -n 19 python benchmarks/bench_input.py --train ../shared/train --out docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import write_section  # noqa: E402

from ipt.data import clean, pairs, plan  # noqa: E402
from ipt.device import cpu_flags, describe  # noqa: E402
from ipt.train.data import PairStream, StreamSpec, _assemble, find_shards  # noqa: E402

SECTION = "bench_input"
ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "docs" / "profile_train_cuda.json"
SIMD = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16")


def make_shards(train: Path, tmp: Path, crops: int, level: int) -> tuple[Path, dict[str, int]]:
    cfg = clean.ShardConfig(source=str(train), out=str(tmp / "clean"), crops=crops, png_level=level)
    plan.execute(clean.plan_shard(cfg), executor="process", workers=1)
    tasks = yaml.safe_load((ROOT / "params.yaml").read_text())["corrupt"]["tasks"]
    scales = {}
    for task, entry in tasks.items():
        entry = dict(entry)
        name = entry.pop("name")
        out = tmp / "pairs" / task
        c = pairs.CorruptConfig(task, name, entry, clean=str(tmp / "clean"), out=str(out), png_level=level)
        plan.execute(pairs.plan_corrupt(c), executor="process", workers=1)
        scales[task] = json.loads((out / "manifest.json").read_text())["params"]["scale"]
    return tmp / "pairs", scales


def measure(root: Path, tasks: tuple[str, ...], scales: dict[str, int], batch: int, steps: int, seed: int) -> dict:
    """One worker owning all ``batch`` lanes: the first step (every lane's shuffle buffer filled: a segment start)
    timed apart from the ``steps`` after it."""
    spec = StreamSpec(
        urls=find_shards(root, tasks),
        tasks=tasks,
        weights=tuple(1.0 for _ in tasks),
        scales={t: scales[t] for t in tasks},
        patch_size=48,
        batch_size=batch,
        lanes=batch,
        seed=seed,
        shuffle_buffer=64,
        segment=10**9,
        augment=True,
    )
    it = iter(PairStream(spec, rank=0, world=1, start=0, stop=steps + len(tasks) * 4, workers=1))
    met: set[str] = set()
    first_cpu = 0.0
    while len(met) < len(tasks):  # fill every task's buffers once (the segment-start cost)
        c = time.process_time()
        part = next(it)
        if part.task not in met:
            met.add(part.task)
            first_cpu += time.process_time() - c
    c, w = time.process_time(), time.perf_counter()
    worker_cpu = 0.0
    for _ in range(steps):
        c0 = time.process_time()
        part = next(it)
        worker_cpu += time.process_time() - c0
        lq, hr = _assemble([part], spec.rows_per_lane)
        lq.float(), hr.float()  # the rank's main process: lane order, uint8 -> float32
    cpu, wall = time.process_time() - c, time.perf_counter() - w
    n = steps * batch
    return {
        "tasks": list(tasks),
        "samples": n,
        "worker_samples_per_cpu_s": n / worker_cpu,
        "main_cpu_s_per_sample": (cpu - worker_cpu) / n,
        "samples_per_cpu_s": n / cpu,
        "wall_samples_per_s": n / wall,
        "segment_start_cpu_s_per_task": first_cpu / len(tasks),
    }


def gpu_rates() -> dict[str, float]:
    runs = json.loads(PROFILE.read_text())["runs"]
    return {f"{r['precision']}_b{r['batch']}": r["samples_per_s"] for r in runs if not r["compiled"]}


def to_markdown(r: dict, command: str) -> str:
    hw = r["hardware"]
    g = r["gpu"]
    rows = [
        "## Training input pipeline per DataLoader worker against the paper-size GPU step",
        "",
        f"`{command}` on {hw['cpu_model']} (torch CPU capability {hw['cpu_capability']}; SIMD flags: "
        f"{' '.join(r['simd_flags'])}), one thread, PNG level {r['png_level']}, batch {r['batch']} (one lane per row,"
        f" shuffle buffer 64), flips/rotations on; load average {r['loadavg']} while it ran (rates per CPU-second of"
        f" the process, so the load does not lower them; wall rates in docs/bench_input.json). Pair shards: "
        f"{r['clean_samples']} crops ({r['crops']} per photo) of the {r['kept']} ../shared/train photos with both"
        " sides >= 192 px, every paper task (read from the page cache).",
        "",
        "| tasks | worker: samples per CPU-s | + main process | segment start per task (CPU-s) |",
        "|---|---:|---:|---:|",
    ]
    for m in r["measures"]:
        rows.append(
            f"| {', '.join(m['tasks'])} | {m['worker_samples_per_cpu_s']:.0f} | {m['samples_per_cpu_s']:.0f} |"
            f" {m['segment_start_cpu_s_per_task']:.2f} |"
        )
    mix = r["measures"][-1]
    rows += [
        "",
        f"Paper-size training on one NVIDIA H200 (docs/profile_train_cuda.json): bf16 {g['bf16_b64']:.0f} samples/s "
        f"at 64 images per GPU, {g['bf16_b16']:.0f} at 16, fp32 {g['fp32_b64']:.0f} at 64. At the six-task mix's "
        f"{mix['worker_samples_per_cpu_s']:.0f} samples per worker-second, bf16 at 64 per GPU needs "
        f"{g['bf16_b64'] / mix['worker_samples_per_cpu_s']:.2f} worker cores, fp32 "
        f"{g['fp32_b64'] / mix['worker_samples_per_cpu_s']:.2f} (docs/paper_scale.md).",
        "",
    ]
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, default=Path("../shared/train"))
    ap.add_argument("--crops", type=int, default=4)
    ap.add_argument("--png-level", type=int, default=1, help="the paper-scale plan's level (docs/paper_scale.md)")
    ap.add_argument("--batch", type=int, default=64, help="rows per step (per GPU: 64, docs/training.md)")
    ap.add_argument("--steps", type=int, default=150, help="timed steps per measure, after the buffers are filled")
    ap.add_argument("--seed", type=int, default=20210507)
    ap.add_argument("--out", type=Path, default=None, help="markdown file to update (docs/BENCHMARKS.md)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as ipt.train.data's DataLoader workers
    tmp = Path(tempfile.mkdtemp(prefix="bench_input_"))
    try:
        root, scales = make_shards(args.train, tmp, args.crops, args.png_level)
        man = json.loads((tmp / "clean" / "manifest.json").read_text())
        measures = [measure(root, (t,), scales, args.batch, args.steps, args.seed) for t in ("sr_x2", "sr_x4")]
        measures.append(measure(root, tuple(scales), scales, args.batch, args.steps * 2, args.seed))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    r = {
        "hardware": describe(),
        "simd_flags": sorted(f for f in cpu_flags() if f in SIMD),
        "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "png_level": args.png_level,
        "batch": args.batch,
        "images": man["params"].get("images"),
        "kept": man["params"].get("images", 0) - len(man.get("skipped", [])),
        "crops": args.crops,
        "clean_samples": man["samples"],
        "measures": measures,
        "gpu": gpu_rates(),
    }
    print(json.dumps(r, indent=1))
    if args.out:
        command = "nice -n 19 python benchmarks/bench_input.py --train ../shared/train --out docs/BENCHMARKS.md"
        write_section(args.out, SECTION, to_markdown(r, command))
        (args.out.parent / "bench_input.json").write_text(json.dumps(r, indent=1) + "\n")


if __name__ == "__main__":
    main()
