"""Fan a list of independent jobs out over workers: in-process, local processes, or a Dask cluster.

Design notes: docs/data_pipeline.md#fan-out.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

EXECUTORS = ("process", "serial", "dask")
T = TypeVar("T")


def map_unordered(
    fn: Callable[[T], Any],
    jobs: Sequence[T],
    executor: str = "process",
    workers: int = 2,
    address: str | None = None,
) -> Iterator[Any]:
    """Yield ``fn(job)`` for every job as each finishes; the first exception is raised after in-flight jobs end.

    ``process``: ``workers`` spawned processes (spawn, not fork: safe beside threads and OpenMP). ``dask``: the
    cluster at ``address`` (``tcp://host:8786``), or a local cluster of ``workers`` processes when none is given.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; known: {list(EXECUTORS)}")
    if not jobs:
        return
    if executor == "serial" or (executor == "process" and (workers <= 1 or len(jobs) == 1)):
        for job in jobs:
            yield fn(job)
        return
    if executor == "process":
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
            futures = [pool.submit(fn, job) for job in jobs]
            try:
                for fut in as_completed(futures):
                    yield fut.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return
    yield from _dask_map(fn, jobs, workers, address)


def _dask_map(fn: Callable[[T], Any], jobs: Sequence[T], workers: int, address: str | None) -> Iterator[Any]:
    try:
        from distributed import Client, LocalCluster
        from distributed import as_completed as dask_completed
    except ImportError:  # pragma: no cover - dask is a declared dependency
        raise ValueError("executor 'dask' needs dask[distributed] (pip install prefect-dask)") from None
    cluster = None
    if address:
        client = Client(address)
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        futures = client.map(fn, list(jobs), pure=False)
        for fut in dask_completed(futures):
            yield fut.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
