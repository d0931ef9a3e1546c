"""The pipeline's summary: model vs baseline Y-PSNR per task and dataset, from the committed benchmark reports."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def summary(workdir: Path, tasks: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per (task, dataset): model and baseline Y-PSNR from metrics/benchmark and metrics/baseline."""
    rows = []
    bench = workdir / "metrics" / "benchmark"
    names = list(tasks) if tasks is not None else sorted(p.stem for p in bench.glob("*.json"))
    for t in names:
        try:
            model = json.loads((bench / f"{t}.json").read_text())
            base = json.loads((workdir / "metrics" / "baseline" / f"{t}.json").read_text())
        except (OSError, ValueError):
            continue
        for ds, r in model.get("datasets", {}).items():
            b = base.get("datasets", {}).get(ds, {}).get("psnr_y")
            total = r.get("images_total") or r.get("images")
            images = f"{r.get('images')} of {total}" if total != r.get("images") else str(total)
            rows.append({"task": t, "dataset": ds, "images": images, "model": r["psnr_y"], "baseline": b})
    return rows


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: task, dataset, images scored (``10 of 14``: make run's subset, not the paper's full-set protocol),
    model and baseline Y-PSNR, the gain, and whether the model beats the baseline."""
    out = [
        "| task | dataset | images | model Y-PSNR | baseline Y-PSNR | gain (dB) | beats baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = r["baseline"]
        gain = "" if b is None else f"{r['model'] - b:+.2f}"
        verdict = "" if b is None else ("yes" if r["model"] > b else "**NO**")
        base = "" if b is None else f"{b:.2f}"
        row = (
            f"| {r['task']} | {r['dataset']} | {r.get('images', '')} | {r['model']:.2f} | {base} | {gain} | {verdict} |"
        )
        out.append(row)
    return "\n".join(out) + "\n"


def report(rows: Sequence[dict[str, Any]]) -> tuple[str, list[str]]:
    """The summary table and one line per (task, dataset) whose model does not beat its baseline."""
    losers = [
        f"{r['task']} on {r['dataset']}: {r['model']:.2f} dB does not beat the baseline's {r['baseline']:.2f} dB"
        for r in rows
        if r["baseline"] is not None and r["model"] <= r["baseline"]
    ]
    return summary_table(rows), losers
