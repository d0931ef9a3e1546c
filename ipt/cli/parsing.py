"""The ``ipt`` argument parser: only the named command's module is imported; params.yaml fills the defaults."""

from __future__ import annotations

import argparse
import sys

from ipt.cli import params
from ipt.cli.commands import COMMANDS, DESCRIPTION, UserError, command_module


def _command_of(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser | None]:
    """The ``ipt`` parser with ``command``'s subparser built (every other subcommand is a name and a help line)."""
    parser = argparse.ArgumentParser(prog="ipt", description=DESCRIPTION)
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
