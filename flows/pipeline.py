"""Prefect flow `ipt-pipeline`: the whole DAG of dvc.yaml, one Prefect task per DVC stage, DVC deciding what runs.

No torch import here. Design notes: docs/pipeline.md#the-pipeline-four-ways-in (Prefect).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows import new_type
from flows.dvc import (
    UnknownStage,
    check_targets,
    dvc_executable,
    params_tasks,
    plan,
    project_dir,
    stage_commands,
    workspace_lock,
)
from flows.report import report, summary, summary_table
from flows.stages import run_command


@task(name="dvc-stage", task_run_name="{stage}")
def repro_stage(stage: str, workdir: str, env: dict[str, str]) -> str:
    """``dvc repro --single-item <stage>``: DVC checks the stage again and runs it only if it is stale."""
    lines = run_command([dvc_executable(), "repro", "--single-item", stage], env=env, cwd=workdir)
    text = "\n".join(lines)
    return "unchanged" if "didn't change" in text and "Running stage" not in text else "ran"


@task(name="dvc-push", task_run_name="dvc push")
def push(workdir: str, remote: str | None) -> None:
    run_command([dvc_executable(), "push", *(["-r", remote] if remote else [])], cwd=workdir)


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
        added = None
        try:
            if "register-pretrained" in stages:  # a new body will be registered: keep the champions from before it
                new_type.snapshot(root, uri, params_tasks(root))
            for stage in stages:
                results[stage] = repro_stage.with_options(task_run_name=stage)(stage, str(root), env)
            added = new_type.compare(root, uri, parent_run_id=parent.run_id)
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
    if added:
        logger.info("new corruption type(s) %s: %s (%s)", ", ".join(added["added"]), added["verdict"], added["folder"])
        text = (Path(added["folder"]) / "report.md").read_text()
        create_markdown_artifact(text, key="ipt-new-type", description="what the new corruption type added")
    if rows:
        create_markdown_artifact(table, key="ipt-benchmark-summary", description="model vs baseline, Y-PSNR (dB)")
        logger.info("benchmark summary:\n%s", table)
    ran = [s for s, r in results.items() if r == "ran"]
    out = {"stages": results, "ran": ran, "summary": rows, "mlflow_run_id": parent.run_id}
    return out | ({"new_type": added} if added else {})


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
    p.add_argument(
        "--cost",
        metavar="PLAN",
        default=None,
        help="with --dry-run: price PLAN (e.g. benchmarks/paper_scale.yaml) per stage at measured rates",
    )
    p.add_argument("--workers", type=int, default=2, help="data workers the --cost plan assumes (default 2)")
    p.add_argument("--gpus", type=int, default=8, help="GPUs the --cost plan assumes (default 8)")
    p.add_argument("--png-level", type=int, default=None, help="PNG level the --cost plan assumes (default the plan's)")
    a = p.parse_args(argv)
    if a.cost is not None:
        if not a.dry_run:
            p.error("--cost prices a plan; it goes with --dry-run")
        from flows import cost

        try:
            root = project_dir(a.workdir)
            print(cost.report(cost.load_plan(a.cost), root, workers=a.workers, gpus=a.gpus, png_level=a.png_level))
        except (cost.CostError, FileNotFoundError, RuntimeError) as e:
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
        return 0
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
    from flows.server import prefect_api

    with prefect_api():
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
