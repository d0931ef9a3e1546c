"""The registry holds the refiner with a link to its base version (a real sqlite MLflow store in tmp_path), and
`models:/ipt-<task>-ptgrm@champion` restores and benchmarks as base then refiner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers_pairs import make_pair_shards
from ipt.checkpoint import save_checkpoint
from ipt.cli import main
from ipt.config import ModelSpec
from ipt.model import build_ipt

pytest.importorskip("mlflow")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def uri(tmp_path: Path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _report(task: str, psnr: float, model: Path) -> dict:
    from ipt.fileio import file_sha256

    sets = {"Set5": {"psnr_y": psnr, "images": 5}}
    return {"task": task, "model": str(model), "model_sha256": file_sha256(model), "protocol": "ipt", "datasets": sets}


@pytest.mark.slow
def test_refiner_version_links_to_its_base_version_and_restores_from_the_registry(tmp_path: Path, uri: str) -> None:
    from mlflow.tracking import MlflowClient

    torch.manual_seed(0)
    spec = ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=2, patch_size=12)
    base = save_checkpoint(tmp_path / "ft" / "model.pt", build_ipt(spec))
    assert main(["register", "--task", "sr_x2", "--checkpoint", str(base)]) == 0  # ipt-sr_x2 version 1
    make_pair_shards(tmp_path / "pairs", "sr_x2", samples=4, patch=12)

    run = tmp_path / "refine"
    argv = ["refine", "--task", "sr_x2", "--base", "models:/ipt-sr_x2@champion", "--prior", "random"]
    argv += ["--shards", str(tmp_path / "pairs"), "--out", str(run), "--steps", "2", "--batch-size", "2"]
    argv += ["--calibration", "4", "--shuffle-buffer", "4", "--log-every", "0", "--register"]
    assert main(argv) == 0  # trains, logs to a new run of experiment ipt-refine, registers version 1

    (tmp_path / "r.json").write_text(json.dumps(_report("sr_x2", 30.0, run / "model.pt")))
    (tmp_path / "base_r.json").write_text(json.dumps(_report("sr_x2", 30.0, base)))  # the base's score, not this one's
    wrong = ["refine-register", "--checkpoint", str(run / "model.pt"), "--report", str(tmp_path / "base_r.json")]
    assert main(wrong) == 2
    reg = ["refine-register", "--checkpoint", str(run / "model.pt"), "--report", str(tmp_path / "r.json")]
    assert main([*reg, "--out", str(tmp_path / "decision.json")]) == 0
    decision = json.loads((tmp_path / "decision.json").read_text())
    assert decision["name"] == "ipt-sr_x2-ptgrm" and decision["version"] == "2" and decision["promoted"]

    client = MlflowClient(uri)
    mv = client.get_model_version("ipt-sr_x2-ptgrm", "2")
    assert mv.tags["base_model"] == "ipt-sr_x2" and mv.tags["base_version"] == "1"
    assert mv.tags["base_uri"] == "models:/ipt-sr_x2@champion" and mv.tags["prior"] == "random"
    assert mv.tags["base_sha256"] == mv.tags["base_sha256"].lower() and len(mv.tags["base_sha256"]) == 64
    files = {a.path.split("/")[-1] for a in client.list_artifacts(mv.run_id, "ipt-sr_x2-ptgrm")}
    assert {"benchmark.json", "MLmodel", "data"} <= files  # an MLflow Model, the refiner and its base inside
    weights = {a.path.split("/")[-1] for a in client.list_artifacts(mv.run_id, "ipt-sr_x2-ptgrm/data/weights")}
    assert weights == {"base.pt", "model.pt"}
    first = client.get_model_version("ipt-sr_x2-ptgrm", "1")
    train_run = client.get_run(first.run_id)
    assert train_run.data.tags["refine.prior"] == "random" and "loss" in train_run.data.metrics

    img = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (13, 21, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "out.png"
    assert main(["restore", str(img), str(out), "--weights", "models:/ipt-sr_x2-ptgrm@champion", "--quiet"]) == 0
    assert Image.open(out).size == (42, 26)

    from ipt.scoring import make_restore_fn

    fn, info = make_restore_fn("models:/ipt-sr_x2-ptgrm/2", "sr_x2", tiling="overlap", precision="fp32")
    assert info["refiner"] == "ptgrm" and tuple(fn(np.zeros((13, 21, 3), np.uint8)).shape[-2:]) == (26, 42)
