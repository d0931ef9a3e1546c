"""The per-sample costs the paper-scale plan is priced from: bytes and seconds per sample of each data stage.

On real photographs (../shared/train), one thread (one Dask/process worker): for each PNG level, the clean shard
stage's seconds per source image (decode, crop, encode) and bytes per 192x192 clean crop, and for each of the six
paper tasks the corrupt stage's seconds and bytes per (LQ, HR) pair, exactly as ``ipt shard`` / ``ipt corrupt``
make them (:func:`ipt.data.encoding.png_encode`, the registered corruption, the seeded crop).

    python benchmarks/bench_cost.py --train ../shared/train --out docs/BENCHMARKS.md

Writes ``docs/bench_cost.json`` (read by ``python -m flows.pipeline --dry-run --cost``) and a section of the
markdown file.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import save_results  # noqa: E402

import corruptions  # noqa: E402
from ipt.data.encoding import png_decode, png_encode  # noqa: E402
from ipt.device import describe  # noqa: E402

SECTION = "bench_cost"
TASKS = {  # the paper's six, with params.yaml's parameters
    "sr_x2": ("bicubic_down", {"scale": 2}, 2),
    "sr_x3": ("bicubic_down", {"scale": 3}, 3),
    "sr_x4": ("bicubic_down", {"scale": 4}, 4),
    "denoise_s30": ("gaussian_noise", {"sigma": 30}, 1),
    "denoise_s50": ("gaussian_noise", {"sigma": 50}, 1),
    "derain": (
        "rain_streaks",
        {"density": 0.0027, "length": [15, 35], "angle": [-20, 20], "intensity": [0.3, 0.6], "width": 0.6},
        1,
    ),
}
LEVELS = (0, 1, 3, 6, 9)
CROP, PATCH = 192, 48


def source_files(root: Path, n: int) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    return files[:n]


def jpeg_bytes(path: Path) -> bytes:
    """The source as an ImageNet-like JPEG (q90), so decode cost is a JPEG's, as ILSVRC2012's files are."""
    from PIL import Image

    with Image.open(path) as img:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def crops_of(img: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    h, w = img.shape[:2]
    out = []
    for _ in range(k):
        t, left = int(rng.integers(0, h - CROP + 1)), int(rng.integers(0, w - CROP + 1))
        out.append(np.ascontiguousarray(img[t : t + CROP, left : left + CROP]))
    return out


def measure(train: Path, n_images: int, crops: int) -> dict:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    jpegs, pixels = [], []
    for p in source_files(train, 4 * n_images):
        data = jpeg_bytes(p)
        h, w = png_decode(data).shape[:2]
        if min(h, w) >= CROP:
            jpegs.append(data)
            pixels.append(h * w)
        if len(jpegs) == n_images:
            break
    res: dict = {
        "hardware": describe(),
        "images": len(jpegs),
        "crops_per_image": crops,
        "mean_source_pixels": statistics.mean(pixels),
        "levels": list(LEVELS),
        "clean": {},
        "pairs": {},
    }
    t0 = time.perf_counter()
    decoded = [png_decode(data) for data in jpegs]
    res["decode_s_per_image"] = (time.perf_counter() - t0) / len(jpegs)
    clean_crops = [c for i, img in enumerate(decoded) for c in crops_of(img, crops, np.random.default_rng(i))]
    for level in LEVELS:
        t0 = time.perf_counter()
        nbytes = sum(len(png_encode(c, level)) for c in clean_crops)
        dt = time.perf_counter() - t0
        n = len(clean_crops)
        res["clean"][str(level)] = {"s_per_crop": dt / n, "bytes_per_sample": nbytes / n}
        print(f"clean level {level}: {dt / n * 1e3:.2f} ms/crop, {nbytes / n / 1024:.1f} KiB")
    for name, params, _ in TASKS.values():  # warm-up: first calls of each corruption pay for allocations
        x = torch.rand(1, 3, CROP, CROP)
        corruptions.apply(name, x, generator=torch.Generator().manual_seed(0), **params)
        png_encode(clean_crops[0], 9)
    for task, (name, params, scale) in TASKS.items():
        res["pairs"][task] = {}
        hr_size = PATCH * scale
        for level in LEVELS:
            t0 = time.perf_counter()
            nbytes = 0
            for i, full in enumerate(clean_crops):
                png_decode(png_encode(full, 0))  # the stage decodes each clean crop
                t, left = (int(v) for v in rng.integers(0, CROP - hr_size + 1, size=2))
                hr = np.ascontiguousarray(full[t : t + hr_size, left : left + hr_size])
                x = torch.from_numpy(hr).permute(2, 0, 1)[None].float() / 255.0
                gen = torch.Generator().manual_seed(i)
                lq = corruptions.quantize_uint8(corruptions.apply(name, x, generator=gen, **params))
                lq = np.ascontiguousarray(lq[0].permute(1, 2, 0).numpy())
                nbytes += len(png_encode(hr, level)) + len(png_encode(lq, level))
            dt = time.perf_counter() - t0
            n = len(clean_crops)
            res["pairs"][task][str(level)] = {"s_per_sample": dt / n, "bytes_per_sample": nbytes / n}
        r0 = res["pairs"][task]["0"]
        print(f"{task}: level 0 {r0['s_per_sample'] * 1e3:.2f} ms/pair, {r0['bytes_per_sample'] / 1024:.1f} KiB/pair")
    return res


def to_markdown(r: dict, command: str) -> str:
    hw = r["hardware"]
    lines = [
        "## Per-sample costs of the data stages (what the paper-scale plan is priced from)",
        "",
        f"Command: `{command}`",
        "",
        f"{hw['cpu_model']} (torch CPU capability {hw['cpu_capability']}, native bf16: {hw['cpu_bf16']}), one "
        f"thread = one worker; {r['images']} photographs of ../shared/train as JPEG q90 (mean "
        f"{r['mean_source_pixels'] / 1e3:.0f} kpixel), {r['crops_per_image']} "
        f"crops of {CROP}x{CROP} each. Decoding one source JPEG: {r['decode_s_per_image'] * 1e3:.1f} ms (these "
        "photographs are larger than ImageNet's, so the plan's decode time is an upper bound). Per clean crop: its "
        "PNG; per pair: decode the clean crop, the seeded HR patch, the corruption, two PNGs. ms / KiB per sample, "
        "each the mean over every crop after a warm-up pass.",
        "",
        "| PNG level | clean ms / KiB | " + " | ".join(f"{t} ms / KiB" for t in TASKS) + " |",
        "|---:|---:|" + "---:|" * len(TASKS),
    ]
    for level in r["levels"]:
        c = r["clean"][str(level)]
        cells = [str(level), f"{c['s_per_crop'] * 1e3:.2f} / {c['bytes_per_sample'] / 1024:.1f}"]
        for t in TASKS:
            p = r["pairs"][t][str(level)]
            cells.append(f"{p['s_per_sample'] * 1e3:.2f} / {p['bytes_per_sample'] / 1024:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, default=Path("../shared/train"))
    ap.add_argument("--images", type=int, default=150)
    ap.add_argument("--crops", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    r = measure(args.train, args.images, args.crops)
    command = f"python benchmarks/bench_cost.py --train {args.train} --images {args.images} --crops {args.crops}" + (
        f" --out {args.out}" if args.out else ""
    )
    md = to_markdown(r, command)
    print(md)
    if args.out:
        save_results(args.out, SECTION, "cpu", md, r)


if __name__ == "__main__":
    main()
