"""The pretrain/finetune subcommands through a plain argparse parser (their module's PARSERS), no params file."""

from __future__ import annotations

import argparse
import json
import os
import sys

import pytest

from helpers_pairs import make_pair_root
from ipt.checkpoint import load_model
from ipt.cli.train import PARSERS
from ipt.errors import IPTError
from ipt.train.state import read_metrics


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ipt")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS.values():
        add(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except IPTError as e:  # what ipt's main does with the project's errors
        print(f"error: {e}", file=sys.stderr)
        return 2


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pair_root(tmp_path_factory.mktemp("pairs"), samples=4, shards=1)


@pytest.mark.slow
def test_pretrain_then_finetune_from_the_command_line(pairs, tmp_path, capsys) -> None:
    common = ["--batch-size", "2", "--shuffle-buffer", "4", "--log-every", "1", "--precision", "fp32"]
    rc = run(
        ["pretrain", "--shards", str(pairs), "--out", str(tmp_path / "pre"), "--tasks", "sr_x2,denoise_s30"]
        + ["--task-weights", "1,0", "--model-size", "tiny", "--n-feats", "4", "--steps", "2", *common]
    )
    assert rc == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["last"]["step"] == 2 and "step 1 sr_x2: loss" in err
    assert [r["task"] for r in read_metrics(tmp_path / "pre")] == ["sr_x2", "sr_x2"]  # weight 0 never drawn
    assert load_model(tmp_path / "pre" / "model.pt").spec.n_feats == 4

    rc = run(
        ["finetune", "--shards", str(pairs), "--out", str(tmp_path / "ft"), "--init", str(tmp_path / "pre")]
        + ["--task", "denoise_s30", "--steps", "1", "--milestones", "", *common]
    )
    assert rc == 0
    assert load_model(tmp_path / "ft" / "model.pt").spec.task_names == ("denoise_s30",)
    assert (tmp_path / "ft" / "official.pt").is_file()


def test_model_config_file_and_errors(pairs, tmp_path, capsys) -> None:
    (tmp_path / "params.yaml").write_text("seed: 1\nmodel:\n  n_feats: 4\n  num_layers: 1\n  num_heads: 2\n")
    base = ["pretrain", "--shards", str(pairs), "--tasks", "sr_x2", "--steps", "1", "--batch-size", "2"]
    argv = [*base, "--out", str(tmp_path / "a"), "--model-config", str(tmp_path / "params.yaml")]
    assert run([*argv, "--patch-size", "12", "--log-every", "0"]) == 0
    assert load_model(tmp_path / "a" / "model.pt").spec.num_layers == 1
    capsys.readouterr()

    assert run(["pretrain", "--shards", str(tmp_path / "none"), "--out", str(tmp_path / "b"), "--tasks", "sr_x2"]) == 2
    assert f"error: {tmp_path / 'none' / 'sr_x2'}: no pair shards" in capsys.readouterr().err
    assert run([*base, "--out", str(tmp_path / "a"), "--model-size", "tiny"]) == 2  # a finished run, no --resume
    assert "pass resume" in capsys.readouterr().err
    assert run([*base, "--out", str(tmp_path / "c"), "--model-config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: cannot read model config" in capsys.readouterr().err


@pytest.mark.slow
def test_per_step_metrics_reach_an_mlflow_run(pairs, tmp_path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    from ipt.tracking import MlflowTracker
    from ipt.train.data import shard_versions

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    # The DVC version of a shard folder comes from ./dvc.lock (paths relative to it), as `dvc repro` leaves it.
    sr = os.path.relpath(pairs / "sr_x2", tmp_path)
    (tmp_path / "dvc.lock").write_text(
        f"schema: '2.0'\nstages:\n  corrupt@sr_x2:\n    cmd: x\n    outs:\n    - path: {sr}\n      md5: 0123abc.dir\n"
    )
    tracker = MlflowTracker.start("train-test", run_name="pretrain", tracking_uri=uri)
    argv = ["pretrain", "--shards", str(pairs), "--out", str(tmp_path / "run"), "--tasks", "sr_x2,denoise_s30"]
    argv += ["--model-size", "tiny", "--steps", "3", "--batch-size", "2", "--log-every", "0"]
    argv += ["--val-every", "2", "--val-dir", str(pairs), "--val-samples", "2"]  # any pair-shard root validates
    assert run([*argv, "--mlflow-run-id", tracker.run_id, "--tracking-uri", uri]) == 0
    history = tracker.client.get_metric_history(tracker.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    for name in ("val_psnr_y", "val_ssim_y", "val_psnr_y_sr_x2", "val_ssim_y_denoise_s30"):  # the UI's curves
        assert sorted(m.step for m in tracker.client.get_metric_history(tracker.run_id, name)) == [2, 3], name
    rows = read_metrics(tmp_path / "run", "validation.jsonl")
    assert [m.value for m in tracker.client.get_metric_history(tracker.run_id, "val_psnr_y")] == [
        r["psnr_y"] for r in rows
    ]
    logged = tracker.client.get_run(tracker.run_id).data
    assert logged.params["pretrain.steps"] == "3" and logged.tags["ipt.stage"] == "pretrain"
    versions = shard_versions(pairs, ["sr_x2", "denoise_s30"])
    assert logged.tags["ipt.data.sr_x2"] == versions["sr_x2"][:16]
    assert logged.tags["ipt.data.denoise_s30"] == versions["denoise_s30"][:16]
    assert logged.tags["ipt.dvc.sr_x2"] == "0123abc.dir" and "ipt.dvc.denoise_s30" not in logged.tags  # untracked
    assert len(logged.tags["ipt.params_hash"]) == 16


def test_params_file_lists_of_numbers_reach_the_config(tmp_path) -> None:
    """params.yaml `milestones: [2, 3]` / `task_weights: [1, 0.5]` (YAML numbers, not strings) parse as the flags do."""
    from ipt.cli import parse_args
    from ipt.train.config import config_for

    (tmp_path / "params.yaml").write_text(
        "finetune: {init: runs/pre, shards: data/pairs, out: runs/ft, milestones: [2, 3], pixel_loss: charbonnier}\n"
        "pretrain: {shards: data/pairs, out: runs/pre, tasks: [sr_x2, derain], task_weights: [1, 0.5]}\n"
    )
    params = ["--params", str(tmp_path / "params.yaml")]
    args = parse_args(["finetune", "--task", "derain", *params])
    cfg = config_for("finetune", {"milestones": args.milestones, "pixel_loss": args.pixel_loss, "init": args.init})
    assert cfg.resolved_milestones() == (2, 3) and cfg.pixel_loss == "charbonnier"
    assert parse_args(["pretrain", *params]).task_weights == [1.0, 0.5]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("pretrain:\n  lr: fast\n", "pretrain.lr: invalid value 'fast'"),
        ("pretrain:\n  steps: 1.5\n", "pretrain.steps: invalid value 1.5"),
        ("pretrain:\n  precision: fp16\n", "pretrain.precision: 'fp16' is not one of auto, fp32, bf16"),
        ("benchmark:\n  tiling: overlapp\n", "benchmark.tiling: 'overlapp' is not one of overlap, official"),
    ],
)
def test_bad_params_values_name_the_file_and_key(tmp_path, capsys, section, message) -> None:
    """A wrong value in params.yaml is reported against the file and key, not a flag the user never typed."""
    from ipt.cli import main

    (tmp_path / "p.yaml").write_text(section)
    command = section.split(":")[0]
    argv = [command, "--params", str(tmp_path / "p.yaml"), *(["--task", "sr_x2"] if command == "benchmark" else [])]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'p.yaml'}: {message}" or err.startswith(
        f"error: {tmp_path / 'p.yaml'}: {message}"
    )
    assert len(err.splitlines()) == 1
