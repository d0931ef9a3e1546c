"""Prefect flow `benchmark-ipt`: score a model on the paper's test sets for each task, logged to MLflow.

DVC stages or an ad-hoc model, and the MLflow runs: docs/pipeline.md#the-pipeline-four-ways-in.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from prefect import flow, get_run_logger

from flows.dvc import params_tasks, project_dir, stage_bodies
from flows.pipeline import run_dag
from flows.stages import run_stage
from ipt.modeluri import MODEL_URI_PREFIX
from ipt.tracking import MlflowTracker

DEFAULT_TASKS = ["sr_x2", "sr_x3", "sr_x4", "denoise_s30", "denoise_s50", "derain"]
AD_HOC_DIR = "outputs/benchmark"  # git-ignored, owned by no DVC stage
DVC_OUT_DIR = "metrics/benchmark"  # where the DVC stages benchmark@<task> write


def default_out_dir(model: str) -> str:
    """``outputs/benchmark/<model as a folder name>`` for an ad-hoc run."""
    name = re.sub(r"[^A-Za-z0-9._@-]+", "_", model.removeprefix(MODEL_URI_PREFIX)).strip("._") or "model"
    return f"{AD_HOC_DIR}/{name}"


def dvc_outputs(root: Path) -> list[str]:
    """Every output path (outs, metrics, plots) of the stages of ``root``/dvc.yaml, relative to ``root``, with
    ``${...}`` left in place (a foreach stage's ``metrics/benchmark/${key}.json``). Empty without a dvc.yaml."""
    import yaml

    try:
        bodies = stage_bodies(root)
    except (OSError, yaml.YAMLError):
        return []
    paths = []
    for body in bodies.values():
        for field in ("outs", "metrics", "plots"):
            for entry in body.get(field) or []:
                paths += list(entry) if isinstance(entry, dict) else [entry]
    return [str(p).strip("/") for p in paths]


def dvc_owner(out_dir: str, tasks: Sequence[str], roots: Sequence[Path]) -> str | None:
    """The dvc.yaml output that writing ``out_dir/<task>.json`` would clobber, else None. ``out_dir`` is relative
    to the first root; each root holding a dvc.yaml is checked. A folder holding a foreach stage's per-key outputs
    (``metrics/benchmark`` for ``metrics/benchmark/${key}.json``) counts as owned whatever the tasks."""
    base = roots[0].resolve()
    target = (base / out_dir).resolve()
    for root in dict.fromkeys(r.resolve() for r in roots):
        try:
            rel = target.relative_to(root).as_posix()
        except ValueError:
            continue
        for out in dvc_outputs(root):
            pattern = "[^/]+".join(re.escape(part) for part in re.split(r"\$\{[^}]*\}", out))
            owned = re.compile(rf"{pattern}(/.*)?")  # the output itself and anything inside it
            if owned.fullmatch(rel) or any(owned.fullmatch(f"{rel}/{t}.json") for t in tasks):
                return f"{root / 'dvc.yaml'}: {out}"
            if "${" in out and out.rsplit("/", 1)[0] == rel:
                return f"{root / 'dvc.yaml'}: {out}"
    return None


def check_out_dir(out_dir: str, tasks: Sequence[str], workdir: str | None = None) -> None:
    """Refuse an ad-hoc ``out_dir`` that a DVC stage owns, in ``workdir`` (else the current directory) or in
    this project."""
    roots = [Path(workdir or "."), Path(__file__).resolve().parents[1]]
    if env := os.environ.get("IPT_PROJECT_DIR"):
        roots.append(Path(env))
    owner = dvc_owner(out_dir, tasks, roots)
    if owner:
        raise ValueError(
            f"out_dir {out_dir!r} is a DVC stage output ({owner}); an ad-hoc benchmark (model=...) must not"
            f" overwrite it: leave out_dir unset ({AD_HOC_DIR}/<model>) or pick another folder. The DVC stages"
            " write there themselves: run benchmark-ipt without model"
        )


def resolve_out_dir(
    model: str | None, out_dir: str | None, tasks: Sequence[str] | None, workdir: str | None
) -> str | None:
    """The reports folder of a run; ValueError for one the run must not write to (checked before it starts)."""
    if model is None:  # the DVC stages write metrics/benchmark themselves; nothing else is theirs to choose
        if out_dir not in (None, DVC_OUT_DIR):
            raise ValueError(f"out_dir is for an ad-hoc run (model=...); the DVC stages write {DVC_OUT_DIR}")
        return None
    out_dir = out_dir or default_out_dir(model)
    check_out_dir(out_dir, tasks or DEFAULT_TASKS, workdir)
    return out_dir


@flow(name="benchmark-ipt", log_prints=True)
def benchmark_ipt(
    tasks: list[str] | None = None,
    model: str | None = None,
    root: str | None = None,
    datasets: str | None = None,
    protocol: str | None = None,
    tiling: str | None = None,
    limit: int | None = None,
    out_dir: str | None = None,
    experiment: str = "ipt-benchmark",
    tracking_uri: str | None = None,
    workdir: str | None = None,
    lock_timeout: float = 3600.0,
) -> dict[str, dict]:
    """Benchmark ``model`` on every task; returns ``{task: {dataset: psnr_y}}`` and writes ``out_dir/<task>.json``
    (default ``outputs/benchmark/<model>``; a DVC stage output such as ``metrics/benchmark`` is refused).

    Unset options come from the `benchmark` section of params.yaml in ``workdir`` (the project root by default).
    No ``model``: the DVC stages ``benchmark@<task>`` for ``tasks`` (default: params.yaml's), then the same summary.
    """
    out_dir = resolve_out_dir(model, out_dir, tasks, workdir)
    logger = get_run_logger()
    if model is None:
        names = tasks or params_tasks(project_dir(workdir))
        result = run_dag(
            [f"benchmark@{t}" for t in names],
            workdir=workdir,
            lock_timeout=lock_timeout,
            tracking_uri=tracking_uri,
            run_name="benchmark-ipt",
        )
        dag_summary: dict[str, dict] = {}
        for row in result["summary"]:
            if row["task"] in names:
                dag_summary.setdefault(row["task"], {})[row["dataset"]] = row["model"]
        return dag_summary
    parent = MlflowTracker.start(experiment, run_name=f"benchmark-ipt {model}", tracking_uri=tracking_uri)
    parent.log_params({"model": model, "tasks": ",".join(tasks or DEFAULT_TASKS)})
    summary: dict[str, dict] = {}
    try:
        for t in tasks or DEFAULT_TASKS:
            child = MlflowTracker.start(
                experiment, run_name=f"{t} {model}", tracking_uri=parent.tracking_uri, parent_run_id=parent.run_id
            )
            out = str(Path(out_dir) / f"{t}.json")
            args = ["--task", t, "--model", model, "--out", out, "--quiet"]
            for flag, value in (
                ("root", root),
                ("datasets", datasets),
                ("protocol", protocol),
                ("tiling", tiling),
                ("limit", limit),
            ):
                if value is not None:
                    args += [f"--{flag}", str(value)]
            env = {"IPT_MLFLOW_RUN_ID": child.run_id, "MLFLOW_TRACKING_URI": child.tracking_uri}
            try:
                run_stage.with_options(task_run_name=f"benchmark {t}")("benchmark", args, env=env, cwd=workdir)
            except Exception:
                child.finish("FAILED")
                raise
            child.finish()
            report = json.loads((Path(workdir or ".") / out).read_text())
            summary[t] = {name: r["psnr_y"] for name, r in report["datasets"].items()}
            logger.info("%s: %s", t, summary[t])
    except Exception:
        parent.finish("FAILED")
        raise
    parent.finish()
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.benchmark`: run the flow in this process ($PREFECT_API_URL if set)."""
    p = argparse.ArgumentParser(
        prog="python -m flows.benchmark",
        description="Run the benchmark-ipt flow: without --model the DVC stages benchmark@<task>; with --model, "
        f"that model scored directly, outside DVC, into --out-dir (default {AD_HOC_DIR}/<model>).",
    )
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help="tasks (default: params.yaml's)")
    p.add_argument("--model", default=None, help="baseline, a weights file or models:/NAME@ALIAS (ad-hoc run)")
    p.add_argument("--root", default=None, help="benchmark data root (ad-hoc; default params.yaml benchmark.root)")
    p.add_argument("--datasets", default=None, help="comma-separated datasets (ad-hoc)")
    p.add_argument("--protocol", default=None, help="scoring protocol (ad-hoc)")
    p.add_argument("--tiling", default=None, help="tiling (ad-hoc)")
    p.add_argument("--limit", type=int, default=None, help="images per dataset (ad-hoc)")
    p.add_argument("--out-dir", default=None, help=f"ad-hoc reports folder (default {AD_HOC_DIR}/<model>)")
    p.add_argument("--experiment", default="ipt-benchmark", help="MLflow experiment (ad-hoc)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
    p.add_argument("--workdir", default=None, help="project root (default: $IPT_PROJECT_DIR or .)")
    p.add_argument("--lock-timeout", type=float, default=3600.0, help="seconds to wait for the workspace lock")
    a = p.parse_args(argv)
    if a.model is None:
        given = [f"--{k}" for k in ("root", "datasets", "protocol", "tiling", "limit") if getattr(a, k) is not None]
        if given:
            p.error(f"{', '.join(given)} only with --model (an ad-hoc run); without it the DVC stages run")
    try:
        resolve_out_dir(a.model, a.out_dir, a.tasks, a.workdir)
    except ValueError as e:
        p.error(str(e))
    from flows.server import prefect_api

    with prefect_api():
        summary = _run(a)
    print(json.dumps(summary, indent=2))
    return 0


def _run(a) -> dict:
    return benchmark_ipt(
        tasks=a.tasks,
        model=a.model,
        root=a.root,
        datasets=a.datasets,
        protocol=a.protocol,
        tiling=a.tiling,
        limit=a.limit,
        out_dir=a.out_dir,
        experiment=a.experiment,
        tracking_uri=a.tracking_uri,
        workdir=a.workdir,
        lock_timeout=a.lock_timeout,
    )


if __name__ == "__main__":
    sys.exit(main())
