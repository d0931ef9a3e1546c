"""Prefect flows `pretrain-ipt` and `finetune-ipt`: the training stages under torchrun, logs streamed to Prefect.

The flow owns an MLflow run (experiment ``ipt-pretrain`` / ``ipt-finetune``) and hands its id to rank 0 through
``IPT_MLFLOW_RUN_ID``; torchrun's output (every rank's lines) goes to the Prefect log as it is printed. The stage
options come from params.yaml (``pretrain`` / ``finetune``) in ``workdir``; ``args`` adds or overrides flags.
For several nodes, run the same deployment on each node with its ``node_rank`` (docs/training.md).
"""

from __future__ import annotations

import json

from prefect import flow, get_run_logger

from flows.stages import run_command, torchrun_command
from ipt.tracking import MlflowTracker


def _train(
    stage: str,
    args: list[str],
    nproc_per_node: int,
    nnodes: int,
    node_rank: int,
    master_addr: str,
    master_port: int,
    workdir: str | None,
    experiment: str,
    tracking_uri: str | None,
    run_name: str,
) -> dict:
    logger = get_run_logger()
    run = MlflowTracker.start(experiment, run_name=run_name, tracking_uri=tracking_uri)
    run.set_tags({"stage": stage, "nproc_per_node": str(nproc_per_node), "nnodes": str(nnodes)})
    cmd = torchrun_command([stage, *args], nproc_per_node, nnodes, node_rank, master_addr, master_port)
    env = {"IPT_MLFLOW_RUN_ID": run.run_id, "MLFLOW_TRACKING_URI": run.tracking_uri}
    try:
        lines = run_command(cmd, env=env, cwd=workdir)
    except Exception:
        run.finish("FAILED")
        raise
    run.finish()
    result = next((json.loads(x) for x in reversed(lines) if x.startswith("{") and '"run_dir"' in x), {})
    logger.info("%s finished: %s", stage, result.get("model"))
    return {"mlflow_run_id": run.run_id, **result}


@flow(name="pretrain-ipt", log_prints=True)
def pretrain_ipt(
    args: list[str] | None = None,
    nproc_per_node: int = 1,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int = 29500,
    workdir: str | None = None,
    experiment: str = "ipt-pretrain",
    tracking_uri: str | None = None,
) -> dict:
    """Multi-task pre-training (`ipt pretrain`) under torchrun; returns the run folder, model and MLflow run id."""
    return _train(
        "pretrain",
        list(args or []),
        nproc_per_node,
        nnodes,
        node_rank,
        master_addr,
        master_port,
        workdir,
        experiment,
        tracking_uri,
        "pretrain",
    )


@flow(name="finetune-ipt", log_prints=True)
def finetune_ipt(
    task: str,
    args: list[str] | None = None,
    nproc_per_node: int = 1,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int = 29500,
    workdir: str | None = None,
    experiment: str = "ipt-finetune",
    tracking_uri: str | None = None,
) -> dict:
    """Fine-tuning of one task (`ipt finetune --task TASK`) under torchrun."""
    return _train(
        "finetune",
        ["--task", task, *(args or [])],
        nproc_per_node,
        nnodes,
        node_rank,
        master_addr,
        master_port,
        workdir,
        experiment,
        tracking_uri,
        f"finetune {task}",
    )
