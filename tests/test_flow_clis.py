"""`python -m flows.<module>`: a real --help and usage errors that never start a flow run, and the ad-hoc
benchmark never writing into a DVC stage's outputs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytest.importorskip("prefect")

DEAD_API = "http://127.0.0.1:9/api"  # a flow run that starts anyway fails instead of spawning a server


def _cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_") and k != "IPT_PROJECT_DIR"}
    env.update(PYTHONPATH=str(ROOT), PREFECT_API_URL=DEAD_API, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory) -> Path:
    """This project's dvc.yaml and params.yaml in an empty DVC repository (no data, nothing ever run)."""
    pytest.importorskip("dvc")
    repo = tmp_path_factory.mktemp("repo")
    for rel in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / rel, repo / rel)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], cwd=repo, check=True)
    return repo


@pytest.mark.slow
@pytest.mark.parametrize("module", ["flows.benchmark", "flows.train", "flows.pipeline"])
def test_help_prints_usage_and_runs_no_flow(module: str, tmp_path: Path) -> None:
    r = _cli([module, "--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: python -m {module}"), r.stdout
    assert ("pretrain" if module == "flows.train" else "--workdir") in r.stdout
    assert "flow run" not in r.stdout + r.stderr
    bad = _cli([module, *(["pretrain"] if module == "flows.train" else []), "--no-such-flag"], tmp_path)
    assert bad.returncode == 2 and "usage:" in bad.stderr and "no-such-flag" in bad.stderr
    assert "Traceback" not in bad.stderr and "flow run" not in bad.stdout + bad.stderr


def test_train_subcommand_help_lists_the_flow_parameters(tmp_path: Path) -> None:
    r = _cli(["flows.train", "finetune", "--help"], tmp_path)
    assert r.returncode == 0 and "--task" in r.stdout and "--nproc-per-node" in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("dry_run", [True, False])
def test_pipeline_unknown_target_is_one_line_exit_2(dvc_repo: Path, tmp_path: Path, dry_run: bool) -> None:
    r = _cli(
        ["flows.pipeline", *(["--dry-run"] if dry_run else []), "bogus_stage", "--workdir", str(dvc_repo)], tmp_path
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "'bogus_stage'" in r.stderr and "finetune@{sr_x2," in r.stderr and "shard" in r.stderr
    assert r.stdout == ""  # no flow run, no log


def test_pipeline_workdir_without_dvc_yaml_is_one_line_exit_2(tmp_path: Path) -> None:
    r = _cli(["flows.pipeline", "--dry-run", "--workdir", str(tmp_path)], tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert str(tmp_path) in r.stderr and "no dvc.yaml" in r.stderr


@pytest.mark.slow
def test_pipeline_accepts_stages_and_foreach_groups(dvc_repo: Path, tmp_path: Path) -> None:
    from flows.dvc import UnknownStage, check_targets, plan

    check_targets(dvc_repo, ["shard", "finetune", "finetune@sr_x2", "benchmark@derain"])
    with pytest.raises(UnknownStage, match=r"'fine', 'finetune@nope'.*known stages: shard, corrupt@\{sr_x2,"):
        check_targets(dvc_repo, ["fine", "finetune@nope", "pretrain"])
    with pytest.raises(UnknownStage, match="bogus"):  # the flow's own path (a deployment run) says the same
        plan(dvc_repo, ["bogus"])
    r = _cli(["flows.pipeline", "--dry-run", "corrupt@sr_x2", "--workdir", str(dvc_repo)], tmp_path)
    assert r.returncode == 0 and "corrupt@sr_x2:" in r.stdout, r.stderr


@pytest.mark.parametrize("out_dir", ["metrics/benchmark", "metrics/baseline", "./metrics/benchmark/", "runs/pretrain"])
def test_ad_hoc_benchmark_refuses_a_dvc_output_folder(dvc_repo: Path, out_dir: str) -> None:
    from flows.benchmark import benchmark_ipt, resolve_out_dir

    with pytest.raises(ValueError, match="DVC stage output"):
        resolve_out_dir("baseline", out_dir, ["sr_x2"], str(dvc_repo))
    with pytest.raises(ValueError, match="DVC stage output"):  # before the flow runs anything
        benchmark_ipt.fn(model="baseline", tasks=["sr_x2"], limit=1, out_dir=out_dir, workdir=str(dvc_repo))
    assert not (dvc_repo / "metrics").exists() and not (dvc_repo / "runs").exists()


def test_ad_hoc_benchmark_refuses_this_projects_metrics_from_elsewhere(tmp_path: Path, monkeypatch) -> None:
    from flows.benchmark import resolve_out_dir

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="metrics/baseline"):
        resolve_out_dir("baseline", str(ROOT / "metrics" / "baseline"), ["sr_x2"], None)


def test_ad_hoc_benchmark_defaults_outside_dvc(dvc_repo: Path) -> None:
    from flows.benchmark import resolve_out_dir

    assert resolve_out_dir("baseline", None, ["sr_x2"], str(dvc_repo)) == "outputs/benchmark/baseline"
    assert resolve_out_dir("models:/ipt-sr_x2@champion", None, None, None) == "outputs/benchmark/ipt-sr_x2@champion"
    assert resolve_out_dir("baseline", "metrics/mine", ["sr_x2"], str(dvc_repo)) == "metrics/mine"
    assert resolve_out_dir(None, None, None, str(dvc_repo)) is None  # the DVC stages: their own metrics/benchmark
    with pytest.raises(ValueError, match="ad-hoc"):
        resolve_out_dir(None, "outputs/x", None, str(dvc_repo))


def test_benchmark_cli_refuses_a_dvc_output_folder_with_a_usage_error(dvc_repo: Path, tmp_path: Path) -> None:
    r = _cli(
        ["flows.benchmark", "--model", "baseline", "--out-dir", "metrics/benchmark", "--workdir", str(dvc_repo)],
        tmp_path,
    )
    assert r.returncode == 2 and "DVC stage output" in r.stderr and "Traceback" not in r.stderr
    assert not (dvc_repo / "metrics").exists()


@pytest.mark.slow
def test_a_flow_cli_without_a_server_runs_on_a_temporary_one_with_no_errors(tmp_path: Path) -> None:
    """PREFECT_API_URL empty (make run with no server up): the run gets a temporary server that its events reach
    too; Prefect 3.8 alone logs `Service 'EventsWorker' failed` and a traceback for every event of such a run."""
    script = tmp_path / "one_flow.py"
    script.write_text(
        "from prefect import flow, task\n"
        "from flows.server import prefect_api\n"
        "import os\n"
        "@task\ndef double(x):\n    return 2 * x\n"
        "@flow\ndef f():\n    return double(21) + double.submit(1).result()\n"  # a task in a worker thread too
        "with prefect_api() as url:\n    print('result', f(), url, repr(os.environ['PREFECT_API_URL']))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    env.update(
        PYTHONPATH=str(ROOT),
        PREFECT_API_URL="",
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )  # as the Makefile exports
    r = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "result 44 http://127.0.0.1:" in r.stdout
    assert "a temporary server for this run" in r.stderr
    for bad in ("EventsWorker", "Traceback", "ERROR"):
        assert bad not in r.stderr, r.stderr[-3000:]
    # set one way, Prefect's settings context (setting os.environ alone leaves the events client on "" and fails as
    # above: Prefect read the environment at import); the environment is left as it was
    assert r.stdout.rstrip().endswith("''")
