"""Prefect flows `pretrain-ipt` (2 gloo processes under torchrun) and `finetune-ipt` on a real temporary server."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT
from helpers_pairs import make_pair_root

pytest.importorskip("prefect")
pytest.importorskip("mlflow")


@pytest.mark.slow
def test_pretrain_then_finetune_flows_log_to_mlflow(tmp_path: Path, prefect_server) -> None:
    from mlflow.tracking import MlflowClient

    from flows.train import finetune_ipt, pretrain_ipt
    from ipt.checkpoint import load_model

    pairs = make_pair_root(tmp_path / "pairs")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--shards", str(pairs), "--batch-size", "4", "--shuffle-buffer", "4", "--log-every", "1"]
    tiny = ["--model-size", "tiny", "--tasks", "sr_x2,denoise_s30", "--steps", "3"]
    pre = pretrain_ipt(
        args=[*common, *tiny, "--out", str(tmp_path / "pre")],
        nproc_per_node=2,
        workdir=str(ROOT),
        tracking_uri=uri,
    )
    assert pre["steps"] == 3 and Path(pre["model"]).is_file()
    client = MlflowClient(uri)
    history = client.get_metric_history(pre["mlflow_run_id"], "loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert client.get_run(pre["mlflow_run_id"]).data.tags["nproc_per_node"] == "2"

    fine = finetune_ipt(
        task="denoise_s30",
        args=[*common, "--steps", "2", "--init", str(tmp_path / "pre"), "--out", str(tmp_path / "fine")],
        workdir=str(ROOT),
        tracking_uri=uri,
    )
    assert load_model(fine["model"]).spec.task_names == ("denoise_s30",)
    assert client.get_run(fine["mlflow_run_id"]).info.status == "FINISHED"


@pytest.mark.slow
def test_training_flow_failure_is_reported_with_the_error_line(tmp_path: Path, prefect_server) -> None:
    from flows.stages import StageFailed
    from flows.train import pretrain_ipt

    with pytest.raises(StageFailed, match="no pair shards|manifest"):
        pretrain_ipt(
            args=["--shards", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--model-size", "tiny"],
            workdir=str(ROOT),
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        )
