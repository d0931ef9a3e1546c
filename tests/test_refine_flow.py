"""Prefect flow `refine-ipt` on a real temporary server: train, score and register in one MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from helpers_pairs import make_pair_shards

pytest.importorskip("prefect")
pytest.importorskip("mlflow")


@pytest.mark.slow
def test_refine_flow_trains_scores_and_registers(tmp_path: Path, prefect_server) -> None:
    import torch
    from mlflow.tracking import MlflowClient

    from flows.refine import refine_ipt
    from ipt.checkpoint import save_checkpoint
    from ipt.config import ModelSpec
    from ipt.model import build_ipt

    torch.manual_seed(0)
    spec = ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=2, patch_size=12)
    base = save_checkpoint(tmp_path / "base.pt", build_ipt(spec))
    make_pair_shards(tmp_path / "pairs", "sr_x2", samples=4, patch=12)
    (tmp_path / "bench" / "Set5" / "HR").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        img = rng.integers(0, 256, (26, 30, 3), dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / "bench" / "Set5" / "HR" / f"{name}.png")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--shards", str(tmp_path / "pairs"), "--out", str(tmp_path / "run"), "--steps", "2"]
    args += ["--batch-size", "2", "--shuffle-buffer", "4", "--threads", "1"]
    bench = ["--root", str(tmp_path / "bench"), "--datasets", "Set5", "--tiling", "overlap"]
    out = refine_ipt(
        task="sr_x2",
        base=str(base),
        prior="none",
        args=args,
        benchmark_args=bench,
        workdir=str(ROOT),
        tracking_uri=uri,
    )
    report = json.loads(Path(out["report"]).read_text())
    assert report["datasets"]["Set5"]["images"] == 2
    client = MlflowClient(uri)
    run = client.get_run(out["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "loss" in run.data.metrics and "Set5/psnr_y" in run.data.metrics
    mv = client.get_model_version_by_alias("ipt-sr_x2-ptgrm", "champion")
    assert mv.run_id == out["mlflow_run_id"] and mv.tags["base_uri"] == str(base)
