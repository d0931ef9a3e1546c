"""The table of ``ipt`` subcommands (name -> module, help) and what every subcommand module shares."""

from __future__ import annotations

import importlib
import sys

from ipt.errors import IPTError

DESCRIPTION = (
    "The ``ipt`` command: one subcommand per pipeline stage (``python -m ipt.cli <stage>`` in dvc.yaml and flows)."
)
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
    "export": ("export", "write one task of a model as ONNX or in the official layout (spandrel)"),
    "demo": ("restore", "restore a sample image with a tiny random-weight IPT (a smoke run of `ipt restore`)"),
}


class UserError(IPTError):
    """A problem with the user's input, reported as one line."""


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def command_module(command: str):
    """The module under ``ipt.cli`` that defines ``command`` (imported on first use)."""
    return importlib.import_module(f"ipt.cli.{COMMANDS[command][0]}")
