"""ipt.model.int8: int8 linear maps with per-token activation scales (``--precision int8``)."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from ipt.model import build_ipt
from ipt.model.body import Attention
from ipt.model.int8 import Int8Attention, Int8Linear, int8_linear, quantize_int8, quantize_rows


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
