"""What a new corruption type added: the scheduled re-run's comparison against the champions from before it.

Adding a corruption type (one file in corruptions/, one params entry) makes the next run of the DAG re-pretrain the
body on every type, fine-tune and register every task again. The register stage answers "does the new version beat
the champion"; this module answers the question behind the re-run, "what did the new type add": each task's new
candidate against that task's champion from before the type existed, in a report and in MLflow, the same shape of
comparison as the leave-one-out experiments (docs/experiments.md, question e), from one run instead of seeds.

How (flows.pipeline.run_dag calls both):

* ``snapshot``: before a plan that registers a new pretrained body runs, write the pretrained champion's tasks and
  every task's champion (version and score tags) to ``runs/new_type/champions_before.json``. A snapshot that a
  failed run left is kept: its champions are still the ones from before that run.
* ``compare``: after the plan, read the pretrained version the register stage recorded
  (``metrics/register/pretrained.json``) and its tasks. No type added (a re-pretraining for a code change, say):
  the snapshot is removed and nothing is written. Types added: ``runs/new_type/<types>/report.md`` and ``.json``,
  one row per task (candidate version and score, the champion before and its score, the change when both scores
  share a score key) and a sentence computed from them; an MLflow child run of the pipeline's run with the changes
  as metrics and the report as artifacts. The snapshot moves into the report folder once every task that had a
  champion has been registered again; until then each run rewrites the report with what is there.

The numbers are one training run against one: nothing here has a seed spread, and the report says so.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ipt.fileio import atomic_write, write_json

SNAPSHOT = Path("runs") / "new_type" / "champions_before.json"
PRETRAINED = "ipt-pretrained"
EXPERIMENT = "ipt-pipeline"


def version_tasks(name: str, version: str, tracking_uri: str) -> list[str]:
    """The task names of registered ``name`` version ``version`` (its model.pt's model_spec)."""
    from ipt.checkpoint import read_state
    from ipt.modeluri import resolve_model_uri
    from ipt.tracking import TrackingError

    path = resolve_model_uri(f"models:/{name}/{version}", tracking_uri)
    spec = read_state(path).get("model_spec")
    if not isinstance(spec, dict) or not spec.get("tasks"):
        raise TrackingError(f"models:/{name}/{version} ({path}): its checkpoint names no tasks")
    return [str(t) for t, _ in spec["tasks"]]


def snapshot(root: Path, tracking_uri: str, tasks: list[str]) -> Path | None:
    """Write the champions from before this run (see the module doc); None when there is no pretrained champion
    yet (the first pretraining adds no type to anything). An existing snapshot is kept and returned."""
    from ipt.modeluri import alias_version
    from ipt.registry import CHAMPION

    path = root / SNAPSHOT
    if path.exists():
        return path
    before = alias_version(PRETRAINED, CHAMPION, tracking_uri)
    if before is None:
        return None
    champions = {t: alias_version(f"ipt-{t}", CHAMPION, tracking_uri) for t in tasks}
    write_json(
        path,
        {
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "pretrained": {
                "version": before["version"],
                "tasks": version_tasks(PRETRAINED, before["version"], tracking_uri),
            },
            "champions": champions,
        },
        indent=1,
        sort_keys=True,
    )
    return path


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _row(task: str, added: list[str], before: dict[str, Any] | None, record: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"task": task, "new_type": task in added, "champion_before": None, "candidate": None}
    if before is not None:
        tags = before.get("tags") or {}
        row["champion_before"] = {
            "version": before["version"],
            "score": float(tags["score"]) if "score" in tags else None,
            "score_key": tags.get("score_key"),
        }
    fresh = record is not None and (before is None or int(record["version"]) > int(before["version"]))
    if fresh:
        row["candidate"] = {
            "version": record["version"],
            "score": record.get("score") if _finite(record.get("score")) else None,  # strict JSON: no NaN
            "score_key": record.get("score_key"),
            "promoted": bool(record.get("promoted")),
        }
    old, new = row["champion_before"], row["candidate"]
    if new is None:
        row["status"] = "not registered again since the snapshot yet"
    elif old is None:
        row["status"] = "no champion before" + (" (the new type's own task)" if row["new_type"] else "")
    elif old["score"] is None or new["score"] is None:
        row["status"] = "unscored"
    elif old["score_key"] != new["score_key"]:
        row["status"] = "not comparable (the two scores have different score keys)"
    else:
        row["status"] = "compared"
        row["change_db"] = new["score"] - old["score"]
    return row


def verdict(added: list[str], rows: list[dict[str, Any]]) -> str:
    """The report's sentence, from the rows alone."""
    names = ", ".join(added)
    compared = [r for r in rows if r["status"] == "compared"]
    pending = [r["task"] for r in rows if r["candidate"] is None and r["champion_before"] is not None]
    if not compared:
        text = f"Adding {names}: no task has a comparable score before and after yet."
    else:
        up = [r for r in compared if r["change_db"] > 0]
        changes = ", ".join(f"{r['task']} {r['change_db']:+.4f} dB" for r in compared)
        mean = sum(r["change_db"] for r in compared) / len(compared)
        text = (
            f"Adding {names} to the pretraining: {len(up)} of {len(compared)} task(s) scored higher than their "
            f"champion from before ({changes}; mean {mean:+.4f} dB). Each change is one training run against one, "
            f"so none is separated from run-to-run noise here; an experiment over seeds "
            f"(docs/experiments.md, question e) can separate them."
        )
    if pending:
        text += f" Not registered again yet: {', '.join(pending)}."
    return text


def _markdown(report: dict[str, Any]) -> str:
    body0, body1 = report["pretrained_before"], report["pretrained_after"]
    lines = [
        f"# New corruption type: {', '.join(report['added'])}",
        "",
        f"**Answer (computed).** {report['verdict']}",
        "",
        f"- Pretrained body: v{body0['version']} ({', '.join(body0['tasks'])}) before, v{body1['version']} "
        f"({', '.join(body1['tasks'])}) after.",
        f"- Champions from before: snapshot of {report['snapshot_written']} (`{SNAPSHOT.as_posix()}`), taken "
        "before the run that registered the new body.",
        "- Scores: each version's registered score (its `ipt benchmark` report, the DAG's score key); one run each.",
        "",
        "| task | champion before | its score | candidate | its score | change (dB) | candidate is champion | status |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]

    def num(x: Any) -> str:
        return "-" if x is None else f"{x:.4f}"

    for r in report["rows"]:
        old, new = r["champion_before"] or {}, r["candidate"] or {}
        change = f"{r['change_db']:+.4f}" if "change_db" in r else "-"
        promoted = "-" if not new else ("yes" if new["promoted"] else "no")
        lines.append(
            f"| {r['task']}{' (new)' if r['new_type'] else ''} | {('v' + old['version']) if old else '-'} | "
            f"{num(old.get('score'))} | {('v' + new['version']) if new else '-'} | {num(new.get('score'))} | "
            f"{change} | {promoted} | {r['status']} |"
        )
    return "\n".join(lines) + "\n"


def compare(root: Path, tracking_uri: str, parent_run_id: str | None = None) -> dict[str, Any] | None:
    """Write the comparison if the body registered since the snapshot has types the one before lacked (see the
    module doc). Returns the report, or None when there is no snapshot or no type was added."""
    path = root / SNAPSHOT
    if not path.exists():
        return None
    snap = json.loads(path.read_text())
    record_file = root / "metrics" / "register" / "pretrained.json"
    if not record_file.exists():
        return None  # the body was not registered yet: keep the snapshot for the run that does
    pre = json.loads(record_file.read_text())
    if int(pre["version"]) <= int(snap["pretrained"]["version"]):
        return None  # the record predates the snapshot
    after = version_tasks(PRETRAINED, str(pre["version"]), tracking_uri)
    added = [t for t in after if t not in snap["pretrained"]["tasks"]]
    if not added:
        path.unlink()  # a re-pretraining with the same types: nothing to compare, and this module wrote the file
        return None
    rows = []
    for task in after:
        rec_path = root / "metrics" / "register" / f"{task}.json"
        record = json.loads(rec_path.read_text()) if rec_path.exists() else None
        rows.append(_row(task, added, snap["champions"].get(task), record))
    report = {
        "added": added,
        "pretrained_before": snap["pretrained"],
        "pretrained_after": {"version": str(pre["version"]), "tasks": after},
        "snapshot_written": snap["written"],
        "rows": rows,
        "complete": all(r["candidate"] is not None for r in rows if r["champion_before"] is not None),
        "verdict": verdict(added, rows),
    }
    folder = root / "runs" / "new_type" / "+".join(added)
    write_json(folder / "report.json", report, indent=1, sort_keys=True)
    text = _markdown(report)
    atomic_write(folder / "report.md", lambda f: f.write(text.encode()))
    report["folder"] = str(folder)
    report["mlflow_run_id"] = _log(report, folder, tracking_uri, parent_run_id)
    if report["complete"]:
        os.replace(path, folder / SNAPSHOT.name)
    return report


def _log(report: dict[str, Any], folder: Path, tracking_uri: str, parent_run_id: str | None) -> str:
    from ipt.tracking import MlflowTracker

    run = MlflowTracker.start(
        EXPERIMENT, run_name=f"new type {'+'.join(report['added'])}", tracking_uri=tracking_uri,
        parent_run_id=parent_run_id,
    )  # fmt: skip
    run.set_tags({"ipt.new_type": ",".join(report["added"]), "mlflow.note.content": report["verdict"]})
    run.log_params(
        {
            "added": ",".join(report["added"]),
            "pretrained_before": report["pretrained_before"]["version"],
            "pretrained_after": report["pretrained_after"]["version"],
            **{
                f"{r['task']}/champion_before": (r["champion_before"] or {}).get("version", "-") for r in report["rows"]
            },
            **{f"{r['task']}/candidate": (r["candidate"] or {}).get("version", "-") for r in report["rows"]},
        }
    )
    metrics = {}
    for r in report["rows"]:
        if "change_db" in r:
            metrics[f"{r['task']}/change_db"] = r["change_db"]
            metrics[f"{r['task']}/champion_before"] = r["champion_before"]["score"]
        if r["candidate"] is not None and r["candidate"]["score"] is not None:
            metrics[f"{r['task']}/candidate"] = r["candidate"]["score"]
    if metrics:
        run.log_metrics(metrics)
    run.log_artifact(folder / "report.md")
    run.log_artifact(folder / "report.json")
    run.finish()
    return run.run_id
