"""Running pipeline stages from Prefect: each stage is the same `python -m ipt.cli <stage>` that DVC runs.

CPU-heavy work happens in the subprocess, never in Prefect's worker threads; its output is streamed line by line
into the task's log. No torch import here (STYLE C1).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

from prefect import get_run_logger, task


class StageFailed(RuntimeError):
    """A stage subprocess exited non-zero; the message holds its last lines."""


def run_cli(args: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None) -> list[str]:
    """Run ``python -m ipt.cli *args``, stream its output to the Prefect log, return the lines; raise on failure."""
    logger = get_run_logger()
    cmd = [sys.executable, "-m", "ipt.cli", *args]
    logger.info("$ %s", " ".join(cmd))
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}, cwd=cwd
    )
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        logger.info(lines[-1])
    if proc.wait() != 0:
        tail = "\n".join(lines[-10:])
        raise StageFailed(f"ipt {args[0]} exited with {proc.returncode}:\n{tail}")
    return lines


@task(name="ipt-stage", task_run_name="{stage}")
def run_stage(stage: str, args: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
    """One CLI stage as a Prefect task; returns its output."""
    return "\n".join(run_cli([stage, *args], env=env, cwd=cwd))
