"""Prefect flows `shard-ipt` and `corrupt-ipt`: the data stages, fanned out over shards by a Prefect task runner.

Thin on purpose (the planning is :mod:`ipt.data`): docs/data_pipeline.md#fan-out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed

from ipt.codedeps import stage_digest
from ipt.config import DEFAULT_SEED
from ipt.data import clean as clean_stage
from ipt.data import pairs, plan, shards
from ipt.tasks import task_entry


@task(name="write-shard", task_run_name="{job.name}")
def write_shard(job: Any) -> dict[str, Any]:
    r = plan.run_job(job)
    return {"name": r.name, "samples": r.samples, "skipped": len(r.skipped)}


def task_runner(executor: str, workers: int, address: str | None = None):
    """The Prefect task runner for an executor name (the same names as ``ipt shard --executor``)."""
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    if executor == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
        )
    if executor == "process":
        return ProcessPoolTaskRunner(max_workers=workers)
    if executor == "serial":
        return ThreadPoolTaskRunner(max_workers=1)
    raise ValueError(f"unknown executor {executor!r}; known: dask, process, serial")


@flow(name="write-shards")
def fan_out(jobs: list[Any], total: int, label: str) -> int:
    """Write ``jobs`` with this flow's task runner; a progress artifact counts the shards done out of ``total``."""
    done = total - len(jobs)
    key = "shards-" + "".join(c if c.isalnum() else "-" for c in label.lower())
    artifact = create_progress_artifact(100.0 * done / max(total, 1), key=key, description=f"{label}: shards written")
    futures = write_shard.map(jobs)
    for fut in as_completed(futures):
        fut.result()
        done += 1
        update_progress_artifact(artifact, 100.0 * done / total, description=f"{label}: {done}/{total} shards")
    return done


def _execute(stage_plan: plan.Plan, label: str, executor: str, workers: int, address: str | None) -> dict[str, Any]:
    logger = get_run_logger()
    with shards.FolderLock(stage_plan.folder):
        manifest, todo = plan.start(stage_plan)
        if manifest is not None:
            logger.info("%s: %s is up to date (%d samples)", label, stage_plan.folder, manifest["samples"])
            return manifest
        logger.info(
            "%s: %d of %d shards to write into %s (%s)",
            label,
            len(todo),
            len(stage_plan.jobs),
            stage_plan.folder,
            executor,
        )
        fan_out.with_options(task_runner=task_runner(executor, workers, address))(todo, len(stage_plan.jobs), label)
        manifest = plan.finish(stage_plan)
    logger.info("%s: %d samples, %d skipped", label, manifest["samples"], len(manifest["skipped"]))
    return manifest


def _section(params_file: str | None, name: str) -> dict[str, Any]:
    from ipt.cli.params import params_section

    if not params_file or params_file == "none":
        return {}
    return params_section(Path(params_file), name)


@flow(name="shard-ipt", log_prints=True)
def shard_ipt(
    params_file: str | None = "params.yaml",
    source: str | None = None,
    out: str | None = None,
    executor: str | None = None,
    workers: int | None = None,
    dask_address: str | None = None,
    crops: int | None = None,
    images_per_shard: int | None = None,
    max_scale: int | None = None,
    patch_size: int | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Clean shards from ``source`` (params.yaml ``shard`` section; arguments override it). Returns the manifest
    summary ``{samples, shards, skipped}``."""
    given = {
        "source": source,
        "out": out,
        "crops": crops,
        "images_per_shard": images_per_shard,
        "max_scale": max_scale,
        "patch_size": patch_size,
        "seed": seed,
    }
    p = {**_section(params_file, "shard"), **{k: v for k, v in given.items() if v is not None}}
    fields = set(clean_stage.ShardConfig.__dataclass_fields__) - {"code"}
    cfg = clean_stage.ShardConfig(**{k: v for k, v in p.items() if k in fields}, code=stage_digest("shard"))
    manifest = _execute(
        clean_stage.plan_shard(cfg),
        "shard",
        executor or p.get("executor", "process"),
        int(workers or p.get("workers", 2)),
        dask_address or p.get("dask_address"),
    )
    return {"samples": manifest["samples"], "shards": len(manifest["shards"]), "skipped": len(manifest["skipped"])}


@flow(name="corrupt-ipt", log_prints=True)
def corrupt_ipt(
    tasks: list[str] | None = None,
    params_file: str | None = "params.yaml",
    clean: str | None = None,
    out: str | None = None,
    executor: str | None = None,
    workers: int | None = None,
    dask_address: str | None = None,
) -> dict[str, int]:
    """Pair shards for each task of params.yaml ``corrupt.tasks`` (or the given subset); returns samples per task."""
    p = _section(params_file, "corrupt")
    specs: dict[str, dict] = p.get("tasks") or {}
    summary: dict[str, int] = {}
    for t in tasks or list(specs):
        name, spec = task_entry(specs, t, params_file)  # an error naming the file and the task
        cfg = pairs.CorruptConfig(
            task=t,
            corruption=name,
            params=spec,
            params_file=params_file,
            clean=clean or p.get("clean", "data/clean"),
            out=out or p.get("out", "data/pairs/{task}"),
            patch_size=int(p.get("patch_size", 48)),
            png_level=int(p.get("png_level", 0)),
            seed=int(p.get("seed", DEFAULT_SEED)),
            code=stage_digest("corrupt", name),
        )
        manifest = _execute(
            pairs.plan_corrupt(cfg),
            f"corrupt {t}",
            executor or p.get("executor", "process"),
            int(workers or p.get("workers", 2)),
            dask_address or p.get("dask_address"),
        )
        summary[t] = manifest["samples"]
    return summary
