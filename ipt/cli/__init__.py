"""The ``ipt`` command: one subcommand per pipeline stage (``python -m ipt.cli <stage>`` in dvc.yaml and flows).

Each subcommand family lives in its own module (restore, benchmark, data, train, register, launch, refine) and only
the one a command line names is imported, so a stage's code is its module's imports and nothing else
(:mod:`ipt.codedeps` derives DVC's deps from them). Errors the user can fix are one line on stderr naming the file
and the problem, with exit code 2; a folder run that skipped bad files exits 1 after reporting them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ipt.errors import IPTError

EXIT_USAGE, EXIT_PARTIAL = 2, 1

# subcommand -> (module under ipt.cli that builds and runs it, one-line help for `ipt --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "restore": ("restore", "restore an image or a folder of images with IPT weights"),
    "benchmark": ("benchmark", "score a model or a baseline on benchmark sets (Y-PSNR, SSIM, RGB-PSNR)"),
    "shard": ("shard", "cut clean crops of a source into WebDataset shards (DVC stage `shard`)"),
    "corrupt": ("corrupt", "make (LQ, HR) pair shards of one task (DVC stage `corrupt@TASK`)"),
    "pretrain": ("train", "multi-task IPT pre-training on pair shards (DDP-ready)"),
    "finetune": ("train", "fine-tune a pretrained IPT on one task; writes a single-task checkpoint"),
    "register": ("register", "register a checkpoint in MLflow; move 'champion' only on a better score"),
    "launch": ("launch", "run pretrain/finetune as one process or under torchrun (params.yaml `launch`)"),
    "refine": ("refine", "train PTG-RM (prior-guided refinement) behind a base IPT on pair shards"),
    "refine-register": ("refine", "register a refiner checkpoint as ipt-<task>-ptgrm (champion on score)"),
    "demo": ("restore", "restore a sample image with a tiny random-weight IPT (a smoke run of `ipt restore`)"),
}


class UserError(IPTError):
    """A problem with the user's input, reported as one line."""


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def command_module(command: str):
    """The module under ``ipt.cli`` that defines ``command`` (imported on first use)."""
    return importlib.import_module(f"ipt.cli.{COMMANDS[command][0]}")


def _command_of(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser | None]:
    """The ``ipt`` parser with ``command``'s subparser built (every other subcommand is a name and a help line)."""
    parser = argparse.ArgumentParser(prog="ipt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    built = None
    for name, (_module, help_text) in COMMANDS.items():
        if name == command:
            built = command_module(name).PARSERS[name](sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser, built


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; flags the command line leaves out default from the command's params.yaml section."""
    from ipt.cli import params

    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(argv)
    if command not in COMMANDS:
        command = None
    else:  # a command may reorder its own argv first (launch: its flags after the stage)
        argv = getattr(command_module(command), "rewrite_argv", lambda a: a)(argv)
    parser, sub = build_parser(command)
    args = parser.parse_args(argv)
    section = params.defaults_for(args, sub)
    if section:
        sub.set_defaults(**section)
        args = parser.parse_args(argv)
    for name in getattr(args, "required_from_params", ()):
        if getattr(args, name) is None:
            raise UserError(f"--{name} is required (or '{args.command}.{name}' in params.yaml)")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except IPTError as e:  # the project's own errors only: a KeyError or ValueError from anywhere else is a bug
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
