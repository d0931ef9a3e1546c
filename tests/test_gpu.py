"""The CUDA paths: bf16 autocast training, CUDA inference against the CPU, and NCCL DDP parity.

Marked `gpu` and skipped without CUDA (CI has none; `make test` deselects them). On a GPU machine:
`make test-gpu`. The NCCL test runs one rank on one GPU (torchrun joins a process group of one, so DDP and the
collectives run on NCCL); NCCL refuses two ranks on one device, so its two-rank case needs two GPUs.
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from test_train_ddp import torchrun_pretrain

from conftest import ROOT, with_root_on_path
from helpers_data import make_sr_set
from helpers_pairs import make_pair_root, tiny_pretrain
from ipt import metrics
from ipt.checkpoint import load_model, save_checkpoint
from ipt.cli import main
from ipt.config import ModelSpec
from ipt.inference import restore_image
from ipt.model import build_ipt
from ipt.model.ipt import IPT
from ipt.train.loop import pretrain
from ipt.train.state import read_metrics

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pair_root(tmp_path_factory.mktemp("pairs"), samples=8, shards=2)


def test_bf16_autocast_training_on_cuda_learns(pairs, tmp_path) -> None:
    cfg = tiny_pretrain(pairs, tmp_path / "bf16", steps=30, lr=1e-3, precision="auto", device="cuda")
    result = pretrain(cfg)
    assert result["precision"] == "bf16"  # auto = bf16 autocast on CUDA
    rows = read_metrics(tmp_path / "bf16")
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    first, last = sum(r["l1"] for r in rows[:5]) / 5, sum(r["l1"] for r in rows[-5:]) / 5
    assert last < first, (first, last)
    assert load_model(tmp_path / "bf16" / "model.pt").spec.task_names == ("sr_x2", "denoise_s30")


@pytest.mark.parametrize("tiling", ["overlap", "official"])
def test_cuda_inference_matches_the_cpu(tiling: str) -> None:
    torch.manual_seed(0)
    model = IPT(ModelSpec(n_feats=8, num_layers=1, num_heads=2, patch_size=12, tasks=(("sr_x2", 2),))).eval()
    x = torch.rand(1, 3, 40, 52) * 255
    with torch.no_grad():
        cpu = restore_image(lambda w: model(w, "sr_x2"), x, 2, patch=12, tiling=tiling)
        gpu_model = model.cuda()
        gpu = restore_image(lambda w: gpu_model(w, "sr_x2"), x.cuda(), 2, patch=12, tiling=tiling).cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = restore_image(lambda w: gpu_model(w, "sr_x2"), x.cuda(), 2, patch=12, tiling=tiling).float().cpu()
    assert (gpu - cpu).abs().max() < 0.05  # grey levels; TF32 convolutions may differ in the last bits
    mse = ((bf16 - cpu) ** 2).mean()
    assert 10 * torch.log10(255**2 / mse) > 35  # bf16 is an approximation, but a close one


def test_metrics_of_cuda_tensors_equal_the_cpu_ones() -> None:
    torch.manual_seed(0)
    sr, hr = torch.rand(3, 40, 44) * 255, torch.rand(3, 40, 44) * 255
    for fn in (metrics.psnr_y, metrics.ssim_y):
        assert fn(sr.cuda(), hr.cuda(), crop_border=2) == pytest.approx(fn(sr, hr, crop_border=2), abs=1e-9)


@pytest.mark.parametrize(
    "nproc",
    [
        1,  # a process group of one on one GPU: DDP and every collective of the loop go through NCCL
        pytest.param(
            2,
            marks=pytest.mark.skipif(torch.cuda.device_count() < 2, reason="two NCCL ranks need two GPUs"),
        ),
    ],
)
def test_nccl_ranks_match_a_single_cuda_process(pairs, tmp_path, monkeypatch, nproc) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 convolutions in both runs
    steps = 4
    cmd = torchrun_pretrain(pairs, tmp_path / "ddp", device="cuda", steps=steps, nproc=nproc)
    env = with_root_on_path(dict(os.environ)) | {"NVIDIA_TF32_OVERRIDE": "0"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith('{"run_dir"')))
    assert (summary["backend"], summary["world_size"]) == ("nccl", nproc)
    single = tiny_pretrain(pairs, tmp_path / "single", steps=steps, lr=5e-5, precision="fp32", device="cuda")
    pretrain(single)
    got, want = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "single")
    for g, w in zip(got, want, strict=True):
        assert g["task"] == w["task"]
        for key in ("loss", "l1", "contrastive"):
            assert g[key] == pytest.approx(w[key], rel=1e-4), (g["step"], key)


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int16)


@pytest.mark.parametrize("tiling", ["overlap", "official"])
def test_restore_and_benchmark_clis_on_cuda_match_the_cpu(tmp_path, monkeypatch, tiling: str) -> None:
    """The user's commands with `--device cuda`: `ipt restore` and `ipt benchmark` (the paper table's path)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    spec = ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=2, patch_size=12)
    weights = save_checkpoint(tmp_path / "tiny.pt", build_ipt(spec))
    root = make_sr_set(tmp_path / "bench", "Set5", n=2, size=(60, 72))
    lr = root / "Set5" / "LR_bicubic" / "X2" / "img0x2.png"
    reports = {}
    for dev in ("cpu", "cuda"):
        argv = ["restore", str(lr), str(tmp_path / f"{dev}.png"), "--weights", str(weights), "--task", "sr_x2"]
        assert main([*argv, "--device", dev, "--tiling", tiling, "--precision", "fp32", "--quiet"]) == 0
        argv = ["benchmark", "--task", "sr_x2", "--model", str(weights), "--root", str(root), "--datasets", "Set5"]
        out = tmp_path / f"{dev}.json"
        argv += ["--device", dev, "--tiling", tiling, "--precision", "fp32", "--out", str(out), "--quiet"]
        assert main(argv) == 0
        reports[dev] = json.loads(out.read_text())
    assert np.abs(_png(tmp_path / "cpu.png") - _png(tmp_path / "cuda.png")).max() <= 1  # rounding of near-ties
    cpu, gpu = (reports[d]["datasets"]["Set5"]["psnr_y"] for d in ("cpu", "cuda"))
    assert gpu == pytest.approx(cpu, abs=0.01)


def test_finetune_and_refine_train_on_cuda(pairs, tmp_path) -> None:
    """Fine-tuning (and its official-layout export) and PTG-RM training on CUDA, then restoring through both."""
    pre = tiny_pretrain(pairs, tmp_path / "pre", steps=2, device="cuda")  # the released layout: official.pt export
    pretrain(pre)
    argv = ["finetune", "--params", "none", "--task", "sr_x2", "--init", str(tmp_path / "pre"), "--shards", str(pairs)]
    argv += ["--out", str(tmp_path / "ft"), "--steps", "2", "--batch-size", "2", "--device", "cuda", "--log-every", "0"]
    assert main(argv) == 0
    assert (tmp_path / "ft" / "official.pt").is_file()
    argv = ["refine", "--params", "none", "--task", "sr_x2", "--base", str(tmp_path / "ft" / "model.pt")]
    argv += ["--prior", "random", "--shards", str(pairs), "--out", str(tmp_path / "ref"), "--steps", "2"]
    assert main([*argv, "--batch-size", "2", "--shuffle-buffer", "4", "--device", "cuda", "--log-every", "0"]) == 0
    img = tmp_path / "odd.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (19, 27, 3), dtype=np.uint8)).save(img)
    for weights in (tmp_path / "ft" / "model.pt", tmp_path / "ref" / "model.pt"):
        out = tmp_path / f"{weights.parent.name}.png"
        assert main(["restore", str(img), str(out), "--weights", str(weights), "--device", "cuda", "--quiet"]) == 0
        assert Image.open(out).size == (54, 38)
