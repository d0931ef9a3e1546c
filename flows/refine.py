"""Prefect flow `refine-ipt`: train PTG-RM behind a base IPT, score the refined model, register it.

No torch import here (STYLE C1). Design notes: docs/refine.md#use-it (Prefect).
"""

from __future__ import annotations

import json

from prefect import flow, get_run_logger

from flows.stages import run_stage
from ipt.tracking import MlflowTracker


@flow(name="refine-ipt", log_prints=True)
def refine_ipt(
    task: str,
    base: str | None = None,
    prior: str | None = None,
    args: list[str] | None = None,
    benchmark: bool = True,
    benchmark_args: list[str] | None = None,
    to_registry: bool = True,
    workdir: str | None = None,
    experiment: str = "ipt-refine",
    tracking_uri: str | None = None,
) -> dict:
    """`ipt refine --task TASK [--base B] [--prior P] *args`, then `ipt benchmark *benchmark_args` and `ipt
    refine-register`. Unset options come from params.yaml (``refine``, ``benchmark``) in ``workdir``; returns the
    paths, the report and the MLflow run id."""
    logger = get_run_logger()
    run = MlflowTracker.start(experiment, run_name=f"refine {task}", tracking_uri=tracking_uri)
    run.set_tags({"stage": "refine", "task": task})
    env = {"IPT_MLFLOW_RUN_ID": run.run_id, "MLFLOW_TRACKING_URI": run.tracking_uri}
    flags = ["--task", task, *(["--base", base] if base else []), *(["--prior", prior] if prior else [])]
    try:
        out = run_stage("refine", [*flags, "--log-every", "0", *(args or [])], env=env, cwd=workdir)
        result = next(json.loads(x) for x in reversed(out.splitlines()) if x.startswith("{") and '"run_dir"' in x)
        report = None
        if benchmark:
            report = f"{result['run_dir']}/benchmark.json"
            bench = ["--task", task, "--model", result["model"], "--out", report, "--quiet", *(benchmark_args or [])]
            run_stage("benchmark", bench, env, workdir)
        if to_registry:
            reg = ["--checkpoint", result["model"], *(["--report", report] if report else [])]
            run_stage("refine-register", [*reg, "--out", f"{result['run_dir']}/register.json"], env, workdir)
    except Exception:
        run.finish("FAILED")
        raise
    run.finish()
    logger.info("refine %s finished: %s", task, result["model"])
    return {"mlflow_run_id": run.run_id, "model": result["model"], "report": report, **result}
