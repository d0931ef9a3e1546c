"""Two gloo processes under torchrun match one process over the same global batch (losses and weights).

Rank r reads rows r::2 of the globally seeded batch (ipt.train.data), DDP averages the gradients and the contrastive
loss all-gathers the tokens, so the two runs differ only by float32 summation order. The gradient norm is compared
at 1e-5; the weights at 1e-5 absolute with the paper's lr 5e-5: Adam divides by sqrt(v) per element, so an element
whose gradient is pure cancellation noise (~1e-8 here) moves by a noise-driven fraction of lr in either run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT, free_port
from helpers_pairs import make_pair_root, tiny_pretrain
from ipt.checkpoint import load_model
from ipt.train.loop import pretrain
from ipt.train.state import read_metrics


def torchrun_pretrain(pairs, out, *, device: str, steps: int) -> list[str]:
    """Two ranks of a tiny two-task pretraining under torchrun, batch 4, fp32: the command line."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "ipt.train.cli", "pretrain",
        "--shards", str(pairs), "--out", str(out), "--tasks", "sr_x2,denoise_s30",
        "--model-size", "tiny", "--steps", str(steps), "--batch-size", "4", "--lr", "5e-5",
        "--checkpoint-every", "3", "--shuffle-buffer", "8", "--stream-segment", "4", "--log-every", "0",
        "--precision", "fp32", "--device", device,
    ]  # fmt: skip


@pytest.mark.slow
def test_two_gloo_ranks_match_a_single_process(tmp_path) -> None:
    pairs = make_pair_root(tmp_path / "pairs", samples=8, shards=1)  # one shard per task, two ranks
    steps = 4
    cmd = torchrun_pretrain(pairs, tmp_path / "ddp", device="cpu", steps=steps)
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    single = tiny_pretrain(pairs, tmp_path / "single", steps=steps, lr=5e-5, precision="fp32", device="cpu")
    pretrain(single)
    got, want = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "single")
    assert [r["step"] for r in got] == list(range(1, steps + 1))
    assert all(r["contrastive"] > 0 for r in got)  # the contrastive term is on, over the gathered global batch
    for g, w in zip(got, want, strict=True):
        assert g["task"] == w["task"]
        for key in ("loss", "l1", "contrastive", "grad_norm"):
            assert g[key] == pytest.approx(w[key], rel=1e-5), (g["step"], key)
    a = load_model(tmp_path / "ddp" / "model.pt").state_dict()
    b = load_model(tmp_path / "single" / "model.pt").state_dict()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-5, sorted(((a[k].float() - b[k].float()).abs().max().item(), k) for k in a)[-3:]
    assert not (tmp_path / "ddp" / "checkpoints" / ".tmp").exists()
