"""DVC knows the code each stage runs: dvc.yaml's code deps are the import closure of each stage's command
(ipt.codedeps), a code edit makes `dvc status` flag exactly the stages that run it, and the committed dvc.lock is
the lock of the committed code and params."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import corruptions
from conftest import ROOT
from ipt import codedeps

DVC = [sys.executable, "-m", "dvc"]
CODE_ROOTS = ("ipt/", "corruptions/")


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: body.get("do", body) for name, body in stages.items()}


def _code_deps(body: dict) -> list[str]:
    return [d for d in body.get("deps") or [] if isinstance(d, str) and d.startswith(CODE_ROOTS)]


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_each_stage_lists_every_module_its_command_imports(stage: str) -> None:
    body = _stages()[stage]
    listed = _code_deps(body)
    expected = codedeps.expected_code_deps(body)
    missing = sorted(set(expected) - set(listed))
    extra = sorted(set(listed) - set(expected))
    fix = "run `python -m ipt.codedeps --write dvc.yaml`"
    assert not missing, f"dvc.yaml stage {stage} does not list modules its command imports: {missing} ({fix})"
    assert not extra, f"dvc.yaml stage {stage} lists modules its command does not import: {extra} ({fix})"


def test_the_closure_follows_imports_inside_functions_and_parent_packages() -> None:
    files = codedeps.closure(codedeps.command_entries(["python", "-m", "ipt.cli", "benchmark"]))
    # ipt/cli/benchmark.py imports ipt.scoring inside cmd_benchmark, which imports ipt.restore inside a function
    assert {"ipt/cli/benchmark.py", "ipt/scoring.py", "ipt/restore.py", "ipt/inference.py"} <= set(files)
    assert {"ipt/__init__.py", "ipt/cli/__init__.py", "ipt/cli/__main__.py", "ipt/model/__init__.py"} <= set(files)
    # the launch command runs the stage it launches: pretrain's module is in its closure
    launch = codedeps.closure(codedeps.command_entries(["python", "-m", "ipt.cli", "launch", "pretrain", "--"]))
    assert {"ipt/cli/launch.py", "ipt/cli/train.py", "ipt/train/loop.py"} <= set(launch)
    # no subcommand module rides along with another's
    shard = codedeps.stage_code("shard")
    assert not [f for f in shard if f.startswith(("ipt/train", "ipt/model", "ipt/cli/benchmark"))], shard


def test_registered_corruptions_are_plugins_named_after_their_module() -> None:
    plugins = codedeps.plugins()
    for name, entry in corruptions.REGISTRY.items():
        assert entry.fn.__module__ == f"corruptions.{name}", f"{name} is registered by {entry.fn.__module__}"
        assert f"corruptions.{name}" in plugins
        assert (ROOT / codedeps.plugin_file(name)).is_file()
    for plugin in plugins:  # a plugin imports helpers, never another plugin (a stage lists only its own)
        found = codedeps.imports_of(plugin)
        assert not (found & plugins) - {plugin}, f"{plugin} imports {sorted(found & plugins)}"
    everything = set(
        codedeps.closure([f"ipt.cli.{m}" for m, _ in __import__("ipt.cli.commands").cli.commands.COMMANDS.values()])
    )
    assert "corruptions/catalog.py" not in everything  # no command imports the whole list
    corrupt = codedeps.stage_code("corrupt", "jpeg")
    assert "corruptions/jpeg.py" in corrupt and "corruptions/bicubic_down.py" not in corrupt


def test_every_module_of_the_closure_parses_and_the_digest_follows_the_files(tmp_path: Path) -> None:
    root = tmp_path / "copy"
    for pkg in ("ipt", "corruptions"):
        shutil.copytree(ROOT / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    files = codedeps.stage_code("corrupt", "bicubic_down", root=root)
    for f in files:
        ast.parse((root / f).read_text())
    before = codedeps.digest(files, root=root)
    assert before == codedeps.digest(codedeps.stage_code("corrupt", "bicubic_down"))  # names and bytes only
    with open(root / "corruptions" / "_imresize.py", "a") as f:
        f.write("\n# an edit\n")
    assert codedeps.digest(files, root=root) != before


def _dvc(repo: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")} | {"DVC_NO_ANALYTICS": "1"}
    r = subprocess.run([*DVC, *args], cwd=repo, capture_output=True, text=True, env=env)
    assert r.returncode == 0, f"dvc {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _modified_code(status: dict) -> set[tuple[str, str]]:
    out = set()
    for stage, entries in status.items():
        for entry in entries:
            if isinstance(entry, dict):
                for path, what in (entry.get("changed deps") or {}).items():
                    if what == "modified" and path.startswith(CODE_ROOTS):
                        out.add((stage.split(":")[-1], path))
    return out


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    """The project's dvc.yaml, params.yaml and code in a fresh git + DVC repo, with placeholder outputs committed,
    so its dvc.lock records this code: `dvc status` is clean until something changes."""
    pytest.importorskip("dvc")
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    for rel in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / rel, repo / rel)
    for pkg in ("ipt", "corruptions"):
        shutil.copytree(ROOT / pkg, repo / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    lister = "from dvc.repo import Repo\nfor s in Repo('.').index.stages:\n    for o in s.outs: print(o.def_path)\n"
    outs = subprocess.run([sys.executable, "-c", lister], cwd=repo, capture_output=True, text=True, check=True)
    for rel in outs.stdout.split():
        p = repo / rel
        if p.suffix in (".json", ".csv"):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("{}\n" if p.suffix == ".json" else "step,loss\n")
        else:
            p.mkdir(parents=True, exist_ok=True)
            (p / "placeholder").write_text(rel)
    _dvc(repo, "commit", "-f", "-q")
    assert _modified_code(json.loads(_dvc(repo, "status", "--json") or "{}")) == set()
    return repo


@pytest.mark.slow
def test_a_code_edit_makes_dvc_rerun_exactly_the_stages_that_import_it(dvc_repo: Path) -> None:
    names = _dvc(dvc_repo, "stage", "list", "--name-only").split()
    bodies = _stages()
    for rel in ("corruptions/_imresize.py", "ipt/inference.py"):
        with open(dvc_repo / rel, "a") as f:
            f.write("\n# a one-line edit\n")
        flagged = {stage for stage, _ in _modified_code(json.loads(_dvc(dvc_repo, "status", "--json")))}
        expected = {n for n in names if rel in codedeps.expected_code_deps(bodies[n.split("@")[0]])}
        assert flagged == expected, f"editing {rel}: dvc status flags {sorted(flagged)}, expected {sorted(expected)}"
        assert flagged, f"no stage runs {rel}?"
        shutil.copy(ROOT / rel, dvc_repo / rel)
    assert _modified_code(json.loads(_dvc(dvc_repo, "status", "--json") or "{}")) == set()


def test_the_committed_dvc_lock_is_the_lock_of_the_committed_code_and_params() -> None:
    """`dvc status` on the checkout reports no modified code, params or command: the committed metrics were made by
    the code beside them. (Data outputs are absent from a fresh clone: those entries are not counted.)"""
    pytest.importorskip("dvc")
    status = json.loads(_dvc(ROOT, "status", "--json") or "{}")
    stale: dict[str, list[str]] = {}
    for stage, entries in status.items():
        for entry in entries:
            if isinstance(entry, str):  # "changed command", "always changed"
                stale.setdefault(stage, []).append(entry)
                continue
            for path, what in (entry.get("changed deps") or {}).items():
                if isinstance(what, dict):  # a params file: {key: modified | new | deleted}
                    stale.setdefault(stage, []).extend(f"{path}:{k} {v}" for k, v in what.items())
                elif path.startswith(CODE_ROOTS):
                    stale.setdefault(stage, []).append(f"{path} {what}")
    assert not stale, (
        f"dvc.lock is not the lock of this code and params ({len(stale)} stages, e.g. "
        f"{json.dumps(dict(list(stale.items())[:2]))[:600]}); run `make run` and commit dvc.lock, metrics/ and "
        "plots/ with the code"
    )
