"""What the two data stages' commands share (``ipt shard``, ``ipt corrupt``): fan-out flags, progress, the report."""

from __future__ import annotations

import argparse

from ipt.cli.commands import warn


def progress_bar(args: argparse.Namespace, desc: str):
    from tqdm import tqdm

    bar = None

    def progress(done: int, total: int, result) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, initial=done, desc=desc, unit="shard", disable=args.quiet)
        else:
            bar.update(1)
        if done == total:
            bar.close()

    return progress


def run_plan(args: argparse.Namespace, plan, desc: str) -> dict:
    from ipt.data.plan import execute

    return execute(
        plan, executor=args.executor, workers=args.workers, address=args.dask_address, progress=progress_bar(args, desc)
    )


def report(kind: str, folder: str, manifest: dict, quiet: bool) -> None:
    skipped = manifest["skipped"]
    print(
        f"{kind}: {manifest['samples']} samples in {len(manifest['shards'])} shard(s) at {folder}"
        + (f"; skipped {len(skipped)} file(s), listed in {folder}/manifest.json" if skipped else "")
    )
    if not quiet:
        for s in skipped[:10]:
            warn(f"skipped {s['path']}: {s['reason']}")
        if len(skipped) > 10:
            warn(f"... and {len(skipped) - 10} more")


def add_fanout_flags(p: argparse.ArgumentParser) -> None:
    from ipt.data.executors import EXECUTORS

    p.add_argument("--executor", choices=EXECUTORS, default="process", help="how shards fan out (default: process)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (process, local dask)")
    p.add_argument("--dask-address", default=None, help="scheduler of a running Dask cluster, tcp://host:8786")
    p.add_argument("--params", default=None, help="params file (default ./params.yaml; 'none' ignores it)")
    p.add_argument("--quiet", action="store_true")


FANOUT_KEYS = ("executor", "workers", "dask_address", "seed", "patch_size")
