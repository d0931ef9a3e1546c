"""Prefect flows against a real (temporary) Prefect server, calling the real CLI stages."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT
from helpers_data import make_sr_set

pytest.importorskip("prefect")
pytest.importorskip("mlflow")


@pytest.mark.slow
def test_benchmark_flow_runs_the_cli_stage_and_logs_child_runs(tmp_path, prefect_server, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("IPT_PARAMS")  # the stage reads the project's own params.yaml, as a deployment does

    from flows.benchmark import benchmark_ipt

    root = make_sr_set(tmp_path / "bench", scales=(2, 3))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = benchmark_ipt(
        tasks=["sr_x2", "sr_x3"],
        model="baseline",
        root=str(root),
        datasets="Set5",
        out_dir=str(tmp_path / "m"),
        tracking_uri=uri,
        workdir=str(ROOT),
    )
    assert set(summary) == {"sr_x2", "sr_x3"} and summary["sr_x2"]["Set5"] > summary["sr_x3"]["Set5"] > 10
    assert json.loads((tmp_path / "m" / "sr_x3.json").read_text())["model"] == "baseline"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ipt-benchmark").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert sorted(r.data.metrics["Set5/psnr_y"] for r in children) == sorted(summary[t]["Set5"] for t in summary)
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.slow
def test_benchmark_flow_fails_loudly_on_bad_data(tmp_path, prefect_server) -> None:
    from flows.benchmark import benchmark_ipt
    from flows.stages import StageFailed

    (tmp_path / "bench" / "Set5" / "HR").mkdir(parents=True)
    with pytest.raises(StageFailed, match="Set5"):
        benchmark_ipt(
            tasks=["sr_x2"],
            model="baseline",
            root=str(tmp_path / "bench"),
            datasets="Set5",
            out_dir=str(tmp_path / "m"),
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            workdir=str(ROOT),
        )


@pytest.mark.slow
def test_ad_hoc_benchmark_writes_outside_the_dvc_metrics_by_default(tmp_path, prefect_server) -> None:
    """QA: an ad-hoc run (model=...) with no out_dir overwrote the DVC-tracked metrics/benchmark/sr_x2.json."""
    from flows.benchmark import benchmark_ipt

    work = tmp_path / "work"
    work.mkdir()
    (work / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    summary = benchmark_ipt(
        tasks=["sr_x2"],
        model="baseline",
        root=str(make_sr_set(tmp_path / "bench", scales=(2,))),
        datasets="Set5",
        limit=1,
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        workdir=str(work),
    )
    assert summary["sr_x2"]["Set5"] > 10
    assert json.loads((work / "outputs" / "benchmark" / "baseline" / "sr_x2.json").read_text())["model"] == "baseline"
    assert not (work / "metrics").exists()
    with pytest.raises(ValueError, match="DVC stage output"):
        benchmark_ipt(tasks=["sr_x2"], model="baseline", limit=1, out_dir="metrics/benchmark", workdir=str(work))
    assert not (work / "metrics").exists()
