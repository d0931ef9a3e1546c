"""Running pipeline stages from Prefect: each stage is the same `python -m ipt.cli <stage>` that DVC runs, in a
subprocess (never in Prefect's worker threads) whose output streams into the task's log. No torch import here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

from prefect import get_run_logger, task


class StageFailed(RuntimeError):
    """A stage subprocess exited non-zero; the message holds its last lines."""


def run_command(cmd: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None) -> list[str]:
    """Run ``cmd``, stream its output line by line to the Prefect log, return the lines; raise on failure."""
    logger = get_run_logger()
    logger.info("$ %s", " ".join(cmd))
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        logger.info(lines[-1])
    if proc.wait() != 0:
        errors = [x for x in lines if x.startswith("error:")]  # the stage's own one-line diagnosis, if any
        tail = "\n".join(errors[:3] + lines[-10:])
        raise StageFailed(f"{' '.join(cmd[:4])} ... exited with {proc.returncode}:\n{tail}")
    return lines


def run_cli(args: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None) -> list[str]:
    """Run ``python -m ipt.cli *args`` through :func:`run_command`."""
    try:
        return run_command([sys.executable, "-m", "ipt.cli", *args], env=env, cwd=cwd)
    except StageFailed as e:
        raise StageFailed(f"ipt {args[0]}: {e}") from None


@task(name="ipt-stage", task_run_name="{stage}")
def run_stage(stage: str, args: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
    """One CLI stage as a Prefect task; returns its output."""
    return "\n".join(run_cli([stage, *args], env=env, cwd=cwd))
