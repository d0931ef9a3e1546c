"""int8 inference of IPT's linear maps with per-token activation scales (``--precision int8``, CPU only).

Every linear map of the body (q, k, v, out_proj, the MLPs, linear_encoding, mlp_head) runs as an int8 x int8 -> int32
matmul (``torch._int_mm``, exact in integers where the CPU has int8 dot products, VNNI or AMX: without them oneDNN
saturates its 16-bit pair sums, and ``ipt.device.choose_precision`` refuses int8) with:

- weights quantized once, symmetric, one scale per output channel;
- activations quantized at each call, symmetric, one scale per token (row), so a linear map treats each token on
  its own (torch.ao's dynamic quantization scales a whole batch by one number, and leaves the attention's input
  projections in fp32);
- the int32 result scaled back to fp32 by both scales, then the bias added.

Everything else (convolutions, the attention's softmax product, LayerNorm) stays in fp32. The whole model's output
can still move by a grey level with the batch size: fp32 kernels round differently for different batch sizes, and
int8 rounding passes such last-bit differences on (bench_variants' batch-mates column; bf16 absorbs them).

The quantize / rescale passes run eagerly; ``compile=True`` fuses them with ``torch.compile`` (dynamic shapes, one
compilation for every batch size; it needs a C++ compiler), which only benchmarks/bench_variants.py uses.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

from ipt.model.body import Attention

LinearFn = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]
M = TypeVar("M", bound=nn.Module)


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """(M, K) float -> (M, K) int8 and the (M, 1) fp32 scales, symmetric per row: x ~ q * scale, |q| <= 127."""
    x = x.float()
    peak = torch.maximum(x.amax(-1, keepdim=True), x.amin(-1, keepdim=True).neg())
    scale = peak.clamp(min=1e-30) / 127.0  # an all-zero row quantizes to zeros
    return torch.round(x * scale.reciprocal()).to(torch.int8), scale


def int8_linear(x: Tensor, wq: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
    """(M, K) float @ the int8 weight ``wq`` (K, N) with per-column ``w_scale`` (N,), plus ``bias``: fp32 (M, N)."""
    q, s = quantize_rows(x)
    y = torch._int_mm(q, wq).float().mul_(s).mul_(w_scale)
    return y if bias is None else y.add_(bias)


class Int8Linear(nn.Module):
    """A linear map y = x W^T + b with W held in int8 (per output channel) and x quantized per token at each call."""

    def __init__(self, weight: Tensor, bias: Tensor | None, fn: LinearFn = int8_linear) -> None:
        super().__init__()
        w = weight.detach().float()
        scale = w.abs().amax(1).clamp(min=1e-30) / 127.0
        self.register_buffer("wq", torch.round(w / scale[:, None]).to(torch.int8).t().contiguous())
        self.register_buffer("w_scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        y = self.fn(x.reshape(-1, x.shape[-1]), self.wq, self.w_scale, self.bias)
        return y.to(x.dtype).view(*x.shape[:-1], y.shape[-1])


class Int8Attention(nn.Module):
    """:class:`ipt.model.body.Attention` with its projections in int8. A self-attention (the layers pass one tensor
    as query and key) holds q and k as one matmul of twice the width; a cross-attention holds them apart."""

    forward = Attention.forward

    def __init__(self, attn: Attention, fn: LinearFn, self_attention: bool) -> None:
        super().__init__()
        self.num_heads, self.dropout = attn.num_heads, attn.dropout
        wq, wk, wv = attn.in_proj_weight.detach().chunk(3, dim=0)
        if self_attention:
            self.qk = Int8Linear(torch.cat([wq, wk]), None, fn)
        else:
            self.q, self.k = Int8Linear(wq, None, fn), Int8Linear(wk, None, fn)
        self.v = Int8Linear(wv, None, fn)
        self.out_proj = Int8Linear(attn.out_proj.weight, attn.out_proj.bias, fn)

    def project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not hasattr(self, "qk"):
            return self.q(query), self.k(key), self.v(value)
        if query is key:
            q, k = self.qk(query).chunk(2, dim=-1)
        else:  # (not how IPT's layers call a self-attention; correct, at twice the matmuls)
            q, k = self.qk(query).chunk(2, dim=-1)[0], self.qk(key).chunk(2, dim=-1)[1]
        return q, k, self.v(value)


def quantize_int8(model: M, compile: bool = False) -> M:
    """A copy of ``model`` in eval mode whose Linear layers and attention projections run in int8 as described
    above (attributes named ``self_attn`` are self-attentions, as in :mod:`ipt.model.body`)."""
    fn: LinearFn = torch.compile(int8_linear, dynamic=True) if compile else int8_linear
    m = copy.deepcopy(model)
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Attention):
                setattr(parent, name, Int8Attention(child, fn, self_attention=name == "self_attn"))
            elif isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child.weight, child.bias, fn))
    return m.eval()  # (the modules put in start in training mode)
