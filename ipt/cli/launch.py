"""``ipt launch pretrain|finetune``: one process, or torchrun (standalone or c10d), from params ``launch``."""

from __future__ import annotations

import argparse

from ipt.cli.commands import UserError
from ipt.cli.params import config_from
from ipt.cli.parsing import parse_args


def cmd_launch(args: argparse.Namespace) -> int:
    from ipt import launch

    stage_args = list(args.stage_args)
    if stage_args[:1] == ["--"]:
        stage_args = stage_args[1:]
    if args.params and "--params" not in stage_args:  # the stage reads the same params file
        stage_args = ["--params", args.params, *stage_args]
    try:
        cfg = config_from(launch.LaunchConfig, args)
    except launch.LaunchError as e:
        raise UserError(str(e)) from None
    if cfg.distributed and not args.dry_run:  # a user error once, before torchrun starts ranks that would each hit it
        from ipt.cli.train import preflight
        from ipt.train.errors import TrainingError

        try:
            preflight(args.stage, parse_args([args.stage, *stage_args]))
        except TrainingError as e:
            raise UserError(str(e)) from None
    try:
        return launch.run(args.stage, stage_args, cfg, dry_run=args.dry_run)
    except launch.LaunchError as e:
        raise UserError(str(e)) from None


def add_launch(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "launch",
        help="run pretrain/finetune as one process or under torchrun (params.yaml `launch`)",
        description="ipt launch pretrain -- --steps 10: one process when nproc_per_node x nnodes is 1, else torchrun.",
    )
    p.add_argument("stage", choices=("pretrain", "finetune"))
    p.add_argument("stage_args", nargs=argparse.REMAINDER, help="flags of the stage, after `--`")
    p.add_argument("--nproc-per-node", type=int, help="processes (GPUs) per node (default 1)")
    p.add_argument("--nnodes", type=int, help="nodes; >1 needs --rdzv-endpoint (default 1)")
    p.add_argument(
        "--rdzv-endpoint", default=None, help="host:port of the c10d rendezvous (one node, reachable by all)"
    )
    p.add_argument("--rdzv-id", help="rendezvous id (the same on every node of one job; default ipt)")
    p.add_argument("--max-restarts", type=int, help="torchrun restarts of a failed worker group (default 0)")
    p.add_argument("--dry-run", action="store_true", help="print the command line instead of running it")
    p.add_argument("--params", default=None, help="params file (default params.yaml)")
    p.set_defaults(func=cmd_launch)
    return p


def rewrite_argv(argv: list[str]) -> list[str]:
    """``ipt launch STAGE --nnodes 2 --dry-run -- ...``: launch's own flags may follow the stage as well as precede it.

    The stage's arguments are an argparse remainder, which would swallow them; they move before the stage here.
    Tokens after ``--`` always belong to the stage; other tokens after the stage go to it too (``--`` is added).
    """
    if not argv or argv[0] != "launch":
        return argv
    parser = argparse.ArgumentParser(prog="ipt")
    launch = add_launch(parser.add_subparsers())
    arity = {o: a.nargs != 0 for a in launch._actions for o in a.option_strings}
    cut = argv.index("--") if "--" in argv else len(argv)
    head, tail = argv[1:cut], argv[cut + 1 :]
    front: list[str] = []  # launch's options (before the stage: any option, so argparse reports unknown ones)
    rest: list[str] = []  # the stage's tokens that came before `--`
    stage, i = None, 0
    while i < len(head):
        tok = head[i]
        name = tok.split("=", 1)[0]
        if name in arity or (stage is None and tok.startswith("-")):
            takes = arity.get(name, False) and "=" not in tok  # its value is the next token
            front += head[i : i + 1 + takes]
            i += 1 + takes
            continue
        if stage is None:
            stage = tok
        else:
            rest.append(tok)
        i += 1
    if stage is None:
        return argv
    return ["launch", *front, stage, "--", *rest, *tail]


PARSERS = {"launch": add_launch}
PARAMS_KEYS = {"launch": ("nproc_per_node", "nnodes", "rdzv_endpoint", "rdzv_id", "max_restarts")}
