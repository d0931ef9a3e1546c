"""Prefect flow `benchmark-ipt`: score a model on the paper's test sets for each task, logged to MLflow.

With no ``model`` the flow runs the DVC stages ``benchmark@<task>`` (the fine-tuned model of the DAG and its
baseline, and any stale upstream stage) through flows/pipeline.py. With ``model`` (``baseline``, a weights file,
``models:/ipt-sr_x2@champion``) it scores that model directly, outside DVC:

One MLflow parent run per flow run and one child run per task (the same dataset appears under several tasks, so
metrics `<dataset>/psnr_y` live in the task's own run). The stage itself is `ipt benchmark`, run as a subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger

from flows.pipeline import params_tasks, project_dir, run_dag
from flows.stages import run_stage
from ipt.tracking import MlflowTracker

DEFAULT_TASKS = ["sr_x2", "sr_x3", "sr_x4", "denoise_s30", "denoise_s50", "derain"]


@flow(name="benchmark-ipt", log_prints=True)
def benchmark_ipt(
    tasks: list[str] | None = None,
    model: str | None = None,
    root: str | None = None,
    datasets: str | None = None,
    protocol: str | None = None,
    tiling: str | None = None,
    limit: int | None = None,
    out_dir: str = "metrics/benchmark",
    experiment: str = "ipt-benchmark",
    tracking_uri: str | None = None,
    workdir: str | None = None,
    lock_timeout: float = 3600.0,
) -> dict[str, dict]:
    """Benchmark ``model`` on every task; returns ``{task: {dataset: psnr_y}}`` and writes ``out_dir/<task>.json``.

    Unset options come from the `benchmark` section of params.yaml in ``workdir`` (the project root by default).
    No ``model``: the DVC stages ``benchmark@<task>`` for ``tasks`` (default: params.yaml's), then the same summary.
    """
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


if __name__ == "__main__":
    benchmark_ipt()
