"""MLflow at the boundary, against a real sqlite store: benchmark metrics and images, registry URIs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers_data import make_sr_set
from ipt.checkpoint import save_checkpoint
from ipt.cli import main
from ipt.config import ModelSpec
from ipt.model import build_ipt

pytest.importorskip("mlflow")

from ipt.modeluri import resolve_model_uri  # noqa: E402
from ipt.tracking import MlflowTracker, TrackingError  # noqa: E402
from ipt.versions import register_checkpoint  # noqa: E402


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artifacts (./mlartifacts) and any params.yaml lookups stay in tmp_path
    return uri


def test_benchmark_logs_metrics_params_and_images(tmp_path, tracking_uri) -> None:
    root = make_sr_set(tmp_path / "bench")
    run = MlflowTracker.start("test", run_name="bench", tracking_uri=tracking_uri)
    rc = main(
        [
            "benchmark",
            "--task",
            "sr_x2",
            "--model",
            "bicubic",
            "--root",
            str(root),
            "--datasets",
            "Set5",
            "--out",
            str(tmp_path / "r.json"),
            "--mlflow-run-id",
            run.run_id,
            "--quiet",
            "--params",
            "none",
        ]
    )
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    data = run.client.get_run(run.run_id).data
    assert data.metrics["Set5/psnr_y"] == pytest.approx(report["datasets"]["Set5"]["psnr_y"])
    assert {"Set5/ssim_y", "Set5/psnr_rgb", "Set5/seconds_per_image"} <= set(data.metrics)
    assert data.params["benchmark.model"] == "bicubic"
    assert data.tags["metric_protocol"].startswith("ipt-v1")
    names = [a.path for a in run.client.list_artifacts(run.run_id, "benchmark/sr_x2")]
    assert "benchmark/sr_x2/Set5_input_output_gt.png" in names and "benchmark/sr_x2/r.json" in names
    local = run.client.download_artifacts(run.run_id, "benchmark/sr_x2/Set5_input_output_gt.png", str(tmp_path))
    side = np.asarray(Image.open(local))
    assert side.shape == (60, 60 * 3 + 8, 3)  # input, output, ground truth crops (min(128, H, W) = 60)


def test_registered_model_uri_serves_benchmark_and_restore(tmp_path, tracking_uri) -> None:
    torch.manual_seed(0)
    model = build_ipt(ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=2, patch_size=12))
    ckpt = save_checkpoint(tmp_path / "tiny.pt", model)
    run = MlflowTracker.start("test", run_name="train", tracking_uri=tracking_uri)
    version = register_checkpoint(run, ckpt, "ipt-sr_x2", alias="champion")
    assert version == "1"
    path = resolve_model_uri("models:/ipt-sr_x2@champion")
    assert path.name == "model.pt" and path.read_bytes() == ckpt.read_bytes()
    assert resolve_model_uri("models:/ipt-sr_x2/1").read_bytes() == ckpt.read_bytes()
    root = make_sr_set(tmp_path / "bench", n=1)
    rc = main(
        [
            "benchmark",
            "--task",
            "sr_x2",
            "--model",
            "models:/ipt-sr_x2@champion",
            "--root",
            str(root),
            "--datasets",
            "Set5",
            "--tiling",
            "overlap",
            "--out",
            str(tmp_path / "m.json"),
            "--quiet",
            "--params",
            "none",
        ]
    )
    assert rc == 0 and json.loads((tmp_path / "m.json").read_text())["datasets"]["Set5"]["images"] == 1
    lr = root / "Set5" / "LR_bicubic" / "X2" / "img0x2.png"
    assert (
        main(
            ["restore", str(lr), str(tmp_path / "o.png"), "--weights", "models:/ipt-sr_x2@champion", "--quiet"]
            + ["--task", "sr_x2"]
        )
        == 0
    )
    assert np.asarray(Image.open(tmp_path / "o.png")).shape == (60, 72, 3)


def test_a_missing_store_is_named_and_not_created(tmp_path, tracking_uri, capsys) -> None:
    """Lookups (models:/ URIs, runs by id) never leave an empty mlflow.db behind in the working directory."""
    with pytest.raises(TrackingError, match=f"no MLflow store at {tmp_path / 'mlflow.db'}"):
        resolve_model_uri("models:/ipt-sr_x2@champion")
    with pytest.raises(TrackingError, match="no MLflow store"):
        MlflowTracker("deadbeef")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    argv = ["restore", str(tmp_path / "x.png"), str(tmp_path / "o.png"), "--weights", "models:/ipt-sr_x2@champion"]
    assert main([*argv, "--task", "sr_x2"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_unknown_model_uri_and_run_are_clear_errors(tmp_path, tracking_uri, capsys) -> None:
    MlflowTracker.start("ipt-test")  # the store exists; what it holds is not asked for
    with pytest.raises(TrackingError, match="models:/nope@champion: no such registered model version"):
        resolve_model_uri("models:/nope@champion")
    with pytest.raises(TrackingError, match="MLflow run 'deadbeef' not found"):
        MlflowTracker("deadbeef")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    rc = main(
        ["restore", str(tmp_path / "x.png"), str(tmp_path / "o.png"), "--weights", "models:/nope@x"]
        + ["--task", "sr_x2"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "models:/nope@x: no such registered model version" in err and len(err.splitlines()) == 1


def test_experiments_open_on_the_runs_table_and_benchmark_runs_say_model_and_task(tmp_path, monkeypatch) -> None:
    """MLflow 3 opens an experiment without a kind on its GenAI overview ("No data" here): ours carry the kind of
    the runs table, also an experiment made before the kind was set; a benchmark run is named '<task>: <model>'."""
    from mlflow.tracking import MlflowClient

    from ipt.tracking import EXPERIMENT_TAGS, MlflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("ipt-old")  # as an older version of the project made it
    for name in ("ipt-old", "ipt-new"):
        MlflowTracker.start(name, tracking_uri=uri).finish()
        tags = client.get_experiment_by_name(name).tags
        assert (
            tags.get("mlflow.experimentKind") == EXPERIMENT_TAGS["mlflow.experimentKind"] == "custom_model_development"
        )
    monkeypatch.setenv("IPT_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    root = make_sr_set(tmp_path / "bench", "Set5", scales=(2,))
    assert main(["benchmark", "--task", "sr_x2", "--model", "baseline", "--root", str(root), "--quiet"]) == 0
    runs = client.search_runs([client.get_experiment_by_name("ipt-benchmark").experiment_id])
    assert [r.info.run_name for r in runs] == ["sr_x2: baseline (bicubic)"]
