"""``ipt corrupt --task T``: (LQ, HR) pair shards of one task of ``corrupt.tasks`` (DVC stage ``corrupt@T``)."""

from __future__ import annotations

import argparse
import dataclasses

from ipt.cli.data import FANOUT_KEYS, add_fanout_flags, report, run_plan
from ipt.cli.params import config_from, params_source
from ipt.codedeps import stage_digest


def cmd_corrupt(args: argparse.Namespace) -> int:
    from ipt.data.pairs import CorruptConfig, plan_corrupt
    from ipt.tasks import task_entry

    source = params_source(args)
    params_file = None if source == "none" else source
    name, spec = task_entry(getattr(args, "tasks", None), args.task, params_file)
    cfg = config_from(CorruptConfig, args, task=args.task, corruption=name, params=spec, params_file=params_file)
    cfg.spec()  # the task's entry checked (names the file and the problem) before the code is hashed
    cfg = dataclasses.replace(cfg, code=stage_digest("corrupt", name))
    manifest = run_plan(args, plan_corrupt(cfg), f"corrupt {args.task}")
    report(f"corrupt {args.task}", cfg.folder, manifest, args.quiet)
    return 0


def add_corrupt(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("corrupt", help="make (LQ, HR) pair shards of one task (DVC stage `corrupt@TASK`)")
    p.add_argument("--task", required=True, help="a key of corrupt.tasks in params.yaml")
    p.add_argument("--clean", help="clean shard folder (output of `ipt shard`)")
    p.add_argument("--out", help="output folder; '{task}' is replaced by the task name")
    p.add_argument("--patch-size", type=int, help="LQ patch size (HR is patch x scale; default 48)")
    p.add_argument("--png-level", type=int, help="zlib level of the stored PNGs (default 0)")
    p.add_argument("--seed", type=int, help="default: the project seed")
    add_fanout_flags(p)
    p.set_defaults(func=cmd_corrupt, required_from_params=("clean", "out"))
    return p


PARSERS = {"corrupt": add_corrupt}
PARAMS_KEYS = {"corrupt": ("tasks", "clean", "out", "png_level", *FANOUT_KEYS)}
