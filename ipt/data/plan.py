"""Running a data stage's plan: lock the folder, skip the shards a previous run of the same plan finished, fan the
rest out, write the manifest. The stages themselves are :mod:`ipt.data.clean` (``ipt shard``) and
:mod:`ipt.data.pairs` (``ipt corrupt``); docs/data_format.md has the shard layout, docs/data_pipeline.md the stages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ipt.data import shards, storage
from ipt.data.executors import map_unordered


@dataclass(frozen=True)
class Plan:
    """Every shard's inputs (``jobs``, each with a ``run()``) and a digest of everything that decides the bytes."""

    folder: str
    digest: str
    format: str
    jobs: tuple[Any, ...]
    params: dict[str, Any]
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [j.name for j in self.jobs]


def run_job(job: Any) -> shards.ShardResult:
    """One job (picklable, for process and Dask workers)."""
    return job.run()


ProgressFn = Callable[[int, int, shards.ShardResult | None], None]


def check_not_empty(plan: Plan, manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` if it has samples; else :class:`~ipt.data.shards.ShardError` naming the source and how many
    files were skipped (the manifest, with every skip reason, stays for diagnosis)."""
    if manifest.get("samples"):
        return manifest
    skipped = manifest.get("skipped") or []
    first = f"; first: {skipped[0]['path']}: {skipped[0]['reason']}" if skipped else ""
    where = f"reasons in {storage.join(plan.folder, shards.MANIFEST)}"
    if plan.format == shards.FORMAT_CLEAN:
        n = plan.params.get("images", len(skipped))
        raise shards.ShardError(
            f"{plan.params.get('source', plan.folder)}: all {n} file(s) were skipped, no samples ({where}{first})"
        )
    raise shards.ShardError(
        f"{plan.params.get('clean', plan.folder)}: all {len(skipped)} clean sample(s) were skipped, no pairs "
        f"({where}{first})"
    )


def start(plan: Plan) -> tuple[dict[str, Any] | None, list[Any]]:
    """Under the caller's lock: (the manifest if already complete, else None; the jobs still to run). A complete
    folder without a single sample is an error (:func:`check_not_empty`)."""
    manifest = shards.prepare_folder(plan.folder, plan.digest, plan.format, plan.names)
    if manifest is not None:
        return check_not_empty(plan, manifest), []
    done = shards.completed(plan.folder, plan.digest, plan.names)
    return None, [j for j in plan.jobs if j.name not in done]


def finish(plan: Plan) -> dict[str, Any]:
    """Write the manifest; an error (after writing it) if no sample was made (:func:`check_not_empty`)."""
    manifest = shards.finalize(plan.folder, plan.digest, plan.format, plan.names, plan.params, plan.skipped)
    return check_not_empty(plan, manifest)


def execute(
    plan: Plan,
    executor: str = "process",
    workers: int = 2,
    address: str | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Run ``plan`` into its folder (resuming a killed run of the same plan) and return its manifest."""
    with shards.FolderLock(plan.folder):
        manifest, todo = start(plan)
        if manifest is not None:
            return manifest
        total, done = len(plan.jobs), len(plan.jobs) - len(todo)
        if progress:
            progress(done, total, None)
        for result in map_unordered(run_job, todo, executor=executor, workers=workers, address=address):
            done += 1
            if progress:
                progress(done, total, result)
        return finish(plan)
