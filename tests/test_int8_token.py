"""benchmarks/int8_token.py: int8 linear maps with per-token activation scales (a bench_variants variant)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from int8_token import Int8Attention, Int8Linear, int8_linear, quantize_int8_token, quantize_rows  # noqa: E402

from ipt.model import build_ipt  # noqa: E402
from ipt.model.body import Attention  # noqa: E402


def test_rows_quantize_within_half_a_step_and_zero_rows_stay_zero():
    torch.manual_seed(0)
    x = torch.randn(6, 40) * torch.tensor([0.01, 1, 100, 3, 0.5, 7])[:, None]
    x[3] = 0
    q, s = quantize_rows(x)
    assert q.dtype == torch.int8 and s.shape == (6, 1)
    assert q.abs().max() == 127  # every non-zero row uses the whole range
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


def test_int8_attention_matches_the_float_attention():
    torch.manual_seed(0)
    attn = Attention(32, 4).eval()
    qa = Int8Attention(attn, int8_linear).eval()
    assert not hasattr(qa, "in_proj_weight")
    s, m = torch.randn(2, 10, 32), torch.randn(2, 7, 32)
    for query, key, value in ((s, s, s), (s, m, m)):  # self-attention (one q/k matmul) and cross-attention
        ref = attn(query, key, value)
        out = qa(query, key, value)
        assert out.shape == ref.shape
        assert (out - ref).norm() / ref.norm() < 0.02


def test_quantized_ipt_keeps_the_original_and_stays_close_to_it(tiny_spec):
    torch.manual_seed(0)
    model = build_ipt(tiny_spec).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_int8_token(model)
    assert not any(isinstance(m, torch.nn.Linear) for m in q.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched
    x = torch.rand(3, 3, 12, 12) * 255
    with torch.inference_mode():
        ref, out = model(x, "sr_x2"), q(x, "sr_x2")
    assert out.shape == ref.shape
    assert F.mse_loss(out, ref) < 1.0  # > 48 dB on the 0-255 scale
