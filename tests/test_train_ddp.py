"""Two gloo processes under torchrun match one process over the same global batch (losses and weights), whether
they are two ranks of one node or one rank on each of two nodes (c10d rendezvous, through `ipt launch`).

Rank r reads rows r::2 of the globally seeded batch (ipt.train.data), DDP averages the gradients and the contrastive
loss all-gathers the tokens, so the two runs differ only by float32 summation order. The gradient norm is compared
at 1e-5; the weights at 1e-5 absolute with the paper's lr 5e-5: Adam divides by sqrt(v) per element, so an element
whose gradient is pure cancellation noise (~1e-8 here) moves by a noise-driven fraction of lr in either run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, free_port, with_root_on_path
from helpers_pairs import make_pair_root, tiny_pretrain
from ipt.checkpoint import load_model
from ipt.train.loop import pretrain
from ipt.train.state import read_metrics

# Validation on a held-out split (2 of the 8 test photos), the EMA and augmentation on: rank 0 validates and keeps
# the EMA while the other rank goes on; every rank's stream leaves the held-out photos out.
VALIDATED = ["--val-every", "2", "--val-fraction", "0.3", "--ema-decay", "0.5"]
VALIDATED_KW = dict(val_every=2, val_fraction=0.3, ema_decay=0.5)


def stage_flags(pairs, out, *, device: str, steps: int) -> list[str]:
    """A tiny two-task pretraining, global batch 4, fp32: the stage's flags (the same for every rank)."""
    return [
        "--shards", str(pairs), "--out", str(out), "--tasks", "sr_x2,denoise_s30",
        "--model-size", "tiny", "--steps", str(steps), "--batch-size", "4", "--lr", "5e-5",
        "--checkpoint-every", "3", "--shuffle-buffer", "8", "--stream-segment", "4", "--log-every", "0",
        "--precision", "fp32", "--device", device, *VALIDATED,
    ]  # fmt: skip


def torchrun_pretrain(pairs, out, *, device: str, steps: int, nproc: int = 2) -> list[str]:
    """``nproc`` ranks on one node under torchrun: the command line."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "ipt.cli", "pretrain",
        *stage_flags(pairs, out, device=device, steps=steps),
    ]  # fmt: skip


def two_node_launch(pairs, out, *, steps: int) -> list[str]:
    """One rank on each of two "nodes" (two `ipt launch` processes, c10d rendezvous on 127.0.0.1): the command line
    that both nodes run, as params.yaml ``launch: {nnodes: 2, rdzv_endpoint: ...}`` makes the DVC stage run it."""
    return [
        sys.executable, "-m", "ipt.cli", "launch", "pretrain", "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "test-two-nodes", "--params", "none",
        "--", *stage_flags(pairs, out, device="cpu", steps=steps),
    ]  # fmt: skip


def _run_together(cmds: list[list[str]], cwd) -> list[dict]:
    """Run the commands at once; the result lines they print (rank 0's JSON summary)."""
    env = with_root_on_path(dict(os.environ)) | {"OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in cmds
    ]
    try:
        outs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return [json.loads(x) for out in outs for x in out.splitlines() if x.startswith('{"run_dir"')]


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["one rank under torchrun", "one node, two ranks", "two nodes, one rank each"])
def test_gloo_ranks_match_a_single_process(tmp_path, topology) -> None:
    pairs = make_pair_root(tmp_path / "pairs", samples=8, shards=1)  # one shard per task, two ranks
    steps = 4
    if topology == "one rank under torchrun":  # a process group of one: DDP and the collectives, world size 1
        results = _run_together([torchrun_pretrain(pairs, tmp_path / "ddp", device="cpu", steps=steps, nproc=1)], ROOT)
    elif topology == "one node, two ranks":
        results = _run_together([torchrun_pretrain(pairs, tmp_path / "ddp", device="cpu", steps=steps)], ROOT)
    else:  # both "nodes" run the same command; the c10d store hands out the ranks. No params.yaml in cwd.
        results = _run_together([two_node_launch(pairs, tmp_path / "ddp", steps=steps)] * 2, tmp_path)
    world = 1 if topology == "one rank under torchrun" else 2
    assert [(r["backend"], r["world_size"]) for r in results] == [("gloo", world)]  # rank 0's summary, once

    single = tiny_pretrain(
        pairs, tmp_path / "single", steps=steps, lr=5e-5, precision="fp32", device="cpu", **VALIDATED_KW
    )
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
    got, want = (read_metrics(tmp_path / d, "validation.jsonl") for d in ("ddp", "single"))
    assert [r["step"] for r in got] == [2, 4] == [r["step"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g["psnr_y"] == pytest.approx(w["psnr_y"], abs=1e-4) and g["ssim_y"] == pytest.approx(
            w["ssim_y"], abs=1e-5
        )
