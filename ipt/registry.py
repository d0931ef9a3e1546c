"""The model registry convention: one registered model per task, a champion that only moves on a better score.

- ``ipt-<task>`` (``ipt-sr_x2`` ...): each version holds ``model.pt`` (the single-task project checkpoint, what
  ``models:/ipt-sr_x2@champion`` resolves to), ``official.pt`` (the released single-task layout; not for
  ``image_residual`` models, which the official code cannot run), and the task's
  ``head.pt`` and ``tail.pt`` as separate artifacts (state dicts with their official key names), plus the
  benchmark report it was scored with.
- ``ipt-pretrained``: the multi-task model; ``model.pt`` only.
- Alias ``champion`` moves to a new version only when its score (mean ``psnr_y`` over the report's datasets, or
  one dataset's) beats the current champion's, scored with the same protocol and datasets. The newest version is
  ``models:/<name>/latest`` (MLflow reserves that name). The decision and its reason are returned (and written
  by ``ipt register --out``).

No mlflow import here: the client calls are in :mod:`ipt.tracking`.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from ipt import tracking
from ipt.checkpoint import extract_task, load_model, official_state_dict, save_checkpoint

CHAMPION = "champion"


class RegistryError(ValueError):
    """A registration request that cannot be carried out; the message names the file or model."""


def score_of(report: dict[str, Any], metric: str = "psnr_y", dataset: str | None = None) -> tuple[float, str]:
    """(score, score key) from an ``ipt benchmark`` report: one dataset's ``metric`` or the mean over datasets.

    The key (protocol, metric, datasets) says what the number means; scores with different keys do not compare.
    """
    datasets = report.get("datasets") or {}
    if not datasets:
        raise RegistryError("benchmark report has no datasets")
    names = [dataset] if dataset else sorted(datasets)
    missing = [n for n in names if n not in datasets or metric not in datasets[n]]
    if missing:
        raise RegistryError(f"benchmark report lacks {metric} for {missing}; it has {sorted(datasets)}")
    score = sum(float(datasets[n][metric]) for n in names) / len(names)
    return score, f"{report.get('protocol', '?')}:{metric}:{','.join(names)}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def register(
    checkpoint: str | Path,
    *,
    task: str | None = None,
    name: str | None = None,
    report: dict[str, Any] | None = None,
    report_path: str | Path | None = None,
    metric: str = "psnr_y",
    dataset: str | None = None,
    tracker: tracking.MlflowTracker,
) -> dict[str, Any]:
    """Register ``checkpoint`` (for ``task``, or the whole multi-task model) and decide the champion alias."""
    checkpoint = Path(checkpoint)
    model = load_model(checkpoint, task)
    name = name or (f"ipt-{task}" if task else "ipt-pretrained")
    tags = {"checkpoint_sha256": _sha256(checkpoint), "source": str(checkpoint)}
    score = key = None
    if report is not None:
        score, key = score_of(report, metric, dataset)
        tags.update(score=f"{score:.6f}", score_key=key)
        if task and report.get("task") not in (None, task):
            raise RegistryError(f"{report_path or 'report'}: scores task {report.get('task')!r}, not {task!r}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        files: dict[str, Path] = {}
        if task:
            single = extract_task(model, task)
            tags["task"] = task
            files[tracking.CHECKPOINT_NAME] = save_checkpoint(d / "model.pt", single, meta={"task": task})
            sd = official_state_dict(model, task)
            if not model.spec.image_residual:  # the official code cannot run an image-residual model
                torch.save(sd, d / "official.pt")
                files["official.pt"] = d / "official.pt"
            for part in ("head", "tail"):
                torch.save({k: v for k, v in sd.items() if k.startswith(f"{part}.0.")}, d / f"{part}.pt")
                files[f"{part}.pt"] = d / f"{part}.pt"
        else:
            files[tracking.CHECKPOINT_NAME] = save_checkpoint(
                d / "model.pt", model, meta={"tasks": model.spec.task_names}
            )
        if report is not None:
            (d / "benchmark.json").write_text(json.dumps(report, indent=1))
            files["benchmark.json"] = d / "benchmark.json"
        version = tracking.register_files(tracker, files, name, tags=tags)
    uri = tracker.tracking_uri
    before = tracking.alias_version(name, CHAMPION, uri)
    promoted, reason = _decide(score, key, before)
    if promoted:
        tracking.set_alias(name, CHAMPION, version, uri)
    return {
        "name": name,
        "version": version,
        "score": score,
        "score_key": key,
        "champion_before": before,
        "champion": version if promoted else (before or {}).get("version"),
        "promoted": promoted,
        "reason": reason,
        "uri": f"models:/{name}/{version}",
    }


def _decide(score: float | None, key: str | None, champion: dict[str, Any] | None) -> tuple[bool, str]:
    if score is None:
        return (champion is None, "first version (no score given)" if champion is None else "no score given")
    if champion is None:
        return True, "no champion yet"
    tags = champion["tags"]
    if "score" not in tags:
        return True, f"champion v{champion['version']} has no score"
    if tags.get("score_key") != key:
        return True, f"champion v{champion['version']} was scored as {tags.get('score_key')!r}, not {key!r}; rescored"
    old = float(tags["score"])
    if score > old:
        return True, f"{score:.4f} beats champion v{champion['version']} ({old:.4f})"
    return False, f"{score:.4f} does not beat champion v{champion['version']} ({old:.4f})"
