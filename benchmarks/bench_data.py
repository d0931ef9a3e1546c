"""Data-stage throughput: `ipt shard` against PIL decode alone, and pair shards read into training batches.

Source: real JPEGs made from ../shared/train (the T91 and SunHays80 images with both sides >= 192, the crop size,
re-encoded at quality 90), replicated ``--copies`` times under different folder names (different paths, so different
crops) to make the run long enough that process start-up does not dominate. Both rates use the same executor
(spawned worker processes, same count, same files per job): decode-only reads each file and fully decodes it with
PIL; the shard stage does everything (read, decode, convert, crop, PNG, tar, sha256, atomic write, progress record,
manifest).

    python benchmarks/bench_data.py --train ../shared/train --out docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import write_section  # noqa: E402

from ipt.data import clean, pairs, plan  # noqa: E402
from ipt.data.executors import map_unordered  # noqa: E402
from ipt.data.sources import list_source, read_items  # noqa: E402

SECTION = "bench_data"


def make_jpegs(train: Path, dest: Path, copies: int, min_side: int = 192) -> int:
    from PIL import Image

    files = sorted(p for p in train.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    if not files:
        raise SystemExit(f"{train}: no training images")
    n = 0
    for f in files:
        img = Image.open(f)
        if min(img.size) < min_side:  # both rates see only files the stage keeps (a skip never decodes)
            continue
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=90)
        for c in range(copies):
            out = dest / f"copy{c}" / f.parent.name / (f.stem + ".JPEG")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(buf.getvalue())
            n += 1
    return n


def _decode_job(items) -> int:
    from PIL import Image

    n = 0
    for _item, data in read_items(list(items)):
        with Image.open(io.BytesIO(data)) as img:
            img.load()
        n += 1
    return n


def decode_only(src: Path, workers: int, per_job: int) -> float:
    items = list_source(str(src))
    jobs = [tuple(items[i : i + per_job]) for i in range(0, len(items), per_job)]
    t = time.perf_counter()
    n = sum(map_unordered(_decode_job, jobs, executor="process", workers=workers))
    return n / (time.perf_counter() - t)


def shard_rate(src: Path, out: Path, workers: int, per_job: int, crops: int) -> tuple[float, dict]:
    cfg = clean.ShardConfig(source=str(src), out=str(out), images_per_shard=per_job, crops=crops)
    t = time.perf_counter()
    manifest = plan.execute(clean.plan_shard(cfg), executor="process", workers=workers)
    return manifest["params"]["images"] / (time.perf_counter() - t), manifest


def pair_read_rate(folder: Path, batch: int, workers: int, batches: int) -> float:
    import torch
    import webdataset as wds

    from ipt.data.shards import read_manifest, shard_urls

    urls = shard_urls(str(folder), read_manifest(str(folder)))

    def to_tensors(s):
        lq = torch.from_numpy(s["lq.png"].copy()).permute(2, 0, 1).float()
        hr = torch.from_numpy(s["hr.png"].copy()).permute(2, 0, 1).float()
        return lq, hr

    ds = (
        wds.WebDataset(urls, resampled=True, shardshuffle=False, nodesplitter=None)
        .shuffle(256)
        .decode("rgb8")
        .map(to_tensors)
        .batched(batch)
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    it = iter(loader)
    next(it)  # workers started, first batch out: steady state from here
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t)


def run(
    train: Path, copies: int, workers: int, per_job: int, crops: int, batch: int, batches: int, trials: int
) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        n = make_jpegs(train, tmp / "src", copies)
        decodes, shard_rates = [], []
        for t in range(trials):  # interleaved, so drift in the machine's speed hits both rates alike
            decodes.append(decode_only(tmp / "src", workers, per_job))
            out = tmp / ("clean" if t == trials - 1 else f"clean{t}")
            rate, manifest = shard_rate(tmp / "src", out, workers, per_job, crops)
            shard_rates.append(rate)
        ratios = sorted(s / d for s, d in zip(shard_rates, decodes, strict=True))
        decode, shard = statistics.median(decodes), statistics.median(shard_rates)
        t = time.perf_counter()
        cfg = pairs.CorruptConfig("sr_x2", "bicubic_down", {"scale": 2}, clean=str(tmp / "clean"), out=str(tmp / "p"))
        made = plan.execute(pairs.plan_corrupt(cfg), executor="process", workers=workers)
        corrupt = made["samples"] / (time.perf_counter() - t)
        read = pair_read_rate(tmp / "p", batch, workers, batches)
        size = sum(p.stat().st_size for p in (tmp / "clean").glob("*.tar"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from ipt.device import cpu_model  # imports torch: not at module level, which spawned workers re-import

    return {
        "cpu_model": cpu_model(),
        "images": n,
        "kept": n - len(manifest["skipped"]),
        "clean_samples": manifest["samples"],
        "workers": workers,
        "crops": crops,
        "decode_only_img_s": decode,
        "shard_img_s": shard,
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "trials": trials,
        "corrupt_sr_x2_samples_s": corrupt,
        "pair_read_samples_s": read,
        "clean_bytes_per_sample": size / max(manifest["samples"], 1),
        "batch": batch,
    }


def to_markdown(r: dict, command: str) -> str:
    return "\n".join(
        [
            "## Data stages: shard throughput vs decode-only, pair-shard read rate",
            "",
            f"`{command}` on {r['cpu_model']}, {r['workers']} worker processes for every rate. Source: {r['images']}"
            f" JPEGs (q90) made from the ../shared/train images with both sides >= 192 px (T91, SunHays80;"
            f" {r['kept']} kept), {r['crops']} crops each, PNG level 0, 32 files per job.",
            "",
            "| measure | rate |",
            "|---|---|",
            f"| PIL decode only (read + full decode), median of {r['trials']} |"
            f" {r['decode_only_img_s']:.1f} images/s |",
            f"| `ipt shard` (read, decode, crop, PNG, tar, sha256, atomic write, manifest) | {r['shard_img_s']:.1f}"
            f" images/s |",
            f"| **shard / decode-only** (median; all trials: {', '.join(f'{x:.0%}' for x in r['ratios'])}) |"
            f" **{r['ratio']:.0%}** (target >= 70%) |",
            f"| `ipt corrupt --task sr_x2` (MATLAB bicubic per sample) |"
            f" {r['corrupt_sr_x2_samples_s']:.1f} samples/s |",
            f"| pair shards -> training batches of {r['batch']} (WebDataset, DataLoader 2 workers) |"
            f" {r['pair_read_samples_s']:.0f} samples/s |",
            f"| clean shard bytes per 192x192 sample | {r['clean_bytes_per_sample'] / 1024:.0f} KiB |",
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, default=Path("../shared/train"))
    ap.add_argument("--copies", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--per-job", type=int, default=32)
    ap.add_argument("--crops", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--trials", type=int, default=3, help="interleaved repetitions; medians are reported")
    ap.add_argument("--out", type=Path, default=None, help="markdown file to update (docs/BENCHMARKS.md)")
    args = ap.parse_args()
    r = run(args.train, args.copies, args.workers, args.per_job, args.crops, args.batch, args.batches, args.trials)
    print(json.dumps(r, indent=1))
    if args.out:
        command = "python benchmarks/bench_data.py --train ../shared/train --out docs/BENCHMARKS.md"
        write_section(args.out, SECTION, to_markdown(r, command))
        (args.out.parent / "bench_data.json").write_text(json.dumps(r, indent=1) + "\n")


if __name__ == "__main__":
    main()
