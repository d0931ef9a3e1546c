"""The ``ipt`` command: one subcommand per pipeline stage (``python -m ipt.cli <stage>`` in dvc.yaml and flows).

Design notes: docs/design.md#iptcli__init__py.
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
