"""A run folder: step checkpoints (atomic, resumable), the final weights, and the per-step metrics files.

Layout and resume rules: docs/training.md#run-folder-checkpoints-resume.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ipt import fileio
from ipt.checkpoint import CheckpointError, read_state, save_checkpoint
from ipt.fileio import atomic_write
from ipt.model import IPT
from ipt.train.errors import TrainingError

CHECKPOINTS = "checkpoints"
FINAL = "model.pt"
BEST = "best.pt"
VALIDATION_JSONL = "validation.jsonl"
VALIDATION_CSV = "validation.csv"
OFFICIAL = "official.pt"
CONFIG = "config.json"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
COLUMNS = ("step", "task", "loss", "l1", "contrastive", "lr", "grad_norm", "samples_per_s")
_STEP_RE = re.compile(r"^step-(\d{8})\.pt$")


def write_json(path: Path, obj: Any) -> None:
    """A training folder's JSON files: indent 1, sorted keys."""
    fileio.write_json(path, obj, indent=1, sort_keys=True)


def save_tensors(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


# ------------------------------------------------------------------------------------------------ checkpoints


def checkpoint_path(run: Path, step: int) -> Path:
    return Path(run) / CHECKPOINTS / f"step-{step:08d}.pt"


def list_checkpoints(run: Path) -> list[tuple[int, Path]]:
    folder = Path(run) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(run: Path) -> Path | None:
    found = list_checkpoints(run)
    return found[-1][1] if found else None


def prune_checkpoints(run: Path, keep: int) -> None:
    """Keep the ``keep`` newest step checkpoints (at least the newest one)."""
    for _, p in list_checkpoints(run)[: -max(1, keep)]:
        p.unlink(missing_ok=True)


def remove_temporaries(run: Path) -> None:
    """Half-written files a killed run left behind (``.<name>.<random>.tmp``)."""
    for folder in (Path(run), Path(run) / CHECKPOINTS):
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):
                p.unlink(missing_ok=True)


def save_training_checkpoint(path: Path, model: IPT, train: dict[str, Any], meta: dict[str, Any]) -> Path:
    return save_checkpoint(path, model, meta=meta, train=train)


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    try:
        obj = read_state(path)
    except CheckpointError as e:
        raise TrainingError(str(e)) from None
    if "train" not in obj or "state_dict" not in obj:
        raise TrainingError(f"{path}: not a training checkpoint (no 'train' entry)")
    return obj


# ------------------------------------------------------------------------------------------------ RNG states


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's global RNG states, as tensors and plain values (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos)}
        | {"has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ------------------------------------------------------------------------------------------------ metrics


def read_metrics(run: Path, name: str = METRICS_JSONL) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl`` (or ``name``); a line cut short by a killed writer is ignored."""
    path = Path(run) / name
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


class MetricsLog:
    """Appends one row per step to metrics.jsonl and metrics.csv (or the ``files`` named, with ``columns``); on
    (re)start keeps only rows up to ``step``."""

    def __init__(
        self,
        run: Path,
        step: int,
        files: tuple[str, str] = (METRICS_JSONL, METRICS_CSV),
        columns: tuple[str, ...] = COLUMNS,
    ) -> None:
        self.run, self.columns = Path(run), columns
        jsonl, csv_name = files
        rows = [r for r in read_metrics(self.run, jsonl) if isinstance(r.get("step"), int) and r["step"] <= step]
        atomic_write(self.run / jsonl, lambda f: f.write("".join(_jsonl(r, columns) for r in rows).encode()))
        head = [{c: c for c in columns}, *rows]
        atomic_write(self.run / csv_name, lambda f: f.write(_csv(head, columns).encode()))
        self._jsonl = open(self.run / jsonl, "a")  # noqa: SIM115 - closed by close()
        self._csv = open(self.run / csv_name, "a", newline="")  # noqa: SIM115

    def append(self, row: dict[str, Any]) -> None:
        self._jsonl.write(_jsonl(row, self.columns))
        self._csv.write(_csv([row], self.columns))
        self._jsonl.flush()
        self._csv.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._csv.close()


def _jsonl(row: dict[str, Any], columns: tuple[str, ...]) -> str:
    return json.dumps({k: row[k] for k in columns if k in row}) + "\n"


def _csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writerows(rows)
    return buf.getvalue()
