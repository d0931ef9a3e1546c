"""Registry convention for refiners: ``ipt-<task>-ptgrm``, one version per trained PTG-RM, linked to its base.

What a version holds and how its champion moves: docs/refine.md#use-it (Registry).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from ipt import tracking, versions
from ipt.fileio import file_sha256
from ipt.modeluri import CHECKPOINT_NAME, MODEL_URI_PREFIX, alias_version
from ipt.refine.checkpoint import BASE_FILE, find_base, read_refined
from ipt.refine.config import RefineError
from ipt.registry import CHAMPION, RegistryError, check_report_model, decide, refuse_probe_report, score_of


def refiner_name(task: str) -> str:
    return f"ipt-{task}-ptgrm"


def refiner_tags(obj: dict[str, Any], checkpoint: Path) -> dict[str, str]:
    base, prior = obj["base"], obj["prior"]
    tags = {
        "task": obj["task"],
        "kind": obj["kind"],
        "checkpoint_sha256": file_sha256(checkpoint),
        "base_uri": str(base["uri"]),
        "base_sha256": base["sha256"],
        "prior": prior["name"],
        "prior_sha256": prior["identity"]["sha256"],
        "joint": str("base_state_dict" in obj),
    }
    if base.get("registry"):
        tags["base_model"] = base["registry"]["name"]
        tags["base_version"] = str(base["registry"]["version"])
    return tags


def register_refiner(
    checkpoint: str | Path,
    *,
    tracker: tracking.MlflowTracker,
    report: dict[str, Any] | None = None,
    metric: str = "psnr_y",
    dataset: str | None = None,
    name: str | None = None,
    report_path: str | Path | None = None,
    allow_new_key: bool = False,
) -> dict[str, Any]:
    """Register a refiner checkpoint (with its base file) as a new version of ``ipt-<task>-ptgrm``; the report must
    score this checkpoint and the champion moves as for ``ipt-<task>`` (:func:`ipt.registry.decide`)."""
    checkpoint = Path(checkpoint)
    obj = read_refined(checkpoint)
    task = obj["task"]
    name = name or refiner_name(task)
    tags = refiner_tags(obj, checkpoint)
    score = key = None
    notes: list[str] = []
    if report is not None:
        if report.get("task") not in (None, task):
            raise RegistryError(f"report scores task {report.get('task')!r}, the refiner is for {task!r}")
        refuse_probe_report(report, report_path)
        check, notes = check_report_model(report, checkpoint, tags["checkpoint_sha256"], report_path)
        score, key = score_of(report, metric, dataset)
        tags |= {"score": repr(score), "score_key": key, "report_check": check}
    base_file = find_base(checkpoint, obj["base"], tracker.tracking_uri)
    files: dict[str, Path] = {CHECKPOINT_NAME: checkpoint, BASE_FILE: base_file}
    with tempfile.TemporaryDirectory() as tmp:
        if report is not None:
            files["benchmark.json"] = Path(tmp) / "benchmark.json"
            files["benchmark.json"].write_text(json.dumps(report, indent=1))
        version = versions.register_files(tracker, files, name, tags=tags, task=task)
    with versions.undo_version_on_error(name, version, tracker.tracking_uri):
        before = alias_version(name, CHAMPION, tracker.tracking_uri)
        promoted, reason = decide(
            score, key, before, allow_new_key=allow_new_key, checkpoint_sha256=tags["checkpoint_sha256"]
        )
        if promoted:
            versions.set_alias(name, CHAMPION, version, tracker.tracking_uri)
    return {
        "name": name,
        "version": version,
        "uri": f"{MODEL_URI_PREFIX}{name}/{version}",
        "score": score,
        "score_key": key,
        "promoted": promoted,
        "reason": reason,
        "warnings": notes,
        "champion": version if promoted else (before or {}).get("version"),
        "base": {k: v for k, v in tags.items() if k.startswith("base_")},
    }


__all__ = ["RefineError", "refiner_name", "refiner_tags", "register_refiner"]
