"""The DVC side of the flows: the project folder, the workspace lock, DVC's DAG and what is stale, stage commands.

DVC decides staleness (``dvc status``, ``dvc dag``); no Prefect and no torch here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

LOCK_FILE = ".dvc/tmp/ipt-pipeline.lock"


class PipelineBusy(RuntimeError):
    """Another pipeline run holds this workspace."""


class UnknownStage(ValueError):
    """A target that names no stage of dvc.yaml."""


def project_dir(workdir: str | None = None) -> Path:
    """The workspace: ``workdir``, else ``$IPT_PROJECT_DIR``, else the current directory. It must hold dvc.yaml."""
    d = Path(workdir or os.environ.get("IPT_PROJECT_DIR") or ".").resolve()
    if not (d / "dvc.yaml").is_file():
        raise FileNotFoundError(f"{d}: no dvc.yaml here; pass workdir= or set IPT_PROJECT_DIR to the project root")
    return d


@contextlib.contextmanager
def workspace_lock(workdir: Path, timeout: float = 3600.0, poll: float = 1.0) -> Iterator[Path]:
    """Hold the workspace's pipeline lock; wait up to ``timeout`` seconds for another run to release it."""
    path = workdir / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.seek(0)
                    holder = f.read().strip() or "another process"
                    raise PipelineBusy(
                        f"{path}: held by {holder} for more than {timeout:.0f} s; one pipeline run per workspace"
                    ) from None
                time.sleep(poll)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        try:
            yield path
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def dvc_executable() -> str:
    """The ``dvc`` beside this interpreter (a venv's), else the one on PATH."""
    here = Path(sys.executable).parent / "dvc"
    return str(here) if here.is_file() else (shutil.which("dvc") or "dvc")


def _dvc(args: Sequence[str], workdir: Path) -> str:
    import subprocess

    proc = subprocess.run([dvc_executable(), *args], cwd=workdir, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {workdir}:\n{(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def dag(workdir: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Stage names and (upstream, downstream) edges of dvc.yaml, from ``dvc dag --dot``."""
    text = _dvc(["dag", "--dot"], workdir)
    edges = [(a, b) for a, b in re.findall(r'"([^"]+)"\s*->\s*"([^"]+)"', text)]
    nodes = re.findall(r'^"([^"]+)";', text, flags=re.M)
    for a, b in edges:
        for n in (a, b):
            if n not in nodes:
                nodes.append(n)
    return nodes, edges


def stale_stages(workdir: Path, targets: Sequence[str] = ()) -> list[str]:
    """Stages ``dvc status`` reports as changed (of ``targets`` and their upstream, or of the whole DAG)."""
    out = _dvc(["status", "--json", *(["--with-deps", *targets] if targets else [])], workdir).strip()
    status = json.loads(out) if out else {}
    return [name.split(":")[-1] for name in status]  # "dvc.yaml:stage" when several dvc.yaml files exist


def stage_names(workdir: Path) -> list[str]:
    """Every stage of dvc.yaml, foreach stages expanded (``finetune@sr_x2``), from ``dvc stage list``."""
    out = _dvc(["stage", "list", "--name-only"], workdir)
    return [line.strip().split(":")[-1] for line in out.splitlines() if line.strip()]


def _known(names: Sequence[str]) -> str:
    """``shard, corrupt@{sr_x2,sr_x3}, pretrain``: the stage names, foreach groups folded."""
    groups: dict[str, list[str]] = {}
    for n in names:
        base, _, key = n.partition("@")
        groups.setdefault(base, []).extend([key] if key else [])
    return ", ".join(f"{b}@{{{','.join(keys)}}}" if keys else b for b, keys in groups.items())


def check_targets(workdir: Path, targets: Sequence[str]) -> None:
    """Raise :class:`UnknownStage` naming every target that is no stage (nor foreach group) of dvc.yaml."""
    if not targets:
        return
    names = stage_names(workdir)
    bad = [t for t in targets if not _expand([t], names)]
    if bad:
        raise UnknownStage(
            f"unknown stage{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))} in {workdir / 'dvc.yaml'};"
            f" known stages: {_known(names)}"
        )


def plan(workdir: Path, targets: Sequence[str] = ()) -> list[str]:
    """The stages to visit, in topological order: the stale ones and everything downstream of them, limited to
    ``targets`` and their upstream when targets are given. Empty when DVC says nothing is stale."""
    try:
        stale = set(stale_stages(workdir, targets))
    except RuntimeError:
        check_targets(workdir, targets)  # a bad target: say so, not DVC's traceback
        raise
    if not stale:
        return []
    nodes, edges = dag(workdir)
    down: dict[str, list[str]] = {n: [] for n in nodes}
    up: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        down[a].append(b)
        up[b].append(a)
    selected = _closure(stale, down)
    if targets:
        selected &= _closure(_expand(targets, nodes), up)
    order: list[str] = []
    indegree = {n: sum(1 for u in up[n] if u in selected) for n in selected}
    ready = [n for n in nodes if n in selected and indegree[n] == 0]
    while ready:
        n = ready.pop(0)
        order.append(n)
        for d in down[n]:
            if d in indegree:
                indegree[d] -= 1
                if indegree[d] == 0:
                    ready.append(d)
    return order


def _closure(start: set[str], graph: dict[str, list[str]]) -> set[str]:
    seen, todo = set(start), list(start)
    while todo:
        for n in graph.get(todo.pop(), []):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def _expand(targets: Sequence[str], nodes: Sequence[str]) -> set[str]:
    """``finetune`` names every ``finetune@<task>``; ``finetune@sr_x2`` names itself."""
    return {n for t in targets for n in nodes if n == t or n.startswith(f"{t}@")}


def params_tasks(workdir: Path) -> list[str]:
    import yaml

    data = yaml.safe_load((workdir / "params.yaml").read_text()) or {}
    return list((data.get("corrupt") or {}).get("tasks") or {})


def stage_bodies(workdir: Path) -> dict[str, dict[str, Any]]:
    """``{stage: its body}`` as dvc.yaml writes them (a foreach stage's ``do`` body, ``${key}`` unexpanded)."""
    import yaml

    stages = (yaml.safe_load((workdir / "dvc.yaml").read_text()) or {}).get("stages") or {}
    return {name: (body or {}).get("do", body) or {} for name, body in stages.items()}


def stage_commands(workdir: Path, stages: Sequence[str]) -> dict[str, list[str]]:
    """The command lines each stage would run, from dvc.yaml; an ``ipt launch`` line is shown as what it execs
    under params.yaml ``launch`` (the torchrun line when more than one process)."""
    import shlex

    import yaml

    from ipt import launch

    bodies = stage_bodies(workdir)
    params = yaml.safe_load((workdir / "params.yaml").read_text()) or {}
    cfg = launch.LaunchConfig(**(params.get("launch") or {}))
    out: dict[str, list[str]] = {}
    for stage in stages:
        name, _, key = stage.partition("@")
        body = bodies[name]
        cmds = body["cmd"] if isinstance(body["cmd"], list) else [body["cmd"]]
        lines = []
        for cmd in cmds:
            argv = shlex.split(cmd.replace("${key}", key).replace("${item}", key))
            if argv[:4] == ["python", "-m", "ipt.cli", "launch"] and len(argv) > 4:
                rest = argv[5:][1:] if argv[5:6] == ["--"] else argv[5:]
                argv = launch.command(argv[4], rest, cfg, python="python")
            lines.append(shlex.join(argv))
        out[stage] = lines
    return out
