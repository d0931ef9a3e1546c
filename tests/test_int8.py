"""ipt.model.int8: int8 linear maps with per-token activation scales (``--precision int8``)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import ipt.device
from ipt.model import build_ipt
from ipt.model.body import Attention
from ipt.model.int8 import Int8Attention, Int8Linear, int8_linear, quantize_int8, quantize_rows

# torch._int_mm is exact only with int8 dot products (see the test below); elsewhere --precision int8 is refused
exact_int8 = pytest.mark.skipif(not ipt.device.cpu_has_exact_int8(), reason="this CPU has no int8 dot products")
INT_MM_ERROR = (
    "import torch; torch.manual_seed(0); a = torch.randint(-127, 128, (32, 64), dtype=torch.int8); "
    "b = torch.randint(-127, 128, (64, 64), dtype=torch.int8); "
    "print((torch._int_mm(a, b).long() - a.long() @ b.long()).abs().max().item())"
)


def int_mm_error(cap: str | None) -> int:
    """The largest error of torch._int_mm on random int8 in a fresh process, oneDNN capped at ``cap`` (None: not)."""
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    env |= {"ONEDNN_MAX_CPU_ISA": cap} if cap else {}
    out = subprocess.run([sys.executable, "-c", INT_MM_ERROR], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.slow
def test_the_int8_matmul_is_exact_only_with_int8_dot_products():
    """Why --precision int8 needs VNNI or AMX: without them oneDNN adds pairs of u8 x s8 products in saturating 16-bit
    sums (up to 2 x 255 x 127), so the "exact" int8 matmul is off by thousands; capping this CPU's oneDNN below
    VNNI shows it wherever the CPU has VNNI."""
    assert (int_mm_error(None) == 0) == ipt.device.cpu_has_exact_int8()
    if ipt.device.cpu_has_exact_int8():
        assert int_mm_error("AVX2") > 1000


def test_rows_quantize_within_half_a_step_and_zero_rows_stay_zero():
    torch.manual_seed(0)
    x = torch.randn(6, 40) * torch.tensor([0.01, 1, 100, 3, 0.5, 7])[:, None]
    x[3] = 0
    q, s = quantize_rows(x)
    assert q.dtype == torch.int8 and s.shape == (6, 1)
    nonzero = torch.tensor([True, True, True, False, True, True])
    assert (q[nonzero].abs().amax(1) == 127).all()  # every non-zero row uses the whole range
    assert torch.equal(q[3], torch.zeros(40, dtype=torch.int8))
    assert ((q.float() * s - x).abs() <= s / 2 + 1e-6).all()


@exact_int8
def test_int8_linear_is_close_to_the_float_one_and_each_row_ignores_the_others():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(32, 64)
    m = Int8Linear(lin.weight, lin.bias)
    y = m(x)
    ref = lin(x)
    assert (y - ref).norm() / ref.norm() < 0.01
    # a row's result is the same alone as in any batch (torch.ao's dynamic int8 scales the whole batch at once)
    alone = torch.cat([m(x[i : i + 1]) for i in range(len(x))])
    assert torch.equal(alone, y)
    scaled = x.clone()
    scaled[1:] *= 1000  # other rows' magnitudes must not move row 0
    assert torch.equal(m(scaled)[0], y[0])
    assert torch.equal(int8_linear(x, m.wq, m.w_scale, None) + lin.bias, y)


@exact_int8
def test_int8_attention_matches_the_float_attention_in_both_layouts():
    torch.manual_seed(0)
    attn = Attention(32, 4).eval()
    fused, apart = (Int8Attention(attn, int8_linear, self_attention=f).eval() for f in (True, False))
    assert not hasattr(fused, "in_proj_weight") and not hasattr(fused, "q") and not hasattr(apart, "qk")
    s, m = torch.randn(2, 10, 32), torch.randn(2, 7, 32)
    with torch.no_grad():
        for query, key, value in ((s, s, s), (s, m, m)):  # self-attention and cross-attention
            ref = attn(query, key, value)
            out = apart(query, key, value)
            assert out.shape == ref.shape
            assert (out - ref).norm() / ref.norm() < 0.02
            # one q/k matmul of twice the width gives the two matmuls' results (per-column weight scales)
            assert torch.equal(fused(query, key, value), out)


@exact_int8
def test_quantized_ipt_keeps_the_original_and_stays_close_to_it(tiny_spec):
    torch.manual_seed(0)
    model = build_ipt(replace(tiny_spec, dropout=0.5)).train()  # dropout must not act in the quantized copy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_int8(model)
    assert not any(isinstance(m, torch.nn.Linear) for m in q.modules())
    assert not any(m.training for m in q.modules())
    assert {type(a).__name__ for a in q.modules() if hasattr(a, "project")} == {"Int8Attention"}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched
    x = torch.rand(3, 3, 12, 12) * 255
    with torch.inference_mode():
        ref, out = model.eval()(x, "sr_x2"), q(x, "sr_x2")
        assert torch.equal(q(x, "sr_x2"), out)
    assert out.shape == ref.shape
    assert F.mse_loss(out, ref) < 1.0  # > 48 dB on the 0-255 scale


@exact_int8
def test_int8_restore_is_close_to_fp32_and_labelled(tiny_spec):
    """`--precision int8`: a quantized copy restores (the caller's model stays fp32) close to fp32, and the record
    says int8."""
    import numpy as np

    from ipt.restore import Restorer

    torch.manual_seed(0)
    model = build_ipt(tiny_spec).eval()
    img = np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    exact = Restorer(model, "sr_x2", precision="fp32", device="cpu")(img).astype(np.float64)
    r = Restorer(model, "sr_x2", precision="int8", device="cpu", batch=64)
    assert r.describe()["precision"] == "int8" and r.precision_info.label == "int8" and r.notes == []
    assert any(isinstance(m, Int8Linear) for m in r.model.modules())
    assert any(isinstance(m, torch.nn.Linear) for m in model.modules())  # the caller's model is untouched
    out = r(img)
    psnr = 10 * np.log10(255**2 / max(np.mean((out - exact) ** 2), 1e-12))
    assert 35 < psnr < 99, psnr  # an approximation, a close one
    official = Restorer(model, "sr_x2", tiling="official", precision="int8", device="cpu")
    assert official.notes and official.notes[0].startswith("int8 with the official tiling: the output is not")


def test_auto_restores_in_int8_on_a_cpu_with_int8_dot_products_and_no_bf16(tiny_spec, monkeypatch):
    import numpy as np

    import ipt.device
    from ipt.restore import Restorer

    monkeypatch.setattr(ipt.device, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_vnni"}))
    model = build_ipt(tiny_spec).eval()
    r = Restorer(model, "sr_x2", device="cpu")
    assert r.describe()["precision"] == "int8" and r.describe()["precision_asked"] == "auto"
    assert r.precision_info.label.startswith("int8 (auto: this CPU has int8 dot products (avx512_vnni)")
    assert any(isinstance(m, Int8Linear) for m in r.model.modules())
    img = np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    out = r(img)
    assert np.array_equal(out, Restorer(model, "sr_x2", device="cpu", precision="int8")(img))
    assert not np.array_equal(out, Restorer(model, "sr_x2", device="cpu", precision="fp32")(img))  # (so it tells)
    assert Restorer(model, "sr_x2", device="cpu", tiling="official").precision_used == "fp32"
