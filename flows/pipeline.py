"""Prefect flow `ipt-pipeline`: the whole DAG of dvc.yaml, one Prefect task per DVC stage, DVC deciding what runs.

Thin on purpose. The flow never decides staleness itself:

1. it takes the workspace lock (``.dvc/tmp/ipt-pipeline.lock``, an flock): one pipeline run per workspace at a
   time, a second one waits up to ``lock_timeout`` seconds and then fails naming the holder;
2. ``dvc status --json`` says which stages are stale; nothing stale -> the run ends here, in seconds;
3. else the stale stages and everything downstream of them (``dvc dag --dot``), in topological order, each run as
   its own Prefect task ``dvc repro --single-item <stage>``: DVC checks that stage again and runs it or skips it,
   so a stage whose inputs turned out unchanged costs a second. The stage's output (torchrun's included) streams
   into the task's log;
4. a summary table (model vs baseline per task, from the benchmark JSON files) becomes a Prefect artifact and
   metrics of the MLflow parent run. Each stage's own MLflow run is a child of it (``IPT_MLFLOW_PARENT_RUN_ID``).

`pretrain-ipt`, `finetune-ipt` and `benchmark-ipt` are the same machinery with a target (flows/train.py,
flows/benchmark.py). No torch import here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.stages import run_command

LOCK_FILE = ".dvc/tmp/ipt-pipeline.lock"


class PipelineBusy(RuntimeError):
    """Another pipeline run holds this workspace."""


class UnknownStage(ValueError):
    """A target that names no stage of dvc.yaml."""


def project_dir(workdir: str | None = None) -> Path:
    """The workspace: ``workdir``, else ``$IPT_PROJECT_DIR``, else the current directory. It must hold dvc.yaml."""
    d = Path(workdir or os.environ.get("IPT_PROJECT_DIR") or ".").resolve()
    if not (d / "dvc.yaml").is_file():
        raise FileNotFoundError(f"{d}: no dvc.yaml here; pass workdir= or set IPT_PROJECT_DIR to the project root")
    return d


@contextlib.contextmanager
def workspace_lock(workdir: Path, timeout: float = 3600.0, poll: float = 1.0) -> Iterator[Path]:
    """Hold the workspace's pipeline lock; wait up to ``timeout`` seconds for another run to release it."""
    path = workdir / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.seek(0)
                    holder = f.read().strip() or "another process"
                    raise PipelineBusy(
                        f"{path}: held by {holder} for more than {timeout:.0f} s; one pipeline run per workspace"
                    ) from None
                time.sleep(poll)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        try:
            yield path
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def dvc_executable() -> str:
    """The ``dvc`` beside this interpreter (a venv's), else the one on PATH."""
    here = Path(sys.executable).parent / "dvc"
    return str(here) if here.is_file() else (shutil.which("dvc") or "dvc")


def _dvc(args: Sequence[str], workdir: Path) -> str:
    import subprocess

    proc = subprocess.run([dvc_executable(), *args], cwd=workdir, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {workdir}:\n{(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def dag(workdir: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Stage names and (upstream, downstream) edges of dvc.yaml, from ``dvc dag --dot``."""
    text = _dvc(["dag", "--dot"], workdir)
    edges = [(a, b) for a, b in re.findall(r'"([^"]+)"\s*->\s*"([^"]+)"', text)]
    nodes = re.findall(r'^"([^"]+)";', text, flags=re.M)
    for a, b in edges:
        for n in (a, b):
            if n not in nodes:
                nodes.append(n)
    return nodes, edges


def stale_stages(workdir: Path, targets: Sequence[str] = ()) -> list[str]:
    """Stages ``dvc status`` reports as changed (of ``targets`` and their upstream, or of the whole DAG)."""
    out = _dvc(["status", "--json", *(["--with-deps", *targets] if targets else [])], workdir).strip()
    status = json.loads(out) if out else {}
    return [name.split(":")[-1] for name in status]  # "dvc.yaml:stage" when several dvc.yaml files exist


def stage_names(workdir: Path) -> list[str]:
    """Every stage of dvc.yaml, foreach stages expanded (``finetune@sr_x2``), from ``dvc stage list``."""
    out = _dvc(["stage", "list", "--name-only"], workdir)
    return [line.strip().split(":")[-1] for line in out.splitlines() if line.strip()]


def _known(names: Sequence[str]) -> str:
    """``shard, corrupt@{sr_x2,sr_x3}, pretrain``: the stage names, foreach groups folded."""
    groups: dict[str, list[str]] = {}
    for n in names:
        base, _, key = n.partition("@")
        groups.setdefault(base, []).extend([key] if key else [])
    return ", ".join(f"{b}@{{{','.join(keys)}}}" if keys else b for b, keys in groups.items())


def check_targets(workdir: Path, targets: Sequence[str]) -> None:
    """Raise :class:`UnknownStage` naming every target that is no stage (nor foreach group) of dvc.yaml."""
    if not targets:
        return
    names = stage_names(workdir)
    bad = [t for t in targets if not _expand([t], names)]
    if bad:
        raise UnknownStage(
            f"unknown stage{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))} in {workdir / 'dvc.yaml'};"
            f" known stages: {_known(names)}"
        )


def plan(workdir: Path, targets: Sequence[str] = ()) -> list[str]:
    """The stages to visit, in topological order: the stale ones and everything downstream of them, limited to
    ``targets`` and their upstream when targets are given. Empty when DVC says nothing is stale."""
    try:
        stale = set(stale_stages(workdir, targets))
    except RuntimeError:
        check_targets(workdir, targets)  # a bad target: say so, not DVC's traceback
        raise
    if not stale:
        return []
    nodes, edges = dag(workdir)
    down: dict[str, list[str]] = {n: [] for n in nodes}
    up: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        down[a].append(b)
        up[b].append(a)
    selected = _closure(stale, down)
    if targets:
        selected &= _closure(_expand(targets, nodes), up)
    order: list[str] = []
    indegree = {n: sum(1 for u in up[n] if u in selected) for n in selected}
    ready = [n for n in nodes if n in selected and indegree[n] == 0]
    while ready:
        n = ready.pop(0)
        order.append(n)
        for d in down[n]:
            if d in indegree:
                indegree[d] -= 1
                if indegree[d] == 0:
                    ready.append(d)
    return order


def _closure(start: set[str], graph: dict[str, list[str]]) -> set[str]:
    seen, todo = set(start), list(start)
    while todo:
        for n in graph.get(todo.pop(), []):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def _expand(targets: Sequence[str], nodes: Sequence[str]) -> set[str]:
    """``finetune`` names every ``finetune@<task>``; ``finetune@sr_x2`` names itself."""
    return {n for t in targets for n in nodes if n == t or n.startswith(f"{t}@")}


@task(name="dvc-stage", task_run_name="{stage}")
def repro_stage(stage: str, workdir: str, env: dict[str, str]) -> str:
    """``dvc repro --single-item <stage>``: DVC checks the stage again and runs it only if it is stale."""
    lines = run_command([dvc_executable(), "repro", "--single-item", stage], env=env, cwd=workdir)
    text = "\n".join(lines)
    return "unchanged" if "didn't change" in text and "Running stage" not in text else "ran"


@task(name="dvc-push", task_run_name="dvc push")
def push(workdir: str, remote: str | None) -> None:
    run_command([dvc_executable(), "push", *(["-r", remote] if remote else [])], cwd=workdir)


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


def params_tasks(workdir: Path) -> list[str]:
    import yaml

    data = yaml.safe_load((workdir / "params.yaml").read_text()) or {}
    return list((data.get("corrupt") or {}).get("tasks") or {})


def run_dag(
    targets: Sequence[str] = (),
    *,
    workdir: str | None = None,
    lock_timeout: float = 3600.0,
    push_to: str | None = None,
    push_remote: bool = False,
    tracking_uri: str | None = None,
    experiment: str = "ipt-pipeline",
    run_name: str = "ipt-pipeline",
) -> dict[str, Any]:
    """The body shared by every DVC-backed flow: lock, plan, one task per stage, summary."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.runtime import flow_run

    from ipt.tracking import PARENT_RUN_ENV, PIPELINE_RUN_ENV, MlflowTracker

    logger = get_run_logger()
    root = project_dir(workdir)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
    with workspace_lock(root, lock_timeout):
        stages = plan(root, targets)
        if not stages:
            logger.info("DVC: every stage%s is up to date; nothing to run", f" of {list(targets)}" if targets else "")
            return {"stages": {}, "ran": [], "summary": summary(root, params_tasks(root))}
        logger.info("plan (%d stages, stale ones and their downstream): %s", len(stages), ", ".join(stages))
        parent = MlflowTracker.start(experiment, run_name=run_name, tracking_uri=uri)
        pipeline_id = str(flow_run.get_id() or parent.run_id)
        parent.set_tags({"ipt.pipeline_run": pipeline_id, "ipt.targets": ",".join(targets) or "all"})
        parent.log_params({"stages": ",".join(stages)})
        env = {
            "MLFLOW_TRACKING_URI": uri,
            PARENT_RUN_ENV: parent.run_id,
            PIPELINE_RUN_ENV: pipeline_id,
            "IPT_PROJECT_DIR": str(root),
        }
        results: dict[str, str] = {}
        try:
            for stage in stages:
                results[stage] = repro_stage.with_options(task_run_name=stage)(stage, str(root), env)
            if push_remote or push_to:
                push(str(root), push_to)
        except BaseException:
            parent.set_tags({"ipt.failed_after": ",".join(results) or "none"})
            parent.finish("FAILED")
            raise
        rows = summary(root, params_tasks(root))
        table = summary_table(rows)
        for r in rows:
            m = {f"{r['task']}/{r['dataset']}/psnr_y": r["model"]}
            if r["baseline"] is not None:
                m[f"{r['task']}/{r['dataset']}/gain_db"] = r["model"] - r["baseline"]
            parent.log_metrics(m)
        parent.finish()
    if rows:
        create_markdown_artifact(table, key="ipt-benchmark-summary", description="model vs baseline, Y-PSNR (dB)")
        logger.info("benchmark summary:\n%s", table)
    ran = [s for s, r in results.items() if r == "ran"]
    return {"stages": results, "ran": ran, "summary": rows, "mlflow_run_id": parent.run_id}


@flow(name="ipt-pipeline", log_prints=True)
def ipt_pipeline(
    targets: list[str] | None = None,
    workdir: str | None = None,
    lock_timeout: float = 3600.0,
    push: bool = False,
    remote: str | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """The whole DAG (or ``targets`` and what they need): shard -> corrupt@T -> pretrain -> finetune@T ->
    benchmark@T -> register@T. Returns the stages visited ({stage: ran|unchanged}) and the summary rows."""
    return run_dag(
        targets or (),
        workdir=workdir,
        lock_timeout=lock_timeout,
        push_to=remote,
        push_remote=push,
        tracking_uri=tracking_uri,
    )


def stage_bodies(workdir: Path) -> dict[str, dict[str, Any]]:
    """``{stage: its body}`` as dvc.yaml writes them (a foreach stage's ``do`` body, ``${key}`` unexpanded)."""
    import yaml

    stages = (yaml.safe_load((workdir / "dvc.yaml").read_text()) or {}).get("stages") or {}
    return {name: (body or {}).get("do", body) or {} for name, body in stages.items()}


def stage_commands(workdir: Path, stages: Sequence[str]) -> dict[str, list[str]]:
    """The command lines each stage would run, from dvc.yaml; an ``ipt launch`` line is shown as what it execs
    under params.yaml ``launch`` (the torchrun line when more than one process)."""
    import shlex

    import yaml

    from ipt import launch

    bodies = stage_bodies(workdir)
    params = yaml.safe_load((workdir / "params.yaml").read_text()) or {}
    cfg = launch.LaunchConfig(**(params.get("launch") or {}))
    out: dict[str, list[str]] = {}
    for stage in stages:
        name, _, key = stage.partition("@")
        body = bodies[name]
        cmds = body["cmd"] if isinstance(body["cmd"], list) else [body["cmd"]]
        lines = []
        for cmd in cmds:
            argv = shlex.split(cmd.replace("${key}", key).replace("${item}", key))
            if argv[:4] == ["python", "-m", "ipt.cli", "launch"] and len(argv) > 4:
                rest = argv[5:][1:] if argv[5:6] == ["--"] else argv[5:]
                argv = launch.command(argv[4], rest, cfg, python="python")
            lines.append(shlex.join(argv))
        out[stage] = lines
    return out


def report(rows: Sequence[dict[str, Any]]) -> tuple[str, list[str]]:
    """The summary table and one line per (task, dataset) whose model does not beat its baseline."""
    losers = [
        f"{r['task']} on {r['dataset']}: {r['model']:.2f} dB does not beat the baseline's {r['baseline']:.2f} dB"
        for r in rows
        if r["baseline"] is not None and r["model"] <= r["baseline"]
    ]
    return summary_table(rows), losers


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.pipeline` (what `make run` calls): run the flow here, print the table and the UI commands."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m flows.pipeline",
        description="Run the ipt-pipeline flow in this process ($PREFECT_API_URL if set).",
    )
    p.add_argument("targets", nargs="*", help="stages (default: the whole DAG)")
    p.add_argument("--workdir", default=None, help="project root (default: $IPT_PROJECT_DIR or .)")
    p.add_argument("--push", action="store_true", help="dvc push when done")
    p.add_argument("--dry-run", action="store_true", help="print the stages DVC would run and their commands; run none")
    a = p.parse_args(argv)
    try:  # bad arguments: one line and exit 2, before any flow run starts
        root = project_dir(a.workdir)
        check_targets(root, a.targets)
    except (FileNotFoundError, UnknownStage, RuntimeError) as e:
        msg = str(e).replace("pass workdir=", "pass --workdir")
        print(f"error: {' '.join(msg.split())}", file=sys.stderr)
        return 2
    if a.dry_run:
        stages = plan(root, a.targets)
        print(f"{len(stages)} stage(s) to run in {root}" + (":" if stages else " (everything is up to date)"))
        for stage, lines in stage_commands(root, stages).items():
            print(f"{stage}:")
            for line in lines:
                print(f"  {line}")
        return 0
    result = ipt_pipeline(targets=a.targets or None, workdir=a.workdir, push=a.push)
    table, losers = report(result["summary"])
    ran = result["ran"]
    print(f"\nstages run: {', '.join(ran) if ran else 'none (everything was up to date)'}")
    print("\nBenchmark, Y-PSNR (dB), the fine-tuned model vs its baseline (bicubic / the degraded input):\n")
    print(table)
    for line in losers:
        print(f"WARNING: {line}")
    if not losers and result["summary"]:
        print("Every task's model beats its baseline on every dataset it is scored on.")
    print(
        "\nLook at the runs:\n"
        "  make mlflow-ui       # MLflow: http://127.0.0.1:5000 (experiments ipt-pipeline, ipt-pretrain, ...)\n"
        "  make prefect-server  # Prefect: http://127.0.0.1:4200 (flow runs of ipt-pipeline, one task per stage)"
    )
    return 0  # a task that does not beat its baseline is reported above, not an error of the run


if __name__ == "__main__":
    sys.exit(main())
