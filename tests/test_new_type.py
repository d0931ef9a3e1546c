"""flows.new_type: each task's new candidate against its champion from before a corruption type was added, on a
real MLflow registry (sqlite) with `ipt register` writing the DAG's register records."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from flows import new_type
from ipt.checkpoint import save_checkpoint
from ipt.cli import main
from ipt.config import ModelSpec
from ipt.model import build_ipt

pytest.importorskip("mlflow")


@pytest.fixture
def uri(sqlite_mlflow_uri: str) -> str:
    return sqlite_mlflow_uri


def _body(tmp_path: Path, tasks: list[str], seed: int) -> Path:
    torch.manual_seed(seed)
    spec = ModelSpec.for_tasks(tasks, n_feats=8, num_layers=1, num_heads=2, patch_size=12)
    return save_checkpoint(tmp_path / f"body{seed}.pt", build_ipt(spec))


def _register(root: Path, ckpt: Path, task: str | None, psnr: float | None = None) -> dict:
    """`ipt register` as the DAG's stage runs it: the record lands in metrics/register/<task or pretrained>.json."""
    out = root / "metrics" / "register" / f"{task or 'pretrained'}.json"
    argv = ["register", "--checkpoint", str(ckpt), "--out", str(out)]
    if task:
        report = {
            "task": task,
            "model": str(ckpt),
            "model_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
            "protocol": "ipt",
            "seed": 1,
            "datasets": {
                "Set5": {"psnr_y": psnr, "images": 2, "per_image": [{"name": n, "psnr_y": psnr} for n in "ab"]}
            },
        }
        (root / "report.json").write_text(json.dumps(report))
        argv += ["--task", task, "--report", str(root / "report.json")]
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_a_new_type_is_compared_with_the_champions_from_before_it(tmp_path: Path, uri: str) -> None:
    from mlflow.tracking import MlflowClient

    root = tmp_path / "project"
    old = _body(tmp_path, ["sr_x2", "denoise_s30"], 0)
    assert new_type.snapshot(root, uri, ["sr_x2", "denoise_s30"]) is None  # no body registered: nothing to keep
    _register(root, old, None)
    _register(root, old, "sr_x2", 30.0)
    _register(root, old, "denoise_s30", 31.0)
    new_type.snapshot(root, uri, ["sr_x2", "denoise_s30", "derain"])
    snap = json.loads((root / new_type.SNAPSHOT).read_text())
    assert snap["pretrained"] == {"version": "1", "tasks": ["sr_x2", "denoise_s30"]}
    assert snap["champions"]["sr_x2"]["version"] == "1" and snap["champions"]["derain"] is None

    # The scheduled run: a body with derain is registered, then sr_x2; the run stops before denoise_s30.
    new = _body(tmp_path, ["sr_x2", "denoise_s30", "derain"], 1)
    _register(root, new, None)
    _register(root, new, "sr_x2", 30.25)
    first = new_type.compare(root, uri)
    assert first is not None and first["added"] == ["derain"] and not first["complete"]
    rows = {r["task"]: r for r in first["rows"]}
    assert rows["sr_x2"]["change_db"] == pytest.approx(0.25) and rows["sr_x2"]["candidate"]["promoted"]
    assert rows["denoise_s30"]["candidate"] is None and "change_db" not in rows["denoise_s30"]
    assert "Not registered again yet: denoise_s30." in first["verdict"]
    assert (root / new_type.SNAPSHOT).exists()  # kept for the run that finishes the job
    # A snapshot is never overwritten by a later run's champions (sr_x2's champion is v2 now).
    new_type.snapshot(root, uri, ["sr_x2", "denoise_s30", "derain"])
    assert json.loads((root / new_type.SNAPSHOT).read_text()) == snap

    # The next run registers the rest: denoise_s30 loses 0.5 dB against its champion from before.
    _register(root, new, "denoise_s30", 30.5)
    _register(root, new, "derain", 28.0)
    report = new_type.compare(root, uri, parent_run_id=None)
    assert report["complete"]
    rows = {r["task"]: r for r in report["rows"]}
    assert rows["denoise_s30"]["change_db"] == pytest.approx(-0.5) and not rows["denoise_s30"]["candidate"]["promoted"]
    assert rows["derain"]["new_type"] and rows["derain"]["status"].startswith("no champion before")
    assert report["verdict"].startswith("Adding derain to the pretraining: 1 of 2 task(s) scored higher")
    assert "sr_x2 +0.2500 dB, denoise_s30 -0.5000 dB; mean -0.1250 dB" in report["verdict"]
    folder = root / "runs" / "new_type" / "derain"
    assert json.loads((folder / "report.json").read_text())["rows"] == report["rows"]
    md = (folder / "report.md").read_text()
    assert "| denoise_s30 | v1 | 31.0000 | v2 | 30.5000 | -0.5000 | no | compared |" in md
    assert not (root / new_type.SNAPSHOT).exists() and (folder / "champions_before.json").exists()
    assert new_type.compare(root, uri) is None  # done: later runs write nothing

    run = MlflowClient(uri).get_run(report["mlflow_run_id"])
    assert run.data.metrics["denoise_s30/change_db"] == pytest.approx(-0.5)
    assert run.data.metrics["sr_x2/champion_before"] == 30.0 and run.data.metrics["derain/candidate"] == 28.0
    assert run.data.params["added"] == "derain" and run.data.tags["mlflow.note.content"] == report["verdict"]


def test_a_re_pretraining_with_the_same_types_writes_nothing(tmp_path: Path, uri: str) -> None:
    root = tmp_path / "project"
    body = _body(tmp_path, ["sr_x2"], 0)
    _register(root, body, None)
    _register(root, body, "sr_x2", 30.0)
    new_type.snapshot(root, uri, ["sr_x2"])
    assert new_type.compare(root, uri) is None and (root / new_type.SNAPSHOT).exists()  # body not registered again yet
    _register(root, _body(tmp_path, ["sr_x2"], 1), None)
    assert new_type.compare(root, uri) is None
    assert not (root / new_type.SNAPSHOT).exists() and not (root / "runs" / "new_type" / "sr_x2").exists()
