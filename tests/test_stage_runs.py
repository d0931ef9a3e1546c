"""Every stage run logs to MLflow on its own (`dvc repro` sets no run id): one experiment per stage, linked to the
pipeline run that launched it, and a registered version linked to the fine-tuning run that made it."""

from __future__ import annotations

import json

import pytest

from helpers_pairs import make_pair_root
from ipt.cli import main
from ipt.fileio import file_sha256

pytest.importorskip("mlflow")


@pytest.mark.slow
def test_training_benchmark_and_register_runs_link_up(tmp_path, monkeypatch, capsys) -> None:
    from mlflow.tracking import MlflowClient

    from ipt.tracking import MlflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("IPT_TRACKING", "on")
    parent = MlflowTracker.start("ipt-pipeline", run_name="pipeline")
    monkeypatch.setenv("IPT_MLFLOW_PARENT_RUN_ID", parent.run_id)
    monkeypatch.setenv("IPT_PIPELINE_RUN_ID", "flow-run-123")

    pairs = make_pair_root(tmp_path / "pairs", samples=4, shards=1)
    common = ["--shards", str(pairs), "--batch-size", "2", "--shuffle-buffer", "4", "--log-every", "0"]
    pre = ["pretrain", *common, "--out", str(tmp_path / "pre"), "--tasks", "sr_x2,denoise_s30"]
    assert main([*pre, "--model-size", "tiny", "--steps", "2"]) == 0
    ft = ["finetune", *common, "--out", str(tmp_path / "ft"), "--init", str(tmp_path / "pre"), "--task", "sr_x2"]
    assert main([*ft, "--steps", "1"]) == 0
    capsys.readouterr()

    client = MlflowClient(uri)
    runs = {}
    for stage in ("pretrain", "finetune"):
        (run,) = client.search_runs([client.get_experiment_by_name(f"ipt-{stage}").experiment_id])
        runs[stage] = run
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.run_id
        assert run.data.tags["ipt.pipeline_run"] == "flow-run-123" and run.data.tags["ipt.stage"] == stage
        assert "loss" in run.data.metrics  # the same metric names in every run of a stage
    assert runs["finetune"].data.tags["ipt.task"] == "sr_x2"
    recorded = json.loads((tmp_path / "ft" / "mlflow_run.json").read_text())
    assert recorded["run_id"] == runs["finetune"].info.run_id

    model = tmp_path / "ft" / "model.pt"
    report = {
        "task": "sr_x2",
        "model": str(model),
        "protocol": "ipt",
        "datasets": {"Set5": {"psnr_y": 30.0, "images": 5}},
    }
    report["model_sha256"] = file_sha256(model)
    (tmp_path / "r.json").write_text(json.dumps(report))
    argv = ["register", "--task", "sr_x2", "--checkpoint", str(tmp_path / "ft" / "model.pt")]
    assert main([*argv, "--report", str(tmp_path / "r.json")]) == 0
    (version,) = client.search_model_versions("name = 'ipt-sr_x2'")
    assert version.run_id == runs["finetune"].info.run_id  # the version links to the run that trained it
    assert client.get_experiment_by_name("ipt-register") is None  # no stray run of its own


@pytest.mark.slow
def test_tracking_off_starts_no_run_and_a_bad_run_id_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    pairs = make_pair_root(tmp_path / "pairs", samples=4, shards=1)
    argv = ["pretrain", "--shards", str(pairs), "--tasks", "sr_x2", "--model-size", "tiny", "--steps", "1"]
    assert main([*argv, "--batch-size", "2", "--shuffle-buffer", "4", "--out", str(tmp_path / "a")]) == 0
    assert MlflowClient(uri).get_experiment_by_name("ipt-pretrain") is None
    assert not (tmp_path / "a" / "mlflow_run.json").exists()
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "b"), "--mlflow-run-id", "nope"]) == 2
    assert "MLflow run 'nope' not found" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
