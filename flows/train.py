"""Prefect flows `pretrain-ipt` and `finetune-ipt`: the training stages, logs streamed to Prefect.

DVC stages or an ad-hoc run, MLflow, several nodes: docs/pipeline.md#the-pipeline-four-ways-in (Prefect).
"""

from __future__ import annotations

import argparse
import json
import sys

from prefect import flow, get_run_logger

from flows.pipeline import run_dag
from flows.stages import run_command
from ipt import launch
from ipt.tracking import MlflowTracker

# The flow parameters that a direct (``args``) run hands to torchrun and MLflow.
DIRECT_RUN_PARAMS = "nproc_per_node nnodes rdzv_endpoint workdir experiment tracking_uri".split()


def _direct(flow_params: dict) -> dict:
    return {k: flow_params[k] for k in DIRECT_RUN_PARAMS}


def _train(
    stage: str,
    args: list[str],
    *,
    run_name: str,
    nproc_per_node: int,
    nnodes: int,
    rdzv_endpoint: str | None,
    workdir: str | None,
    experiment: str,
    tracking_uri: str | None,
) -> dict:
    logger = get_run_logger()
    run = MlflowTracker.start(experiment, run_name=run_name, tracking_uri=tracking_uri)
    run.set_tags({"stage": stage, "nproc_per_node": str(nproc_per_node), "nnodes": str(nnodes)})
    cfg = launch.LaunchConfig(nproc_per_node=nproc_per_node, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint)
    cmd = launch.command(stage, args, cfg)
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
    rdzv_endpoint: str | None = None,
    workdir: str | None = None,
    experiment: str = "ipt-pretrain",
    tracking_uri: str | None = None,
    lock_timeout: float = 3600.0,
) -> dict:
    """Multi-task pre-training: the DVC stage ``pretrain`` (and its stale upstream) by default; with ``args``,
    `ipt pretrain ARGS` directly, torchrun for more than one process (returns the run folder, model, MLflow run)."""
    if args is None:
        return run_dag(
            ["pretrain"], workdir=workdir, lock_timeout=lock_timeout, tracking_uri=tracking_uri, run_name="pretrain-ipt"
        )
    return _train("pretrain", list(args), run_name="pretrain", **_direct(locals()))


@flow(name="finetune-ipt", log_prints=True)
def finetune_ipt(
    task: str,
    args: list[str] | None = None,
    nproc_per_node: int = 1,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    workdir: str | None = None,
    experiment: str = "ipt-finetune",
    tracking_uri: str | None = None,
    lock_timeout: float = 3600.0,
) -> dict:
    """Fine-tuning of one task: the DVC stage ``finetune@TASK`` (and its stale upstream) by default; with
    ``args``, `ipt finetune --task TASK ARGS` directly (torchrun when more than one process)."""
    if args is None:
        return run_dag(
            [f"finetune@{task}"],
            workdir=workdir,
            lock_timeout=lock_timeout,
            tracking_uri=tracking_uri,
            run_name=f"finetune-ipt {task}",
        )
    return _train("finetune", ["--task", task, *(args or [])], run_name=f"finetune {task}", **_direct(locals()))


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.train {pretrain,finetune}`: run the flow in this process ($PREFECT_API_URL if set)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    stage_args = None
    if "--" in argv:  # everything after `--` goes to the stage: a direct run, outside DVC
        stage_args, argv = argv[argv.index("--") + 1 :], argv[: argv.index("--")]
    p = argparse.ArgumentParser(
        prog="python -m flows.train",
        description="Run the pretrain-ipt / finetune-ipt flow: the DVC stage pretrain / finetune@TASK (and stale "
        "upstream stages) by default; with `-- ARGS`, `ipt pretrain|finetune ARGS` directly (torchrun for several "
        "processes).",
        epilog="example: python -m flows.train finetune --task sr_x2 -- --steps 10",
    )
    sub = p.add_subparsers(dest="flow", required=True, metavar="{pretrain,finetune}")
    for name in ("pretrain", "finetune"):
        q = sub.add_parser(name, help=f"the {name}-ipt flow", description=f"The {name}-ipt flow. Stage flags: -- ARGS")
        if name == "finetune":
            q.add_argument("--task", required=True, help="the task to fine-tune (finetune@TASK)")
        q.add_argument("--workdir", default=None, help="project root (default: $IPT_PROJECT_DIR or .)")
        q.add_argument("--nproc-per-node", type=int, default=1, help="torchrun processes per node (with -- ARGS)")
        q.add_argument("--nnodes", type=int, default=1, help="torchrun nodes (with -- ARGS)")
        q.add_argument(
            "--rdzv-endpoint", default=None, help="host:port of the c10d rendezvous, for --nnodes > 1 (with -- ARGS)"
        )
        q.add_argument("--experiment", default=f"ipt-{name}", help="MLflow experiment (with -- ARGS)")
        q.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
        q.add_argument("--lock-timeout", type=float, default=3600.0, help="seconds to wait for the workspace lock")
    a = p.parse_args(argv)
    common = dict(
        args=stage_args,
        nproc_per_node=a.nproc_per_node,
        nnodes=a.nnodes,
        rdzv_endpoint=a.rdzv_endpoint,
        workdir=a.workdir,
        experiment=a.experiment,
        tracking_uri=a.tracking_uri,
        lock_timeout=a.lock_timeout,
    )
    from flows.server import prefect_api

    with prefect_api():
        result = pretrain_ipt(**common) if a.flow == "pretrain" else finetune_ipt(task=a.task, **common)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
