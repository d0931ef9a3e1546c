"""The ``ipt`` command: one subcommand per pipeline stage (``python -m ipt.cli <stage>`` in dvc.yaml and flows).

Each subcommand family lives in its own module (restore, benchmark, data, train, register, launch, refine) and only
the one a command line names is imported, so a stage's code is its module's imports and nothing else
(:mod:`ipt.codedeps` derives DVC's deps from them). Errors the user can fix are one line on stderr naming the file
and the problem, with exit code 2; a folder run that skipped bad files exits 1 after reporting them.
"""

from __future__ import annotations

import sys

from ipt.cli.commands import EXIT_PARTIAL, EXIT_USAGE, UserError, warn
from ipt.cli.parsing import parse_args
from ipt.errors import IPTError

__all__ = ["EXIT_PARTIAL", "EXIT_USAGE", "UserError", "main", "parse_args", "warn"]


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
