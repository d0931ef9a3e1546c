"""Mutation testing of the numeric and loading core with mutmut 3 (`make mutation`; docs/mutation.md).

Each module runs in its own mutmut project folder, .mutation/<name>/ (git- and DVC-ignored): a pyproject.toml that is
the project's plus a [tool.mutmut] section naming that module alone and the test files that cover it, and links to
the code and tests. mutmut copies them into .mutation/<name>/mutants/, maps each function to the tests that call it
(one run of the selected files), then runs, for each mutant, only the tests of its function, in processes forked
from a server that imported torch once. One module at a time, one worker (`--max-children 1`), under `nice -n 19`
from make. A folder's earlier verdicts are kept (mutmut regenerates the mutants of changed code); its survivors and
untested mutants are run again against the tests as they are now. --fresh starts over.

    python benchmarks/mutation.py [--only metrics,losses] [--max-children 1] [--fresh]

logs mutmut's output to .mutation/<name>/run.log, prints and writes .mutation/results.json: per module, mutmut's
counts (killed, survived, no tests, timeout, ...) and the survivors' names (`mutmut show NAME` in .mutation/<name>/
prints one's diff).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"

# module name -> (the files mutated, the test files that cover them)
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "metrics": (["ipt/metrics.py"], ["tests/test_metrics.py"]),
    "checkpoint": (["ipt/checkpoint.py"], ["tests/test_checkpoint.py"]),
    "corruptions": (["corruptions/*"], ["tests/test_corruptions"]),
    # (not tests/test_refine_registry.py, the one test of its models:/ branch: a real MLflow registry, ~30 s a run)
    "refine_checkpoint": (
        ["ipt/refine/checkpoint.py"],
        ["tests/test_refine_checkpoint.py", "tests/test_refine_train.py"],
    ),
    "losses": (["ipt/train/losses.py"], ["tests/test_train_losses.py"]),
    "registry": (["ipt/registry.py"], ["tests/test_registry_keys.py", "tests/test_model_registry.py"]),
}
# What the tests read besides the packages (linked into each folder, copied by mutmut into mutants/).
LINKED = ("ipt", "corruptions", "flows", "tests", "params.yaml", "dvc.yaml")
PYTEST_ARGS = ["-q", "-p", "no:cacheprovider", "-m", "not slow and not gpu and not network"]
# Tests that read a module's source text or its stack frames, which mutmut changes (its trampolines import mutmut
# and add a wrapper frame to every function, which moves any warnings stacklevel): not run on mutants.
SOURCE_READERS = {
    "metrics": ["tests/test_metrics.py::test_metrics_module_is_pure"],
    "checkpoint": ["tests/test_checkpoint.py::test_warnings_point_at_the_line_that_called_the_converter"],
}


def project_file(name: str) -> str:
    """The project's pyproject.toml with a [tool.mutmut] section for module ``name``."""
    mutate, tests = MODULES[name]
    text = (ROOT / "pyproject.toml").read_text()
    if "[tool.mutmut]" in text:
        raise SystemExit("pyproject.toml already has a [tool.mutmut] section; the driver writes its own per module")
    sources = sorted({m.split("/")[0] for m in mutate})
    section = {
        "source_paths": sources,
        "also_copy": [p for p in LINKED if p not in sources and p != "tests"],
        "only_mutate": mutate,
        "pytest_add_cli_args": PYTEST_ARGS + [f"--deselect={t}" for t in SOURCE_READERS.get(name, [])],
        "pytest_add_cli_args_test_selection": tests,
        "process_isolation": "forkserver",  # torch is not fork-safe after the stats run has used its thread pool
        "use_git_change_detection": False,
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in section.items()]
    return text + "\n".join(lines) + "\n"


def prepare(name: str) -> Path:
    folder = WORK / name
    folder.mkdir(parents=True, exist_ok=True)
    for rel in LINKED:
        link = folder / rel
        if not link.is_symlink():
            link.symlink_to(ROOT / rel)
    (folder / "pyproject.toml").write_text(project_file(name))
    return folder


def counts(folder: Path, env: dict[str, str]) -> dict:
    """Per-status counts and the surviving mutants' names, from `mutmut results --all true`."""
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    status: dict[str, list[str]] = {}
    for line in out.splitlines():
        if ":" in line:
            mutant, state = (s.strip() for s in line.rsplit(":", 1))
            status.setdefault(state, []).append(mutant)
    return {
        "counts": {k: len(v) for k, v in sorted(status.items())},
        "survived": sorted(status.get("survived", [])),
        "no_tests": sorted(status.get("no tests", [])),
    }


def run(name: str, max_children: int) -> dict:
    folder = prepare(name)
    env = os.environ | {
        "IPT_SHARED": str(Path(os.environ.get("IPT_SHARED", ROOT.parent / "shared")).resolve()),
        "IPT_BENCHMARK_ROOT": str(
            Path(os.environ.get("IPT_BENCHMARK_ROOT", ROOT.parent / "shared" / "benchmarks")).resolve()
        ),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),  # one worker, one thread: a shared machine
        "PYTHONPATH": "",  # the mutants, never the checkout, are imported (mutmut puts mutants/ first)
    }
    t0 = time.time()
    reused = (folder / "mutants").is_dir()
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)]
    with open(folder / "run.log", "w") as log:  # mutmut's progress spinner: kept out of the terminal
        rc = subprocess.run(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc == 0 and reused:
            # mutmut keeps an earlier run's verdicts; the survivors (and mutants that had no test) of that run are
            # run again by name against the tests as they are now (killed ones stay killed: tests only grow)
            again = counts(folder, env)
            names = again["survived"] + again["no_tests"]
            if names:
                rc = subprocess.run(cmd + names, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    result = {"module": name, "files": MODULES[name][0], "tests": MODULES[name][1], "rc": rc, "reused": reused}
    result |= {"seconds": round(time.time() - t0, 1)} | counts(folder, env)
    return result


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's word for it) and the cores this process may use."""
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {len(os.sched_getaffinity(0))} cores"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(MODULES), help=f"comma-separated modules of {list(MODULES)}")
    ap.add_argument("--max-children", type=int, default=1)
    ap.add_argument("--fresh", action="store_true", help="drop the modules' earlier mutants and verdicts first")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        ap.error(f"--only: unknown module(s) {unknown}; known: {list(MODULES)}")
    results_file = WORK / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for name in names:
        if args.fresh:
            shutil.rmtree(WORK / name / "mutants", ignore_errors=True)
        r = run(name, args.max_children)
        r["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        r["cpu"] = cpu_name()
        results[name] = r
        WORK.mkdir(exist_ok=True)
        results_file.write_text(json.dumps(results, indent=1) + "\n")
        print(json.dumps({k: r[k] for k in ("module", "rc", "seconds", "counts")}), flush=True)
    return 0 if all(results[n]["rc"] == 0 for n in names) else 1


if __name__ == "__main__":
    sys.exit(main())
