"""`python -m flows.pipeline --dry-run --cost PLAN`: the run priced per stage from measured per-sample rates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytest.importorskip("yaml")


def _rates(tmp: Path) -> dict:
    data = {
        "hardware": {"cpu_model": "TestCPU"},
        "levels": [0, 6],
        "decode_s_per_image": 0.01,
        "clean": {
            "0": {"s_per_crop": 0.001, "bytes_per_sample": 1000.0},
            "6": {"s_per_crop": 0.004, "bytes_per_sample": 500.0},
        },
        "pairs": {
            "sr_x2": {
                "0": {"s_per_sample": 0.002, "bytes_per_sample": 300.0},
                "6": {"s_per_sample": 0.005, "bytes_per_sample": 100.0},
            }
        },
    }
    train = {"hardware": {"cuda": "TestGPU"}, "runs": [{"size": "paper", "precision": "bf16", "samples_per_s": 100.0}]}
    (tmp / "data.json").write_text(json.dumps(data))
    (tmp / "train.json").write_text(json.dumps(train))
    return {
        "source": {"name": "toy", "images": 3600},
        "shard": {"crops": 2, "png_level": 0},
        "corrupt": {"tasks": ["sr_x2"]},
        "pretrain": {"model_size": "paper", "epochs": 10, "precision": "bf16"},
        "finetune": {"epochs": 5, "precision": "bf16"},
        "rates": {"data": "data.json", "train": "train.json"},
    }


def test_price_multiplies_the_measured_rates_out(tmp_path: Path) -> None:
    from flows.cost import price, storage_by_level

    plan = _rates(tmp_path)
    rows = {r.stage: r for r in price(plan, tmp_path, workers=2, gpus=4)}
    # shard: 3600 decodes x 0.01 s + 7200 crops x 0.001 s = 43.2 s on 2 workers; 7200 x 1000 bytes
    assert rows["shard"].samples == 7200 and rows["shard"].bytes == 7.2e6
    assert rows["shard"].hours == pytest.approx(43.2 / 2 / 3600)
    assert rows["corrupt@sr_x2"].bytes == 7200 * 300 and rows["corrupt@sr_x2"].hours == pytest.approx(
        7200 * 0.002 / 2 / 3600
    )
    # pretrain: 10 epochs x 7200 samples at 100 samples/s per GPU on 4 GPUs
    assert rows["pretrain"].samples == 72000 and rows["pretrain"].hours == pytest.approx(72000 / 400 / 3600)
    assert rows["finetune@sr_x2"].hours == pytest.approx(36000 / 400 / 3600)
    level6 = {r.stage: r for r in price(plan, tmp_path, workers=2, gpus=4, png_level=6)}
    assert level6["shard"].bytes == 7200 * 500 and level6["corrupt@sr_x2"].bytes == 7200 * 100
    assert [(lv, clean, pairs) for lv, clean, pairs, _ in storage_by_level(plan, tmp_path)] == [
        (0, 7.2e6, 7200 * 300.0),
        (6, 3.6e6, 7200 * 100.0),
    ]


def test_a_plan_the_rates_cannot_price_is_named(tmp_path: Path) -> None:
    from flows.cost import CostError, price

    plan = _rates(tmp_path)
    with pytest.raises(CostError, match="no measurement at PNG level 3"):
        price(plan, tmp_path, workers=1, gpus=1, png_level=3)
    plan["corrupt"]["tasks"].append("derain")
    with pytest.raises(CostError, match="no measured corrupt rate for derain"):
        price(plan, tmp_path, workers=1, gpus=1)
    plan["rates"]["train"] = "absent.json"
    with pytest.raises(CostError, match="absent.json: rates file not found"):
        price(plan, tmp_path, workers=1, gpus=1)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "flows.pipeline", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_paper_plan_is_priced_from_the_committed_measurements() -> None:
    """The committed docs/bench_cost.json and docs/bench_train_cuda.json price the paper's plan: every stage of the
    six tasks, storage per PNG level, and nothing is run (no flow run, no DVC)."""
    r = _cli("--dry-run", "--cost", "benchmarks/paper_scale.yaml", "--workers", "16", "--gpus", "32")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for stage in ["shard", "pretrain"] + [f"{s}@{t}" for s in ("corrupt", "finetune") for t in ("sr_x2", "derain")]:
        assert f"\n{stage} " in out, stage
    assert "1.28M images x 8 crops" in out and "16 data worker(s), 32 GPU(s)" in out
    assert "level 0: clean" in out and "level 9: clean" in out and " TB" in out
    assert "flow run" not in r.stdout + r.stderr


def test_cost_without_dry_run_and_a_missing_plan_are_one_line_errors() -> None:
    r = _cli("--cost", "benchmarks/paper_scale.yaml")
    assert r.returncode == 2 and "--cost prices a plan; it goes with --dry-run" in r.stderr
    r = _cli("--dry-run", "--cost", "nope.yaml")
    assert r.returncode == 2 and r.stderr.startswith("error: nope.yaml: plan file not found"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
