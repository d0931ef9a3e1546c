"""A run priced before it starts: per stage, the samples, the bytes written and the hours at measured rates.

The plan and the rates: docs/paper_scale.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class CostError(ValueError):
    """A plan or a rates file that cannot price the run (named in the message)."""


@dataclass(frozen=True)
class Row:
    stage: str
    samples: float
    bytes: float  # written by the stage
    hours: float  # wall-clock, at the given workers / GPUs
    resource: str  # what the hours run on


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CostError(f"{path}: rates file not found (make it with the benchmark named in the plan)") from None
    except ValueError as e:
        raise CostError(f"{path}: not JSON ({e})") from None


def load_plan(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    try:
        plan = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise CostError(f"{p}: plan file not found") from None
    except yaml.YAMLError as e:
        raise CostError(f"{p}: not YAML ({str(e).splitlines()[0]})") from None
    for key in ("source", "shard", "corrupt", "pretrain", "finetune", "rates"):
        if not isinstance((plan or {}).get(key), dict):
            raise CostError(f"{p}: needs a '{key}' section")
    return plan


def _gpu_rate(train: dict[str, Any], size: str, precision: str, where: Path) -> tuple[float, str]:
    for run in train.get("runs", []):
        if run.get("size") == size and run.get("precision") == precision:
            gpu = train.get("hardware", {}).get("cuda", "GPU")
            return float(run["samples_per_s"]), f"{gpu}: {run['samples_per_s']:.0f} samples/s ({precision})"
    raise CostError(f"{where}: no measured {size}/{precision} training rate")


def price(plan: dict[str, Any], root: Path, *, workers: int, gpus: int, png_level: int | None = None) -> list[Row]:
    """The rows of the plan at ``workers`` data workers and ``gpus`` GPUs (relative rate paths under ``root``)."""
    if workers < 1 or gpus < 1:
        raise CostError(f"workers and gpus must be >= 1, got {workers} and {gpus}")
    rates = plan["rates"]
    data_path, train_path = root / rates["data"], root / rates["train"]
    data, train = _read_json(data_path), _read_json(train_path)
    level = str(plan["shard"].get("png_level", 0) if png_level is None else png_level)
    if level not in data.get("clean", {}):
        raise CostError(f"{data_path}: no measurement at PNG level {level} (measured: {', '.join(data['clean'])})")
    images = float(plan["source"]["images"])
    crops = images * float(plan["shard"]["crops"])
    cpu = f"{workers} x {data.get('hardware', {}).get('cpu_model', 'CPU')} worker"
    clean = data["clean"][level]
    rows = [
        Row(
            "shard",
            crops,
            crops * clean["bytes_per_sample"],
            (images * data["decode_s_per_image"] + crops * clean["s_per_crop"]) / workers / 3600,
            cpu,
        )
    ]
    for task in plan["corrupt"]["tasks"]:
        if task not in data.get("pairs", {}):
            raise CostError(f"{data_path}: no measured corrupt rate for {task}")
        pair = data["pairs"][task][level]
        rows.append(
            Row(
                f"corrupt@{task}",
                crops,
                crops * pair["bytes_per_sample"],
                crops * pair["s_per_sample"] / workers / 3600,
                cpu,
            )
        )
    size = plan["pretrain"].get("model_size", "paper")
    rate, what = _gpu_rate(train, size, plan["pretrain"].get("precision", "bf16"), train_path)
    seen = crops * float(plan["pretrain"]["epochs"])
    rows.append(Row("pretrain", seen, 0.0, seen / (rate * gpus) / 3600, f"{gpus} x {what}"))
    rate, what = _gpu_rate(train, size, plan["finetune"].get("precision", "bf16"), train_path)
    for task in plan["corrupt"]["tasks"]:
        seen = crops * float(plan["finetune"]["epochs"])
        rows.append(Row(f"finetune@{task}", seen, 0.0, seen / (rate * gpus) / 3600, f"{gpus} x {what}"))
    bench = plan.get("benchmark") or {}
    if bench and rates.get("benchmark"):
        tiling = _read_json(root / rates["benchmark"])
        s_img = float(tiling["runs"]["official/fp32"]["seconds_per_image"])
        for task, n in (bench.get("images") or {}).items():
            rows.append(
                Row(
                    f"benchmark@{task}",
                    float(n),
                    0.0,
                    n * s_img / 3600,
                    f"1 GPU, official tiling fp32, {s_img:.2f} s/image",
                )
            )
    return rows


def _size(n: float) -> str:
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= f:
            return f"{n / f:.2f} {unit}"
    return f"{n:.0f} B" if n else "-"


def _count(n: float) -> str:
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= f:
            return f"{n / f:.2f}{unit}"
    return f"{n:.0f}"


def storage_by_level(plan: dict[str, Any], root: Path) -> list[tuple[int, float, float, float]]:
    """``(level, clean bytes, pair bytes, CPU-hours of shard + corrupt)`` for every measured PNG level: the data
    rows of :func:`price` at each level, on one worker."""
    out = []
    for level in _read_json(root / plan["rates"]["data"])["levels"]:
        rows = price(plan, root, workers=1, gpus=1, png_level=int(level))
        clean = sum(r.bytes for r in rows if r.stage == "shard")
        pairs = sum(r.bytes for r in rows if r.stage.startswith("corrupt@"))
        cpu_h = sum(r.hours for r in rows if r.stage == "shard" or r.stage.startswith("corrupt@"))
        out.append((int(level), clean, pairs, cpu_h))
    return out


def report(plan: dict[str, Any], root: Path, *, workers: int, gpus: int, png_level: int | None = None) -> str:
    rows = price(plan, root, workers=workers, gpus=gpus, png_level=png_level)
    level = plan["shard"].get("png_level", 0) if png_level is None else png_level
    lines = [
        f"cost of {plan['source'].get('name', 'the source')} ({_count(plan['source']['images'])} images x "
        f"{plan['shard']['crops']} crops), PNG level {level}, {workers} data worker(s), {gpus} GPU(s):",
        "",
        f"{'stage':<22} {'samples':>9} {'written':>10} {'hours':>9}  on",
    ]
    for r in rows:
        lines.append(f"{r.stage:<22} {_count(r.samples):>9} {_size(r.bytes):>10} {r.hours:>9.2f}  {r.resource}")
    data_h = sum(r.hours for r in rows if r.stage.startswith(("shard", "corrupt")))
    gpu_h = sum(r.hours for r in rows if r.stage.startswith(("pretrain", "finetune", "benchmark")))
    lines += [
        "",
        f"written: {_size(sum(r.bytes for r in rows))}; data stages {data_h:.1f} h on {workers} worker(s); "
        f"training and scoring {gpu_h:.1f} h on {gpus} GPU(s) ({gpu_h * gpus:.0f} GPU-hours; linear DDP scaling "
        "assumed beyond the measured single GPU)",
        "",
        "storage and data-stage CPU time by PNG level (clean crops + the six tasks' pairs):",
    ]
    for lv, clean, pairs, cpu_h in storage_by_level(plan, root):
        lines.append(
            f"  level {lv}: clean {_size(clean)}, pairs {_size(pairs)}, total {_size(clean + pairs)}; "
            f"{cpu_h:.0f} CPU-hours ({cpu_h / workers:.1f} h on {workers} worker(s))"
        )
    return "\n".join(lines)
