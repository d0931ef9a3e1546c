"""A run killed with SIGKILL and resumed reproduces the per-step losses and weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT
from helpers_pairs import make_pair_root, tiny_pretrain
from ipt.checkpoint import load_model, read_state
from ipt.device import torch_threads
from ipt.train.loop import pretrain
from ipt.train.state import list_checkpoints, read_metrics

# The child trains with one DataLoader worker and sleeps in its tracker so that the kill lands mid-run. It and the
# parent's runs use the same intra-op thread count: float sums, and so the weights, depend on it.
THREADS = 2
CHILD = """
import json, sys, time
import torch
torch.set_num_threads({threads})
sys.path.insert(0, {tests!r})
from helpers_pairs import tiny_pretrain
from ipt.train.loop import pretrain

class SlowTracker:
    def log_metrics(self, metrics, step=None):
        time.sleep(0.25)
    def log_params(self, params): pass
    def set_tags(self, tags): pass

kw = json.loads(sys.argv[1])
pretrain(tiny_pretrain(kw.pop("shards"), kw.pop("out"), **kw), tracker=SlowTracker())
"""

COMMON = dict(steps=12, checkpoint_every=4, stream_segment=3, lr=1e-3)


def _wait_for_rows(run, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(read_metrics(run)) < n:
        if proc.poll() is not None:
            raise AssertionError(f"child exited early ({proc.returncode}): {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("child made no progress")
        time.sleep(0.02)


@pytest.mark.slow
def test_kill_9_then_resume_reproduces_the_uninterrupted_run(tmp_path) -> None:
    pairs = make_pair_root(tmp_path / "pairs", samples=8, shards=2)
    run = tmp_path / "killed"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(ROOT / "tests"), threads=THREADS))
    kw = {"shards": str(pairs), "out": str(run), "num_workers": 1} | COMMON
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(kw)], cwd=ROOT, stderr=subprocess.PIPE)
    try:
        _wait_for_rows(run, 6, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert [s for s, _ in list_checkpoints(run)] == [4] and not (run / "model.pt").exists()
    assert len(read_metrics(run)) >= 6  # rows past the checkpoint: the resume must drop and redo them

    with torch_threads(THREADS):
        resumed = pretrain(tiny_pretrain(pairs, run, resume=True, **COMMON))
        pretrain(tiny_pretrain(pairs, tmp_path / "straight", **COMMON))
    assert resumed["resumed_from"] == 4

    got, want = read_metrics(run), read_metrics(tmp_path / "straight")
    assert [r["step"] for r in got] == list(range(1, 13))
    for g, w in zip(got, want, strict=True):
        assert g["task"] == w["task"] and g["lr"] == w["lr"]
        for key in ("loss", "l1", "contrastive", "grad_norm"):
            assert g[key] == pytest.approx(w[key], rel=1e-6, abs=1e-7), (g["step"], key)
    a, b = load_model(run / "model.pt").state_dict(), load_model(tmp_path / "straight" / "model.pt").state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


@pytest.mark.slow
def test_kill_9_then_resume_gives_bit_identical_ema_weights_and_best_checkpoint(tmp_path) -> None:
    """As above with the EMA of the weights, validation and the best checkpoint on (and augmentation, cosine)."""
    pairs = make_pair_root(tmp_path / "pairs", samples=16, shards=2)
    extra = dict(ema_decay=0.9, val_every=3, val_fraction=0.3, val_samples=4, schedule="cosine", warmup_steps=2)
    run = tmp_path / "killed"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(ROOT / "tests"), threads=THREADS))
    kw = {"shards": str(pairs), "out": str(run), "num_workers": 1} | COMMON | extra
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(kw)], cwd=ROOT, stderr=subprocess.PIPE)
    try:
        _wait_for_rows(run, 7, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert [s for s, _ in list_checkpoints(run)] == [4] and not (run / "model.pt").exists()
    assert (run / "best.pt").exists()  # validated at step 6, past the checkpoint: retrained identically

    with torch_threads(THREADS):
        resumed = pretrain(tiny_pretrain(pairs, run, resume=True, **COMMON, **extra))
        straight = pretrain(tiny_pretrain(pairs, tmp_path / "straight", **COMMON, **extra))
    assert resumed["resumed_from"] == 4 and resumed["best"] == straight["best"]
    for name in ("model.pt", "best.pt", "checkpoints/step-00000012.pt"):
        a, b = read_state(run / name), read_state(tmp_path / "straight" / name)
        assert all(torch.equal(a["state_dict"][k], v) for k, v in b["state_dict"].items()), name
        if "train" in b:
            assert all(torch.equal(a["train"]["ema"][k], v) for k, v in b["train"]["ema"].items())
    assert read_state(run / "model.pt")["meta"]["weights"] == "ema"
    val = read_metrics(run, "validation.jsonl")
    assert [r["step"] for r in val] == [3, 6, 9, 12]
    assert [r["psnr_y"] for r in val] == [r["psnr_y"] for r in read_metrics(tmp_path / "straight", "validation.jsonl")]
