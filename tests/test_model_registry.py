"""`ipt register`: registry contents per task, and the champion alias moving only on a better score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ipt.checkpoint import load_model, official_state_dict, save_checkpoint
from ipt.cli import main
from ipt.config import ModelSpec
from ipt.model import build_ipt

pytest.importorskip("mlflow")


@pytest.fixture
def uri(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _report(task: str, set5: float, set14: float, protocol: str = "ipt") -> dict:
    return {
        "task": task,
        "model": "x",
        "protocol": protocol,
        "datasets": {"Set5": {"psnr_y": set5, "images": 5}, "Set14": {"psnr_y": set14, "images": 14}},
    }


def _register(tmp_path: Path, ckpt: Path, task: str | None, report: dict | None, n: int) -> dict:
    argv = ["register", "--checkpoint", str(ckpt), "--out", str(tmp_path / f"decision{n}.json")]
    if task:
        argv += ["--task", task]
    if report is not None:
        (tmp_path / f"r{n}.json").write_text(json.dumps(report))
        argv += ["--report", str(tmp_path / f"r{n}.json")]
    assert main(argv) == 0
    return json.loads((tmp_path / f"decision{n}.json").read_text())


def test_task_versions_hold_model_head_tail_and_champion_moves_only_up(tmp_path: Path, uri: str) -> None:
    from mlflow.tracking import MlflowClient

    torch.manual_seed(0)
    spec = ModelSpec.for_tasks(["sr_x2", "denoise_s30"], n_feats=8, num_layers=1, num_heads=2, patch_size=12)
    model = build_ipt(spec)
    ckpt = save_checkpoint(tmp_path / "pretrained.pt", model)

    d1 = _register(tmp_path, ckpt, "sr_x2", _report("sr_x2", 30.0, 28.0), 1)
    assert d1["version"] == "1" and d1["promoted"] and d1["reason"] == "no champion yet"
    d2 = _register(tmp_path, ckpt, "sr_x2", _report("sr_x2", 29.0, 28.5), 2)  # mean 28.75 < 29.0
    assert not d2["promoted"] and d2["champion"] == "1" and "does not beat" in d2["reason"]
    d3 = _register(tmp_path, ckpt, "sr_x2", _report("sr_x2", 30.5, 28.0), 3)
    assert d3["promoted"] and d3["champion"] == "3"

    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias("ipt-sr_x2", "champion").version) == "3"
    from ipt.tracking import resolve_model_uri

    assert (
        resolve_model_uri("models:/ipt-sr_x2/latest").read_bytes()
        == resolve_model_uri("models:/ipt-sr_x2/3").read_bytes()
    )
    mv = client.get_model_version("ipt-sr_x2", "2")
    assert mv.tags["task"] == "sr_x2" and float(mv.tags["score"]) == pytest.approx(28.75)
    files = sorted(a.path.split("/")[-1] for a in client.list_artifacts(mv.run_id, "ipt-sr_x2"))
    assert files == ["benchmark.json", "head.pt", "model.pt", "official.pt", "tail.pt"]

    local = Path(client.download_artifacts(mv.run_id, "ipt-sr_x2", str(tmp_path / "dl")))
    official = official_state_dict(model, "sr_x2")
    head = torch.load(local / "head.pt", weights_only=True)
    tail = torch.load(local / "tail.pt", weights_only=True)
    assert head and all(k.startswith("head.0.") and torch.equal(v, official[k]) for k, v in head.items())
    assert tail and all(k.startswith("tail.0.") and torch.equal(v, official[k]) for k, v in tail.items())
    single = load_model(local / "model.pt")
    assert single.spec.task_names == ("sr_x2",)
    assert all(torch.equal(v, official[k]) for k, v in single.state_dict().items())

    x = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(x).save(tmp_path / "in.png")
    argv = ["restore", str(tmp_path / "in.png"), str(tmp_path / "out.png"), "--weights", "models:/ipt-sr_x2@champion"]
    assert main(argv + ["--quiet"]) == 0
    assert np.asarray(Image.open(tmp_path / "out.png")).shape == (40, 48, 3)


def test_pretrained_and_rescoring_rules(tmp_path: Path, uri: str) -> None:
    torch.manual_seed(0)
    model = build_ipt(ModelSpec.for_tasks(["sr_x2", "denoise_s30"], n_feats=8, num_layers=1, num_heads=2))
    ckpt = save_checkpoint(tmp_path / "pretrained.pt", model)
    d = _register(tmp_path, ckpt, None, None, 1)
    assert d["name"] == "ipt-pretrained" and d["promoted"] and d["score"] is None
    assert not _register(tmp_path, ckpt, None, None, 2)["promoted"]  # without a score, the first stays champion
    _register(tmp_path, ckpt, "denoise_s30", _report("denoise_s30", 30.0, 30.0), 3)
    d = _register(tmp_path, ckpt, "denoise_s30", _report("denoise_s30", 20.0, 20.0, protocol="matlab"), 4)
    assert d["promoted"] and "scored as" in d["reason"]  # a different protocol is not comparable: rescored


def test_register_errors_are_one_line(tmp_path: Path, uri: str, capsys) -> None:
    model = build_ipt(ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=2))
    ckpt = save_checkpoint(tmp_path / "m.pt", model)
    (tmp_path / "r.json").write_text(json.dumps(_report("sr_x3", 1, 1)))
    assert main(["register", "--checkpoint", str(ckpt), "--task", "sr_x2", "--report", str(tmp_path / "r.json")]) == 2
    assert "scores task 'sr_x3', not 'sr_x2'" in capsys.readouterr().err
    assert main(["register", "--checkpoint", str(ckpt), "--task", "sr_x4"]) == 2
    assert "task 'sr_x4' is not in this checkpoint" in capsys.readouterr().err
    assert main(["register", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
