"""Precision chosen from the hardware, and the bf16 autocast paths on the CPU (`--precision bf16`).

The CUDA side lives in tests/test_gpu.py. Here: `auto` follows the CPU's flags (never assumed), an explicit bf16
trains and restores on any CPU (slowly without native bf16, but correctly), and fp32 stays the exact path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ipt.device
from helpers_pairs import make_pair_root, tiny_pretrain
from ipt.checkpoint import load_model
from ipt.config import ModelSpec
from ipt.model.ipt import IPT
from ipt.restore import Restorer
from ipt.train.config import TrainConfig
from ipt.train.loop import pretrain
from ipt.train.state import read_metrics


@pytest.mark.parametrize(
    ("flags", "expected", "training"),
    [
        (frozenset({"avx2", "fma"}), "fp32", "fp32"),  # AMD EPYC / older Xeon: bf16 would be emulated, ~10x slower
        (frozenset({"avx2", "avx512f", "avx512_bf16"}), "bf16", "bf16"),
        (frozenset({"avx2", "avx512f", "amx_bf16", "amx_tile"}), "bf16", "bf16"),
        # int8 dot products without native bf16: int8 linear maps for inference (2.2x fp32 on Set5), never for
        # training; with native bf16 too, bf16 (int8 was no faster than bf16 there: docs/BENCHMARKS.md)
        (frozenset({"avx2", "avx512f", "avx512_vnni"}), "int8", "fp32"),  # Xeon without bf16
        (frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}), "bf16", "bf16"),  # AMD EPYC (Zen 4)
        (frozenset({"avx2", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"}), "bf16", "bf16"),  # Sapphire Rapids
    ],
)
def test_auto_precision_follows_the_cpu_flags(monkeypatch, flags, expected, training) -> None:
    monkeypatch.setattr(ipt.device, "cpu_flags", lambda: flags)
    cpu = torch.device("cpu")
    assert ipt.device.resolve_precision("auto", cpu) == expected
    assert ipt.device.resolve_precision("auto", cpu, exact=True) == "fp32"  # the official tiling's promise
    assert ipt.device.resolve_precision("auto", cpu, training=True) == training
    assert ipt.device.resolve_precision("fp32", cpu) == "fp32"  # asked for: never overridden
    assert ipt.device.resolve_precision("bf16", cpu) == "bf16"
    if flags & {"avx512_vnni", "amx_int8"}:
        assert ipt.device.resolve_precision("int8", cpu) == "int8"
    else:  # oneDNN's int8 matmul saturates without int8 dot products (tests/test_int8.py): refused, not wrong
        with pytest.raises(ValueError, match=r"^--precision int8 needs int8 dot products .* which this CPU lacks: "):
            ipt.device.resolve_precision("int8", cpu)
    label = ipt.device.choose_precision("auto", cpu).label
    if expected == "fp32":
        assert label == "fp32"
    else:
        assert label.startswith(f"{expected} (auto: this CPU has ")
    if expected == "int8":
        assert "(avx512_vnni) but no native bf16; --precision fp32 for the exact path)" in label


SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"})


@pytest.mark.parametrize(
    ("cap", "expected", "bf16_flags", "int8_flags"),
    [
        ("", "bf16", "amx_bf16,avx512_bf16", "amx_int8,avx512_vnni"),
        ("ALL", "bf16", "amx_bf16,avx512_bf16", "amx_int8,avx512_vnni"),
        ("avx512_core_amx", "bf16", "amx_bf16,avx512_bf16", "amx_int8,avx512_vnni"),  # (case as oneDNN takes it)
        ("AVX512_CORE_BF16", "bf16", "avx512_bf16", "avx512_vnni"),  # an AVX512-BF16 EPYC's kernels
        ("AVX512_CORE_VNNI", "int8", "none", "avx512_vnni"),  # a Cascade Lake's: int8 dot products, no bf16
        ("AVX512_CORE", "fp32", "none", "none"),
        ("AVX2", "fp32", "none", "none"),  # an AVX2-only CPU's kernels: bf16 would be emulated, ~10x slower
    ],
)
def test_auto_precision_follows_the_onednn_isa_cap(monkeypatch, cap, expected, bf16_flags, int8_flags) -> None:
    """ONEDNN_MAX_CPU_ISA keeps oneDNN's matmuls off the instructions above the cap although the CPU has them, so
    ``auto`` must count only the flags still usable (an AMX CPU capped to AVX2 would run bf16 emulated)."""
    monkeypatch.setattr(ipt.device, "cpu_flags", lambda: SAPPHIRE_RAPIDS)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert ipt.device.resolve_precision("auto", torch.device("cpu")) == expected
    assert (ipt.device.cpu_bf16_flags(), ipt.device.cpu_int8_flags()) == (bf16_flags, int8_flags)
    usable = ipt.device.usable_cpu_flags()  # the cap drops native bf16 / int8 flags only, never the others
    assert usable >= SAPPHIRE_RAPIDS - set(ipt.device.FLAG_NEEDS_ISA) and usable <= SAPPHIRE_RAPIDS
    assert set(bf16_flags.split(",") + int8_flags.split(",")) - {"none"} <= usable
    if int8_flags == "none":  # an explicit int8 is refused under a cap that leaves no int8 dot products, and says so
        with pytest.raises(ValueError, match=f"which this CPU under the oneDNN ISA cap {cap.upper()} lacks"):
            ipt.device.resolve_precision("int8", torch.device("cpu"))
    else:
        assert ipt.device.resolve_precision("int8", torch.device("cpu")) == "int8"
    hw = ipt.device.describe()
    assert hw.get("isa_cap") == (cap.upper() if cap not in ("", "ALL") else None)  # recorded only where it caps
    assert hw["cpu_bf16"] == bf16_flags and hw["fast_bf16"] == str(expected == "bf16")


def test_an_isa_cap_onednn_does_not_know_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX3")
    with pytest.raises(ValueError, match=r"^ONEDNN_MAX_CPU_ISA=AVX3: not an ISA oneDNN knows; known: ALL, SSE41, "):
        ipt.device.resolve_precision("auto", torch.device("cpu"))


def test_int8_is_for_cpu_inference_only() -> None:
    with pytest.raises(ValueError, match=r"unknown precision 'int8' \(int8 is an inference precision\)"):
        ipt.device.resolve_precision("int8", torch.device("cpu"), training=True)
    with pytest.raises(ValueError, match="--precision int8 runs on the CPU only, not on cuda"):
        ipt.device.resolve_precision("int8", torch.device("cuda"))
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        TrainConfig(shards="x", out="y", precision="int8")


def test_cpu_id_tells_apart_cpus_that_share_a_model_name() -> None:
    """Two "AMD EPYC" machines with the same flags measured 389 and 604 GFLOP/s in bf16: benchmarks record the
    family-model-stepping of the first processor beside the name."""
    block = "processor\t: {}\ncpu family\t: 25\nmodel\t\t: {}\nmodel name\t: AMD EPYC\nstepping\t: 1\n"
    assert ipt.device.cpu_id(block.format(0, 17) + "\n" + block.format(1, 99)) == "25-17-1"
    assert ipt.device.cpu_id("processor\t: 0\nmodel name\t: Some ARM\n") == ""  # no x86 fields: nothing guessed
    no_stepping = block.format(0, 17).replace("stepping\t: 1\n", "")
    assert ipt.device.cpu_id(no_stepping + "\n" + block.format(1, 17)) == ""  # the first block only, never mixed
    assert ipt.device.cpu_id() == "" or ipt.device.cpu_id().count("-") == 2  # this machine's, when it has one


def test_unknown_precision_is_an_error_naming_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown precision 'fp16'.*'auto', 'fp32', 'bf16'"):
        ipt.device.resolve_precision("fp16", torch.device("cpu"))


def test_bf16_autocast_training_on_cpu_learns_and_keeps_fp32_weights(tmp_path) -> None:
    pairs = make_pair_root(tmp_path / "pairs", samples=8, shards=1)
    cfg = tiny_pretrain(pairs, tmp_path / "bf16", steps=12, lr=2e-3, precision="bf16", device="cpu")
    result = pretrain(cfg)
    assert result["precision"] == "bf16"
    rows = read_metrics(tmp_path / "bf16")
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert all(np.isfinite(r["loss"]) and r["contrastive"] > 0 for r in rows)
    first, last = np.mean([r["l1"] for r in rows[:3]]), np.mean([r["l1"] for r in rows[-3:]])
    assert last < 0.9 * first, (first, last)
    model = load_model(tmp_path / "bf16" / "model.pt")
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # autocast: bf16 compute, fp32 master weights


def test_bf16_restore_on_cpu_is_close_to_the_exact_fp32_path() -> None:
    torch.manual_seed(0)
    model = IPT(ModelSpec(n_feats=16, num_layers=1, num_heads=2, patch_size=12, tasks=(("sr_x2", 2),)))
    img = np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    exact = Restorer(model, "sr_x2", precision="fp32", device="cpu")
    approx = Restorer(model, "sr_x2", precision="bf16", device="cpu")
    assert (exact.precision_used, approx.precision_used) == ("fp32", "bf16")
    a, b = exact(img).astype(np.float64), approx(img).astype(np.float64)
    assert a.shape == b.shape == (60, 82, 3)
    psnr = 10 * np.log10(255**2 / max(np.mean((a - b) ** 2), 1e-12))
    assert 30 < psnr < 99, psnr  # an approximation (not the exact path), but a close one
