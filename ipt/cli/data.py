"""``ipt shard`` (clean crops of a source) and ``ipt corrupt`` (pair shards of one task): the two data stages."""

from __future__ import annotations

import argparse

from ipt.cli import UserError
from ipt.cli import warn as _warn
from ipt.cli.params import params_source


def _data_progress(args: argparse.Namespace, desc: str):
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


def _run_plan(args: argparse.Namespace, plan, desc: str) -> dict:
    from ipt.data import stages

    return stages.execute(
        plan,
        executor=args.executor,
        workers=args.workers,
        address=args.dask_address,
        progress=_data_progress(args, desc),
    )


def _report(kind: str, folder: str, manifest: dict, quiet: bool) -> None:
    skipped = manifest["skipped"]
    print(
        f"{kind}: {manifest['samples']} samples in {len(manifest['shards'])} shard(s) at {folder}"
        + (f"; skipped {len(skipped)} file(s), listed in {folder}/manifest.json" if skipped else "")
    )
    if not quiet:
        for s in skipped[:10]:
            _warn(f"skipped {s['path']}: {s['reason']}")
        if len(skipped) > 10:
            _warn(f"... and {len(skipped) - 10} more")


def _data_errors():
    from ipt.data.shards import ShardError
    from ipt.data.sources import SourceError
    from ipt.data.storage import StorageError

    return (ShardError, SourceError, StorageError, ValueError)


def cmd_shard(args: argparse.Namespace) -> int:
    from ipt.data import stages

    try:
        cfg = stages.ShardConfig(
            source=args.source,
            out=args.out,
            patch_size=args.patch_size,
            max_scale=args.max_scale,
            crops=args.crops,
            images_per_shard=args.images_per_shard,
            png_level=args.png_level,
            seed=args.seed,
        )
        plan = stages.plan_shard(cfg)
        manifest = _run_plan(args, plan, "shard")
    except _data_errors() as e:
        raise UserError(str(e)) from None
    _report("shard", cfg.out, manifest, args.quiet)
    return 0


def _add_fanout_flags(p: argparse.ArgumentParser) -> None:
    from ipt.data.executors import EXECUTORS

    p.add_argument("--executor", choices=EXECUTORS, default="process", help="how shards fan out (default: process)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (process, local dask)")
    p.add_argument("--dask-address", default=None, help="scheduler of a running Dask cluster, tcp://host:8786")
    p.add_argument("--params", default=None, help="params file (default ./params.yaml; 'none' ignores it)")
    p.add_argument("--quiet", action="store_true")


def add_shard(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("shard", help="cut clean crops of a source into WebDataset shards (DVC stage `shard`)")
    p.add_argument("--source", help="image folder, ILSVRC2012 train tarball, s3:// URL, or 'skimage'")
    p.add_argument("--out", help="output folder (local or s3://)")
    p.add_argument("--patch-size", type=int, default=48, help="LQ patch size of training (crop = patch x max scale)")
    p.add_argument("--max-scale", type=int, default=4, help="largest SR scale any task will need")
    p.add_argument("--crops", type=int, default=2, help="random crops per image")
    p.add_argument("--images-per-shard", type=int, default=256)
    p.add_argument("--png-level", type=int, default=0, help="zlib level of the stored PNGs (0: stored, fastest)")
    p.add_argument("--seed", type=int, default=20210507)
    _add_fanout_flags(p)
    p.set_defaults(func=cmd_shard, required_from_params=("source", "out"))
    return p


def cmd_corrupt(args: argparse.Namespace) -> int:
    from ipt.data import stages

    source = params_source(args)
    params_file = None if source == "none" else source
    try:
        name, spec = stages.task_spec(getattr(args, "tasks", None), args.task, params_file)
        cfg = stages.CorruptConfig(
            task=args.task,
            corruption=name,
            params=spec,
            clean=args.clean,
            out=args.out,
            patch_size=args.patch_size,
            png_level=args.png_level,
            seed=args.seed,
            params_file=params_file,
        )
        plan = stages.plan_corrupt(cfg)
        manifest = _run_plan(args, plan, f"corrupt {args.task}")
    except KeyError as e:
        raise UserError(f"task {args.task}: {e.args[0] if e.args else e}") from None
    except _data_errors() as e:
        raise UserError(str(e)) from None
    _report(f"corrupt {args.task}", cfg.folder, manifest, args.quiet)
    return 0


def add_corrupt(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("corrupt", help="make (LQ, HR) pair shards of one task (DVC stage `corrupt@TASK`)")
    p.add_argument("--task", required=True, help="a key of corrupt.tasks in params.yaml")
    p.add_argument("--clean", help="clean shard folder (output of `ipt shard`)")
    p.add_argument("--out", help="output folder; '{task}' is replaced by the task name")
    p.add_argument("--patch-size", type=int, default=48, help="LQ patch size (HR is patch x scale)")
    p.add_argument("--png-level", type=int, default=0)
    p.add_argument("--seed", type=int, default=20210507)
    _add_fanout_flags(p)
    p.set_defaults(func=cmd_corrupt, required_from_params=("clean", "out"))
    return p


PARSERS = {"shard": add_shard, "corrupt": add_corrupt}
_FANOUT = ("executor", "workers", "dask_address", "seed", "patch_size")
PARAMS_KEYS = {
    "shard": ("source", "out", "max_scale", "crops", "images_per_shard", "png_level", *_FANOUT),
    "corrupt": ("tasks", "clean", "out", "png_level", *_FANOUT),
}
