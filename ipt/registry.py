"""The model registry convention: one registered model per task, a champion that only moves on a better score.

What a version holds, the report check and the score key: docs/usage.md#pretrain-fine-tune-register.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from ipt import tracking, versions
from ipt.checkpoint import extract_task, load_model, official_state_dict, save_checkpoint
from ipt.errors import IPTError
from ipt.fileio import file_sha256
from ipt.modeluri import CHECKPOINT_NAME, MODEL_URI_PREFIX, alias_version
from ipt.tasks import BASELINES, paper_kind

CHAMPION = "champion"
TIE_DB = 1e-6  # scores within this of the champion's tie (older versions stored 6 decimals)
BASELINE_MODELS = (*BASELINES, "baseline")  # what a baseline report records as its model (`--model baseline`)


class RegistryError(IPTError):
    """A registration request that cannot be carried out; the message names the file or model."""


def _short_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def read_report(path: str | Path) -> dict[str, Any]:
    """An ``ipt benchmark`` JSON report; :class:`RegistryError` naming the file when it is unreadable or no report."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise RegistryError(f"{path}: cannot read the benchmark report ({e})") from None
    if not isinstance(report, dict) or not isinstance(report.get("datasets"), dict):
        raise RegistryError(f"{path}: not an `ipt benchmark` report (a JSON object with 'datasets')")
    return report


def _noise_seeded(task: str) -> bool:
    """Whether the benchmark draws ``task``'s inputs from the noise seed (the denoising tasks)."""
    kind = paper_kind(task)  # a custom task: its corruption spec (seed included) is in the key instead
    return kind is not None and kind[0] == "denoise"


def score_key(report: dict[str, Any], metric: str, names: list[str]) -> str:
    """What makes two scores comparable, as ``name=value`` parts joined by ``|``.

    ``task``, ``protocol``, ``metric``, ``sets`` (each dataset with its image count), ``images`` (a hash of the image
    names per dataset, when the report lists them in ``per_image``) and what made the inputs: ``inputs`` (the name
    and a hash of a custom task's corruption spec, seed included) or ``seed`` (a denoising task's noise seed;
    ``unrecorded`` in reports that predate it). Tiling and precision are left out (see the module docstring).
    """
    datasets = report["datasets"]
    sets, images = [], {}
    for n in names:
        block = datasets[n]
        per_image = block.get("per_image")
        count = block.get("images", len(per_image) if per_image is not None else None)
        if count is None:
            raise RegistryError(f"benchmark report does not say how many images of {n} it scored")
        if per_image is not None:
            if len(per_image) != count:
                raise RegistryError(f"benchmark report: {n} says {count} images but lists {len(per_image)}")
            images[n] = sorted(str(r.get("name")) for r in per_image)
        sets.append(f"{n}:{count}")
    parts = [f"task={report.get('task', '?')}", f"protocol={report.get('protocol', '?')}", f"metric={metric}"]
    parts.append(f"sets={','.join(sets)}")
    if images:
        parts.append(f"images={_short_hash(images)}")
    if report.get("corruption"):
        parts.append(f"inputs={report['corruption'].get('name', '?')}#{_short_hash(report['corruption'])}")
    elif _noise_seeded(str(report.get("task") or "")):
        parts.append(f"seed={report.get('seed', 'unrecorded')}")
    return "|".join(parts)


def score_of(report: dict[str, Any], metric: str = "psnr_y", dataset: str | None = None) -> tuple[float, str]:
    """(score, score key) from an ``ipt benchmark`` report: one dataset's ``metric`` or the mean over datasets.

    The key (:func:`score_key`: task, protocol, metric, datasets, the images scored and what made the inputs) says
    what the number means; scores with different keys do not compare.
    """
    datasets = report.get("datasets") or {}
    if not datasets:
        raise RegistryError("benchmark report has no datasets")
    names = [dataset] if dataset else sorted(datasets)
    missing = [n for n in names if n not in datasets or metric not in datasets[n]]
    if missing:
        raise RegistryError(f"benchmark report lacks {metric} for {missing}; it has {sorted(datasets)}")
    score = sum(float(datasets[n][metric]) for n in names) / len(names)
    if not math.isfinite(score):
        bad = [n for n in names if not math.isfinite(float(datasets[n][metric]))]
        raise RegistryError(f"benchmark report: {metric} is not a finite number for {bad}; a NaN score never competes")
    return score, score_key(report, metric, names)


def check_report_model(
    report: dict[str, Any], checkpoint: Path, checkpoint_sha256: str, report_path: str | Path | None = None
) -> tuple[str, list[str]]:
    """Is ``report`` a score of ``checkpoint``? Returns (how it was checked, warnings); raises :class:`RegistryError`.

    ``sha256``: the report's ``model_sha256`` is the checkpoint file's. Reports without that field (written before
    ``ipt benchmark`` recorded it): ``path`` when their ``model`` path, resolved against the current directory, is
    the checkpoint; ``unchecked`` for a ``models:/`` URI; both with a warning. A baseline report is refused.
    """
    where = str(report_path) if report_path else "benchmark report"
    model = report.get("model")
    if model in BASELINE_MODELS:
        raise RegistryError(
            f"{where}: scores the {model!r} baseline, not {checkpoint}; benchmark the checkpoint "
            f"(ipt benchmark --model {checkpoint}) and register that report"
        )
    recorded = report.get("model_sha256")
    if recorded:
        if str(recorded).lower() != checkpoint_sha256:
            raise RegistryError(
                f"{where}: scored weights with sha256 {str(recorded)[:12]}..., but {checkpoint} has sha256 "
                f"{checkpoint_sha256[:12]}...; it is not a score of this checkpoint"
            )
        return "sha256", []
    if not model:
        raise RegistryError(f"{where}: records neither model nor model_sha256; cannot tell what it scored")
    if str(model).startswith(MODEL_URI_PREFIX):
        return "unchecked", [f"{where} records no model_sha256 and scored {model}; not checked against {checkpoint}"]
    scored, ours = Path(model).expanduser().resolve(), checkpoint.expanduser().resolve()
    if scored != ours:
        raise RegistryError(
            f"{where}: scored {model!r} ({scored}), not {checkpoint} ({ours}); the report records no "
            f"model_sha256, so the paths were compared (relative ones against the current directory)"
        )
    return "path", [
        f"{where} records no model_sha256: matched to {checkpoint} by path only (the file may have changed since "
        f"it was scored)"
    ]


def refuse_probe_report(report: dict[str, Any], report_path: str | Path | None) -> None:
    """A report made to ask a question of the model, not to score it as it runs (``ipt benchmark --inputs`` on
    another task's inputs, ``--prior-probe zero``), never registers a version: RegistryError naming the flag."""
    where = report_path or "report"
    if report.get("prior_probe") not in (None, "own"):
        given = {"zero": "set to zero", "next": "taken from the next image"}.get(report["prior_probe"])
        raise RegistryError(
            f"{where}: scores the refiner with its prior's output {given or repr(report['prior_probe'])} (ipt "
            "benchmark --prior-probe), not as it runs; score it without --prior-probe"
        )
    if report.get("inputs") not in (None, report.get("task")):
        raise RegistryError(
            f"{where}: scores the {report.get('task')} model on {report.get('inputs')}'s inputs (ipt benchmark "
            "--inputs: a generalisation score), not on its own task's; score it without --inputs"
        )


def register(
    checkpoint: str | Path,
    *,
    task: str | None = None,
    name: str | None = None,
    report: dict[str, Any] | None = None,
    report_path: str | Path | None = None,
    metric: str = "psnr_y",
    dataset: str | None = None,
    allow_new_key: bool = False,
    tracker: tracking.MlflowTracker,
) -> dict[str, Any]:
    """Register ``checkpoint`` (for ``task``, or the whole multi-task model) and decide the champion alias.

    ``allow_new_key``: a score that is not comparable with the champion's (another score key) takes the alias
    anyway; without it the champion stays. Either way nothing is rescored.
    """
    checkpoint = Path(checkpoint)
    model = load_model(checkpoint, task)
    name = name or (f"ipt-{task}" if task else "ipt-pretrained")
    sha = file_sha256(checkpoint)
    tags = {"checkpoint_sha256": sha, "source": str(checkpoint)}
    score = key = None
    notes: list[str] = []
    setup: dict[str, str] = {}
    if report is not None:
        if task and report.get("task") not in (None, task):
            raise RegistryError(f"{report_path or 'report'}: scores task {report.get('task')!r}, not {task!r}")
        refuse_probe_report(report, report_path)
        check, notes = check_report_model(report, checkpoint, sha, report_path)
        score, key = score_of(report, metric, dataset)
        if _noise_seeded(str(report.get("task") or "")) and report.get("seed") is None:
            notes.append(
                f"{report_path or 'benchmark report'} records no noise seed; its score compares only with others "
                f"that record none"
            )
        setup = {f"score_{k}": str(report[k]) for k in ("tiling", "precision") if report.get(k)}
        tags.update(score=repr(score), score_key=key, report_check=check, **setup)  # full precision: ties stay ties
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        files: dict[str, Path] = {}
        if task:
            single = extract_task(model, task)
            tags["task"] = task
            files[CHECKPOINT_NAME] = save_checkpoint(d / "model.pt", single, meta={"task": task})
            sd = official_state_dict(model, task)
            if not model.spec.image_residual:  # the official code cannot run an image-residual model
                torch.save(sd, d / "official.pt")
                files["official.pt"] = d / "official.pt"
            for part in ("head", "tail"):
                torch.save({k: v for k, v in sd.items() if k.startswith(f"{part}.0.")}, d / f"{part}.pt")
                files[f"{part}.pt"] = d / f"{part}.pt"
        else:
            files[CHECKPOINT_NAME] = save_checkpoint(d / "model.pt", model, meta={"tasks": model.spec.task_names})
        if report is not None:
            (d / "benchmark.json").write_text(json.dumps(report, indent=1))
            files["benchmark.json"] = d / "benchmark.json"
        version = versions.register_files(tracker, files, name, tags=tags, task=task)
    uri = tracker.tracking_uri
    with versions.undo_version_on_error(name, version, uri):
        before = alias_version(name, CHAMPION, uri)
        promoted, reason = decide(score, key, before, allow_new_key=allow_new_key, setup=setup, checkpoint_sha256=sha)
        if promoted:
            versions.set_alias(name, CHAMPION, version, uri)
    return {
        "name": name,
        "version": version,
        "score": score,
        "score_key": key,
        "report_check": tags.get("report_check"),
        "warnings": notes,
        "champion_before": before,
        "champion": version if promoted else (before or {}).get("version"),
        "promoted": promoted,
        "reason": reason,
        "uri": f"{MODEL_URI_PREFIX}{name}/{version}",
    }


def _key_parts(key: str) -> dict[str, str] | None:
    parts = key.split("|")
    if not all("=" in p for p in parts):
        return None  # a key in the format before image sets were recorded ("protocol:metric:datasets")
    return dict(p.split("=", 1) for p in parts)


def _key_difference(old: str, new: str) -> str:
    a, b = _key_parts(old), _key_parts(new)
    if a is None or b is None:
        return "the champion's key predates keys that record the images scored"
    diff = [f"{k} {a.get(k, '-')} vs {b.get(k, '-')}" for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    return "; ".join(diff)


def decide(
    score: float | None,
    key: str | None,
    champion: dict[str, Any] | None,
    *,
    allow_new_key: bool = False,
    setup: dict[str, str] | None = None,
    checkpoint_sha256: str | None = None,
) -> tuple[bool, str]:
    """(promote?, why). A new version takes the alias only with a score that beats the champion's, under the same
    score key, by more than :data:`TIE_DB`: a tie (the champion's own checkpoint and report registered again, say)
    never moves it.
    """
    if score is None:  # an unscored version (a pretrained body) follows the newest while the champion is unscored too
        if champion is None:
            return True, "first version (no score given)"
        if "score" not in champion["tags"]:
            return True, f"no score given, and champion v{champion['version']} has none: the newest version"
        return False, f"no score given; champion v{champion['version']} has one (score this version to compete)"
    if champion is None:
        return True, "no champion yet"
    v = champion["version"]
    tags = champion["tags"]
    if "score" not in tags:
        return True, f"champion v{v} has no score"
    old = float(tags["score"])
    if tags.get("score_key") != key:
        why = (
            f"champion v{v} ({old:.4f}) and this version ({score:.4f}) have different score keys, not comparable "
            f"({_key_difference(str(tags.get('score_key')), str(key))}); nothing was rescored"
        )
        if allow_new_key:
            return True, f"{why}; replaces the champion because a new score key was allowed"
        return False, f"{why}; champion kept (score both the same way, or allow a new score key)"
    differs = [
        f"{k[len('score_') :]} {tags[k]!r} (champion) vs {val!r}"
        for k, val in (setup or {}).items()
        if k in tags and tags[k] != val
    ]
    note = f"; note: scored with a different {', '.join(differs)}" if differs else ""
    if checkpoint_sha256 and tags.get("checkpoint_sha256") == checkpoint_sha256:
        note += "; this is the champion's own checkpoint again"
    if score > old + TIE_DB:
        return True, f"{score:.4f} beats champion v{v} ({old:.4f}){note}"
    return False, f"{score:.4f} does not beat champion v{v} ({old:.4f}){note}"
