"""Documentation tooling: a figure to judge synthetic rain against Rain100L, plus PSNR of both against clean.

    python docs/make_corruption_figures.py --root ../shared/benchmarks            # writes docs/images/*.png
    python docs/make_corruption_figures.py --params '{"density": 0.01}' --no-figure  # stats only, for tuning

Columns of the figure: Rain100L rainy | Rain100L clean | the same clean image with our ``rain_streaks``.
The rain parameters default to the function's defaults (the values recommended for ``params.yaml``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

from corruptions import apply, get, sample_generator  # noqa: E402

FIGURE_IDS = (1, 15, 30, 77)  # Rain100L pairs shown (rain-NNN.png / norain-NNN.png)
CROP = 200
ZOOM_IDS = (1, 30)  # 100x100 crops at (100, 100), enlarged 3x without interpolation
SEED = 20210507


def default_rain_params() -> dict:
    sig = inspect.signature(get("rain_streaks").fn)
    return {n: p.default for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY and n != "generator"}


def load(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def synth_rain(clean: np.ndarray, params: dict, key: str) -> np.ndarray:
    x = torch.from_numpy(clean).permute(2, 0, 1)[None].float() / 255.0
    y = apply("rain_streaks", x, generator=sample_generator(SEED, "derain", key), **params)
    return torch.floor(y[0] * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def stats(root: Path, params: dict) -> dict:
    """Mean RGB PSNR (0..255) against clean: Rain100L rainy vs ours, over all pairs."""
    real, ours = [], []
    for rainy_path in sorted((root / "rainy").glob("rain-*.png")):
        key = rainy_path.stem.split("-")[1]
        clean = load(root / "norain" / f"norain-{key}.png")
        real.append(psnr(load(rainy_path), clean))
        ours.append(psnr(synth_rain(clean, params, key), clean))
    if not real:
        raise FileNotFoundError(f"no Rain100L pairs under {root}")
    return {"pairs": len(real), "rain100l_psnr": float(np.mean(real)), "ours_psnr": float(np.mean(ours))}


def figure(root: Path, params: dict, out: Path) -> None:
    rows = []
    for n in FIGURE_IDS:
        key = f"{n:03d}"
        clean = load(root / "norain" / f"norain-{key}.png")
        tiles = [load(root / "rainy" / f"rain-{key}.png"), clean, synth_rain(clean, params, key)]
        rows.append(np.concatenate([t[:CROP, :CROP] for t in tiles], axis=1))
    grid = np.concatenate(rows, axis=0)
    header = Image.new("RGB", (grid.shape[1], 18), "white")
    draw = ImageDraw.Draw(header)
    for i, label in enumerate(("Rain100L rainy", "Rain100L clean", "clean + our rain_streaks")):
        draw.text((i * CROP + 6, 3), label, fill="black")
    canvas = Image.new("RGB", (grid.shape[1], grid.shape[0] + 18), "white")
    canvas.paste(header, (0, 0))
    canvas.paste(Image.fromarray(grid), (0, 18))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, optimize=True)


def zoom_figure(root: Path, params: dict, out: Path) -> None:
    rows = []
    for n in ZOOM_IDS:
        key = f"{n:03d}"
        clean = load(root / "norain" / f"norain-{key}.png")
        tiles = [load(root / "rainy" / f"rain-{key}.png"), synth_rain(clean, params, key)]
        rows.append(np.concatenate([t[100:200, 100:200] for t in tiles], axis=1))
    grid = np.concatenate(rows, axis=0).repeat(3, axis=0).repeat(3, axis=1)
    Image.fromarray(grid).save(out, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DOCS.parent.parent / "shared" / "benchmarks")
    ap.add_argument("--out", type=Path, default=DOCS / "images" / "rain_samples.png")
    ap.add_argument("--params", default="{}", help="JSON overrides of the rain_streaks defaults")
    ap.add_argument("--no-figure", action="store_true")
    args = ap.parse_args()
    params = default_rain_params() | json.loads(args.params)
    root = args.root / "Rain100L"
    if not args.no_figure:
        figure(root, params, args.out)
        zoom = args.out.with_name(args.out.stem + "_zoom.png")
        zoom_figure(root, params, zoom)
        print(f"wrote {args.out} and {zoom}")
    print(json.dumps({"params": params, **stats(root, params)}, default=list))


if __name__ == "__main__":
    main()
