"""`ipt launch pretrain|finetune`: start a training stage as one process or under torchrun, from params.yaml.

No torch import here (torchrun is a subprocess). Design notes: docs/training.md#distributed.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass

from ipt.errors import IPTError

STAGES = ("pretrain", "finetune")


class LaunchError(IPTError):
    """A launch configuration that cannot work; the message names the key."""


@dataclass(frozen=True)
class LaunchConfig:
    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str | None = None  # host:port, required when nnodes > 1
    rdzv_id: str = "ipt"
    max_restarts: int = 0

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1 or self.nnodes < 1:
            raise LaunchError(
                f"launch: nproc_per_node and nnodes must be >= 1, not {self.nproc_per_node}, {self.nnodes}"
            )
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise LaunchError(
                f"launch: nnodes={self.nnodes} needs rdzv_endpoint (host:port of one node, reachable by all)"
            )
        if self.rdzv_endpoint and ":" not in self.rdzv_endpoint:
            raise LaunchError(f"launch: rdzv_endpoint {self.rdzv_endpoint!r} must be host:port")
        if self.max_restarts < 0:
            raise LaunchError("launch: max_restarts must be >= 0")

    @property
    def distributed(self) -> bool:
        return self.nproc_per_node * self.nnodes > 1


def command(stage: str, stage_args: list[str], cfg: LaunchConfig, python: str | None = None) -> list[str]:
    """The argv that runs ``ipt <stage> <stage_args>`` under ``cfg``."""
    if stage not in STAGES:
        raise LaunchError(f"launch: unknown stage {stage!r}; known: {', '.join(STAGES)}")
    py = python or sys.executable
    target = ["-m", "ipt.cli", stage, *stage_args]
    if not cfg.distributed:
        return [py, *target]
    run = [py, "-m", "torch.distributed.run", f"--nnodes={cfg.nnodes}", f"--nproc-per-node={cfg.nproc_per_node}"]
    if cfg.nnodes == 1:
        run.append("--standalone")
    else:
        run += ["--rdzv-backend=c10d", f"--rdzv-endpoint={cfg.rdzv_endpoint}", f"--rdzv-id={cfg.rdzv_id}"]
    run.append(f"--max-restarts={cfg.max_restarts}")
    return [*run, *target]


def run(stage: str, stage_args: list[str], cfg: LaunchConfig, dry_run: bool = False) -> int:
    """Print the command (``dry_run``) or replace this process with it, so a signal from DVC reaches torchrun."""
    argv = command(stage, stage_args, cfg)
    if dry_run:
        print(shlex.join(argv))
        return 0
    print(f"launch: {shlex.join(argv)}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execv(argv[0], argv)
    return 0  # not reached
