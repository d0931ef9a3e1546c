"""End to end, as a user meets it: a real Prefect server (`prefect server start`, as `make prefect-server`, with its
scheduler) and process worker, the deployments of prefect.yaml, a real sqlite MLflow store and a local DVC remote,
on a tiny configuration.

1. `pretrain-ipt/default` runs `pretrain` and the stale stages upstream of it, under torchrun with 2 gloo processes
   (params.yaml `launch`), the stage output streamed into the Prefect log; then `ipt-pipeline/default` runs the rest
   of the DAG (one task: sr_x2). Each stage is one Prefect task, each training stage an MLflow run that is a child
   of its flow's MLflow run. The DAG's PTG-RM branch (refine@sr_x2) registers a refiner, and so does the
   `refine-ipt/default` deployment.
2. The next scheduled run, with nothing changed: no stage runs.
3. The user adds a corruption type, JPEG at quality 10: one file in corruptions/, one import line, one params
   entry. The next scheduled run shards nothing and does not redo corrupt@sr_x2; it runs corrupt@jpeg_q10,
   re-pretrains, fine-tunes both tasks, benchmarks them and registers ipt-jpeg_q10, then pushes to the DVC remote.
4. A fresh `git clone` + `dvc pull` restores every output and `dvc repro` there runs nothing.

The runs of steps 2 and 3 are made by the server's scheduler from a schedule of the deployment: the deployed one is
yearly (so it stays out of the way), and each step adds a schedule whose next run is a few seconds away instead of
waiting an hour; the flow run, worker and flow are what the hourly schedule starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, free_port
from helpers_data import make_sr_set

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("git") is None, reason="git not installed"),
]
BIN = Path(sys.executable).parent
JPEG_IMPORT = "    jpeg,\n"  # its line in the `from . import (...)` list of corruptions/catalog.py


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_") and k != "IPT_PARAMS"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # stage commands call `python`, flows call `dvc`
    return env | {"DVC_NO_ANALYTICS": "1"} | extra


def _run(cmd: list[str], cwd: Path, **env: str) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env(**env), timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def _project(tmp_path: Path) -> Path:
    """A git + DVC repository of this project's pipeline files with a tiny sr_x2-only configuration, without the
    JPEG corruption (the user adds it in step 3)."""
    from helpers_images import PHOTOS, photo_folder

    repo = tmp_path / "repo"
    repo.mkdir()
    for rel in ("dvc.yaml", "params.yaml", "prefect.yaml", ".dvcignore"):
        shutil.copy(ROOT / rel, repo / rel)
    ignore = shutil.ignore_patterns("__pycache__", "jpeg.py")
    for pkg in ("ipt", "corruptions", "flows"):
        shutil.copytree(ROOT / pkg, repo / pkg, ignore=ignore)
    init = repo / "corruptions" / "catalog.py"
    assert JPEG_IMPORT in init.read_text()
    init.write_text(init.read_text().replace(JPEG_IMPORT, ""))
    (repo / ".gitignore").write_text("__pycache__/\n")

    bench = make_sr_set(tmp_path / "bench", "Set5", scales=(2,))
    make_sr_set(bench, "Set14", scales=(2,))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["shard"].update(source=str(photo_folder(tmp_path / "train", PHOTOS[:3])), crops=1, images_per_shard=2)
    params["shard"]["workers"] = params["corrupt"]["workers"] = 1
    params["corrupt"]["tasks"] = {"sr_x2": params["corrupt"]["tasks"]["sr_x2"]}
    for stage in ("pretrain", "finetune"):
        # val_every from params.yaml stays: validation at the last step, on 2 of the 3 photos held out (the default
        # 10% of 3 photos holds out none, which is refused)
        params[stage].update(steps=2, batch_size=2, checkpoint_every=2, shuffle_buffer=2, val_fraction=0.5)
    params["benchmark"].update(root=str(bench), tiling="overlap")
    params["launch"]["nproc_per_node"] = 2  # pretrain and finetune under torchrun (gloo DDP on CPU)
    params["refine_tasks"] = ["sr_x2"]  # the PTG-RM branch, refine@sr_x2
    params["refine"].update(prior="none", steps=2, batch_size=2)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The project's schedule is hourly; a yearly one here keeps the scheduler's own runs out of the test's way.
    pf = yaml.safe_load((repo / "prefect.yaml").read_text())
    (pipeline,) = [d for d in pf["deployments"] if d["entrypoint"] == "flows/pipeline.py:ipt_pipeline"]
    (pretrain,) = [d for d in pf["deployments"] if d["entrypoint"] == "flows/train.py:pretrain_ipt"]
    (refine,) = [d for d in pf["deployments"] if d["entrypoint"] == "flows/refine.py:refine_ipt"]
    pipeline["schedules"] = [{"cron": "0 0 1 1 *", "active": True}]
    pf["deployments"] = [pipeline, pretrain, refine]
    (repo / "prefect.yaml").write_text(yaml.safe_dump(pf, sort_keys=False))

    _run(["git", "init", "-q"], repo)
    _run(["git", "config", "user.email", "ci@example.invalid"], repo)
    _run(["git", "config", "user.name", "ci"], repo)
    _run([str(BIN / "dvc"), "init", "-q"], repo)
    _run([str(BIN / "dvc"), "config", "core.analytics", "false"], repo)
    _run([str(BIN / "dvc"), "remote", "add", "-d", "local", str(tmp_path / "remote")], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "project"], repo)
    return repo


@contextlib.contextmanager
def _background(
    cmd: list[str], log: Path, *, env: dict[str, str], cwd: Path | None = None, stop_s: float = 30
) -> Iterator[subprocess.Popen]:
    """A process running beside the test, its output in ``log``; terminated (killed after ``stop_s``) on exit."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=stop_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


@contextlib.contextmanager
def _prefect_server(tmp_path: Path) -> Iterator[str]:
    """`prefect server start` on 127.0.0.1 (its own sqlite database, scheduler every 2 s); yields the API URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = _env(
        PREFECT_HOME=str(tmp_path / "prefect_server"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
    )
    env.pop("PREFECT_API_URL", None)
    log = tmp_path / "prefect_server.log"
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with _background(cmd, log, env=env) as server:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prefect server did not become healthy in 180 s"
            time.sleep(1)
        yield url


def _task_names(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert all(r.state.is_completed() for r in runs), [(r.name, r.state.name) for r in runs]
    return sorted(r.name for r in runs)


def _logs(flow_run_id, until: str = "", timeout: float = 60.0) -> str:
    """The flow run's logs; with ``until``, wait (up to ``timeout``) for that text: a flow run's process ships its
    last log lines after the run's final state is already recorded."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        mine = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        while True:
            logs: list = []
            while len(page := client.read_logs(log_filter=mine, limit=200, offset=len(logs))):  # the API pages by 200
                logs += page
            text = "\n".join(x.message for x in logs)
            if until in text or time.monotonic() > deadline:
                return text
            time.sleep(1)


def _deployment_run(parameters: dict | None = None, name: str = "ipt-pipeline/default"):
    from prefect.deployments import run_deployment

    start = time.monotonic()
    fr = run_deployment(name, parameters=parameters or {}, timeout=900)
    assert fr.state.is_completed(), f"flow run {fr.name}: {fr.state.name} {fr.state.message}"
    return fr, time.monotonic() - start


def _scheduled_run(server_log: Path, parameters: dict | None = None, name: str = "ipt-pipeline/default", lead_s=5.0):
    """Add a schedule to the deployment whose next run is ``lead_s`` from now (yearly after that), wait for the
    flow run the server's scheduler makes from it to finish (run by the worker) and remove the schedule again.
    Returns the flow run and the seconds from its scheduled start to its end."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.client.schemas.schedules import IntervalSchedule

    anchor = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=lead_s)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        yearly = IntervalSchedule(interval=timedelta(days=365), anchor_date=anchor)
        (schedule,) = client.create_deployment_schedules(deployment.id, [(yearly, True)], parameters=parameters)
        runs = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]))
        deadline = time.monotonic() + 600
        try:
            while True:
                mine = [
                    r
                    for r in client.read_flow_runs(flow_run_filter=runs)
                    if r.auto_scheduled and abs((r.expected_start_time - anchor).total_seconds()) < 1
                ]
                if mine and mine[0].state.is_final():
                    break
                if time.monotonic() > deadline:
                    tail = server_log.read_text()[-3000:]
                    raise AssertionError(f"no finished scheduled run of {name} in 600 s ({mine}); server log:\n{tail}")
                time.sleep(1)
        finally:
            client.delete_deployment_schedule(deployment.id, schedule.id)
    (fr,) = mine
    assert fr.state.is_completed(), f"flow run {fr.name}: {fr.state.name} {fr.state.message}"
    return fr, (fr.end_time - anchor).total_seconds()


def test_scheduled_pipeline_picks_up_a_new_corruption_and_a_clone_reproduces_nothing(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with _prefect_server(tmp_path) as api, temporary_settings({PREFECT_API_URL: api}):
        _pipeline_scenario(tmp_path, api)


def _pipeline_scenario(tmp_path: Path, api: str) -> None:
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client

    repo = _project(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"PREFECT_API_URL": api, "IPT_PROJECT_DIR": str(repo), "MLFLOW_TRACKING_URI": uri, "IPT_TRACKING": "on"}
    _run([str(BIN / "prefect"), "work-pool", "create", "local-process", "--type", "process"], repo, **env)
    _run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], repo, **env)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("ipt-pipeline/default")
    assert [s.schedule.cron for s in deployment.schedules] == ["0 0 1 1 *"]

    # A new shell in the project folder, no PREFECT_API_URL exported: the project's prefect.toml (its port moved to
    # this test's server) sends the README's command to the server, not to a temporary one of its own.
    port = api.rsplit(":", 1)[1].split("/")[0]
    (repo / "prefect.toml").write_text(
        (ROOT / "prefect.toml").read_text().replace("127.0.0.1:4200", f"127.0.0.1:{port}")
    )
    shell = {k: v for k, v in _env().items() if not k.startswith("PREFECT_")}
    r = subprocess.run([str(BIN / "prefect"), "deployment", "ls"], cwd=repo, env=shell, capture_output=True, text=True)
    assert r.returncode == 0 and "pretrain-ipt/default" in r.stdout.replace("\n", " "), r.stdout + r.stderr

    worker = [str(BIN / "prefect"), "worker", "start", "--pool", "local-process"]
    worker_env = _env(**env, PREFECT_WORKER_QUERY_SECONDS="1")
    # on exit the worker passes SIGTERM on to its flow run processes, then exits
    with _background(worker, tmp_path / "worker.log", env=worker_env, cwd=repo, stop_s=90):
        # 1. pretrain-ipt: pretrain and what it needs, under torchrun, its output in the Prefect log.
        fr0, _ = _deployment_run(name="pretrain-ipt/default")
        assert _task_names(fr0.id) == ["corrupt@sr_x2", "pretrain", "shard"]
        logs = _logs(fr0.id, until="pretrain: loss")
        assert "Running stage 'pretrain'" in logs and "-m torch.distributed.run --nnodes=1 --nproc-per-node=2" in logs
        assert "pretrain: loss" in logs  # rank 0's own line, through torchrun, DVC and the task's log
        mlflow = MlflowClient(uri)
        (pre,) = mlflow.search_runs([mlflow.get_experiment_by_name("ipt-pretrain").experiment_id])
        assert pre.data.tags["ipt.pipeline_run"] == str(fr0.id)

        # ... then the whole DAG: only the stages after pretrain are stale.
        fr1, _ = _deployment_run()
        assert _task_names(fr1.id) == [
            "benchmark@sr_x2", "finetune@sr_x2", "refine@sr_x2", "register-pretrained", "register@sr_x2"
        ]  # fmt: skip
        runs = mlflow.search_runs([mlflow.get_experiment_by_name("ipt-pipeline").experiment_id])
        (parent,) = [r for r in runs if r.data.tags.get("ipt.pipeline_run") == str(fr1.id)]
        (ft,) = mlflow.search_runs([mlflow.get_experiment_by_name("ipt-finetune").experiment_id])
        assert ft.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert "sr_x2/Set5/gain_db" in parent.data.metrics
        (v1,) = mlflow.search_model_versions("name = 'ipt-sr_x2'")
        assert v1.run_id == ft.info.run_id  # the registered version links to the run that trained it
        (body,) = mlflow.search_model_versions("name = 'ipt-pretrained'")  # the pretrained body, its run's version
        assert body.run_id == pre.info.run_id
        (refiner,) = mlflow.search_model_versions("name = 'ipt-sr_x2-ptgrm'")  # and the refiner, with its base
        assert refiner.tags["prior"] == "none" and refiner.tags["base_sha256"]

        # The refine-ipt deployment trains and registers a refiner too (outside the DVC outputs).
        adhoc = ["--out", str(tmp_path / "adhoc" / "sr_x2")]
        _deployment_run({"task": "sr_x2", "args": adhoc}, name="refine-ipt/default")
        assert len(mlflow.search_model_versions("name = 'ipt-sr_x2-ptgrm'")) == 2

        # 2. Nothing changed: the next scheduled run runs nothing, in seconds.
        fr2, idle_s = _scheduled_run(tmp_path / "prefect_server.log")
        assert _task_names(fr2.id) == [] and "nothing to run" in _logs(fr2.id, until="nothing to run")
        print(f"idle scheduled run: {idle_s:.1f} s from its scheduled time to completion")

        # 3. A new corruption type: one file, one import line, one params entry.
        shutil.copy(ROOT / "corruptions" / "jpeg.py", repo / "corruptions" / "jpeg.py")
        init = repo / "corruptions" / "catalog.py"
        init.write_text(init.read_text().replace("    gaussian_noise,\n", "    gaussian_noise,\n" + JPEG_IMPORT))
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["corrupt"]["tasks"]["jpeg_q10"] = {"name": "jpeg", "quality": 10}
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        clean_manifest = (repo / "data" / "clean" / "manifest.json").read_bytes()
        pairs_mtime = (repo / "data" / "pairs" / "sr_x2" / "manifest.json").stat().st_mtime_ns

        fr3, _ = _scheduled_run(tmp_path / "prefect_server.log", {"push": True})
        ran = _task_names(fr3.id)
        assert "shard" not in ran and "corrupt@sr_x2" not in ran
        assert ran == sorted(
            ["corrupt@jpeg_q10", "pretrain", "dvc push"]
            + [f"{s}@{t}" for s in ("finetune", "benchmark", "register") for t in ("sr_x2", "jpeg_q10")]
            + ["refine@sr_x2", "register-pretrained"]  # their bases changed
        )
        logs = _logs(fr3.id, until="Running stage 'finetune@jpeg_q10'")
        assert {"pretrain", "finetune@sr_x2", "finetune@jpeg_q10"} <= set(re.findall(r"Running stage '([^']+)'", logs))
        assert (repo / "data" / "clean" / "manifest.json").read_bytes() == clean_manifest
        assert (repo / "data" / "pairs" / "sr_x2" / "manifest.json").stat().st_mtime_ns == pairs_mtime
        (jpeg_version,) = mlflow.search_model_versions("name = 'ipt-jpeg_q10'")
        assert mlflow.get_model_version_by_alias("ipt-jpeg_q10", "champion").version == jpeg_version.version
        report = json.loads((repo / "metrics" / "benchmark" / "jpeg_q10.json").read_text())
        assert set(report["datasets"]) == {"Set5", "Set14"}
        scores = json.loads((repo / "metrics" / "scores" / "benchmark" / "jpeg_q10.json").read_text())
        assert scores == {n: {k: v for k, v in r.items() if k != "per_image"} for n, r in report["datasets"].items()}
        pretrains = mlflow.search_runs([mlflow.get_experiment_by_name("ipt-pretrain").experiment_id])
        assert len(pretrains) == 2
        # What the new type added (flows.new_type): sr_x2's new candidate against its champion from before jpeg_q10.
        added = json.loads((repo / "runs" / "new_type" / "jpeg_q10" / "report.json").read_text())
        rows = {r["task"]: r for r in added["rows"]}
        assert added["complete"] and rows["sr_x2"]["champion_before"]["version"] == str(v1.version)
        record = json.loads((repo / "metrics" / "register" / "sr_x2.json").read_text())
        assert rows["sr_x2"]["candidate"]["version"] == str(record["version"]) != str(v1.version)
        assert rows["sr_x2"]["change_db"] == pytest.approx(record["score"] - float(v1.tags["score"]), abs=1e-9)
        assert rows["jpeg_q10"]["new_type"] and rows["jpeg_q10"]["champion_before"] is None
        runs = mlflow.search_runs([mlflow.get_experiment_by_name("ipt-pipeline").experiment_id])
        (parent3,) = [r for r in runs if r.data.tags.get("ipt.pipeline_run") == str(fr3.id)]
        (child,) = [r for r in runs if r.data.tags.get("ipt.new_type") == "jpeg_q10"]
        assert child.data.tags["mlflow.parentRunId"] == parent3.info.run_id
        assert child.data.metrics["sr_x2/change_db"] == pytest.approx(rows["sr_x2"]["change_db"])
        # The newest pretrain run names the DVC version of each shard folder it read, as dvc.lock has it now.
        lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
        for t in ("sr_x2", "jpeg_q10"):
            (out,) = lock[f"corrupt@{t}"]["outs"]
            assert max(pretrains, key=lambda r: r.info.start_time).data.tags[f"ipt.dvc.{t}"] == out["md5"], t

    # 4. Everything is in the remote: a fresh clone pulls every output and has nothing to reproduce.
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "pipeline run with jpeg_q10"], repo)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    _run([str(BIN / "dvc"), "pull"], clone)
    for rel in ("data/clean/manifest.json", "runs/pretrain/model.pt", "runs/finetune/jpeg_q10/model.pt"):
        assert (clone / rel).read_bytes() == (repo / rel).read_bytes(), rel
    out = _run([str(BIN / "dvc"), "repro"], clone, MLFLOW_TRACKING_URI=uri)
    assert "Running stage" not in out, out
    assert "up to date" in _run([str(BIN / "dvc"), "status"], clone)
    # How many processes train is no stage parameter: DDP gives the same run for any number (tests/test_train_ddp.py).
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["launch"]["nproc_per_node"] = 4
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "up to date" in _run([str(BIN / "dvc"), "status"], clone)
