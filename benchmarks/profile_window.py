"""Where the time of one paper-size IPT window batch goes at inference (fp32 and bf16 autocast, the CPU or CUDA).

bench_variants.py reports each variant's time per window against the measured matmul peak of its dtype; this
script says what the rest is: one forward of a batch of 48x48 sr_x2 windows (random weights) profiled, its top-level
op time grouped by kind (matmul, attention, convolution, copies/casts, reductions/softmax/norms, elementwise), beside
each kind's share of the FLOPs (attention: QK^T and AV of the 36 attention layers; matmul: every Linear;
convolution: head and tail).

    python benchmarks/profile_window.py --out docs/BENCHMARKS.md          # section profile_window
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import save_results  # noqa: E402
from profile_train import breakdown  # noqa: E402

from ipt.config import ModelSpec  # noqa: E402
from ipt.device import cpu_id, describe  # noqa: E402
from ipt.model import build_ipt  # noqa: E402

SECTION = "profile_window"


def flops_by_kind(model, spec: ModelSpec, device: str) -> dict[str, float]:
    """GFLOP of one x2 window of ``model`` by kind, counted (IPT_REFERENCE 3.5's total: 66.65)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, spec.patch_size, spec.patch_size, device=device) * 255
    with FlopCounterMode(display=False) as fc:  # with autograd on: its module tracker needs it
        model(x, "sr_x2")
    counts = fc.get_flop_counts()["Global"]
    by = {"matmul": 0.0, "convolution": 0.0, "attention": 0.0}
    for op, n in counts.items():
        name = str(op)
        kind = "convolution" if "conv" in name else "attention" if "attention" in name else "matmul"
        by[kind] += n / 1e9
    if by["attention"] == 0.0:  # the CPU's flash kernel is not counted by FlopCounterMode: QK^T and AV, per layer
        n, e, layers = (spec.patch_size // spec.patch_dim) ** 2, spec.patch_dim**2 * spec.n_feats, 3 * spec.num_layers
        by["attention"] = layers * 2 * (2 * n * n * e) / 1e9
    return by


def attention_kernels(batch: int, device: str, repeat: int = 5) -> dict[str, dict[str, float]]:
    """ms per attention call at the paper model's shape (batch x 12 heads x 256 tokens x 48 dims) for the fused
    kernel (``scaled_dot_product_attention``) and the explicit one (scaled ``baddbmm``, softmax in the input's
    dtype, ``bmm``), in fp32 and bf16: what the attention share above could become."""
    return {
        str(dt).removeprefix("torch."): _attention_ms(batch, dt, device, repeat)
        for dt in (torch.float32, torch.bfloat16)
    }


def _attention_ms(batch: int, dtype: torch.dtype, device: str, repeat: int) -> dict[str, float]:
    import torch.nn.functional as F

    q, k, v = (torch.randn(batch * 12, 256, 48, dtype=dtype, device=device) for _ in range(3))
    zero = torch.zeros((), dtype=dtype, device=device)
    shape = (batch, 12, 256, 48)

    def fused() -> torch.Tensor:
        return F.scaled_dot_product_attention(q.view(shape), k.view(shape), v.view(shape))

    def explicit() -> torch.Tensor:
        s = torch.baddbmm(zero, q, k.transpose(1, 2), beta=0, alpha=48**-0.5)
        return torch.bmm(torch.softmax(s, -1), v)

    row = {}
    with torch.inference_mode():
        for name, fn in (("fused", fused), ("explicit", explicit)):
            fn()
            row[name] = min(_timed(fn, device) for _ in range(repeat)) * 1e3
    return row


def explicit_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """``scaled_dot_product_attention`` as scaled ``baddbmm``, softmax and ``bmm`` (no dropout)."""
    b, h, n, d = q.shape
    q3, k3, v3 = (t.reshape(b * h, t.shape[2], d) for t in (q, k, v))
    s = torch.baddbmm(q3.new_zeros(()), q3, k3.transpose(1, 2), beta=0, alpha=d**-0.5)
    return torch.bmm(torch.softmax(s, -1), v3).view(b, h, n, d)


class _ExplicitF:
    """``torch.nn.functional`` with the explicit attention in place of the fused one (for ipt.model.body only)."""

    scaled_dot_product_attention = staticmethod(explicit_sdpa)

    def __getattr__(self, name: str):
        import torch.nn.functional as F

        return getattr(F, name)


def ab_explicit_attention(model, x: torch.Tensor, rounds: int = 4) -> dict[str, list[float]]:
    """s per window of a bf16 forward with the model's own (fused) attention and with the explicit one, interleaved
    ``rounds`` times so that the machine's drift hits both alike."""
    import ipt.model.body as body

    kind = torch.device(x.device).type
    saved = body.F
    out: dict[str, list[float]] = {"fused": [], "explicit": []}
    try:
        with torch.inference_mode(), torch.autocast(kind, torch.bfloat16):
            for _ in range(rounds):
                for name, f in (("fused", saved), ("explicit", _ExplicitF())):
                    body.F = f
                    model(x, "sr_x2")
                    out[name].append(_timed(lambda: model(x, "sr_x2"), str(x.device)) / x.shape[0])
    finally:
        body.F = saved
    return out


def _timed(fn, device: str) -> float:
    from bench_inference import sync

    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--ab", action="store_true", help="only the A/B of whole bf16 windows: fused vs explicit attention")
    a = ap.parse_args()
    torch.manual_seed(0)
    spec = ModelSpec.for_tasks(["sr_x2"])
    model = build_ipt(spec).eval().to(a.device)
    x = torch.rand(a.batch, 3, 48, 48, device=a.device) * 255
    if a.ab:
        ab = {"hardware": describe(), "batch": a.batch, "date": time.strftime("%Y-%m-%d")}
        ab["ab_s_per_window"] = ab_explicit_attention(model, x)
        md = ab_markdown(ab, a)
        print(md)
        if a.out:
            save_results(a.out, SECTION + "_ab" + (f"_{cpu_id()}" if cpu_id() else ""), a.device, md, ab)
        return
    res: dict = {"hardware": describe(), "device": a.device, "batch": a.batch, "profile": {}}
    res["gflop_by_kind"] = flops_by_kind(model, spec, a.device)
    for precision in ("fp32", "bf16"):

        def step(precision: str = precision) -> None:
            kind = torch.device(a.device).type
            with torch.inference_mode(), torch.autocast(kind, torch.bfloat16, enabled=precision == "bf16"):
                model(x, "sr_x2")

        by_kind, top, wall = breakdown(step, a.device)
        res["profile"][precision] = {"wall_ms": wall, "by_kind_ms": by_kind, "top": top}
        print(precision, f"{wall / a.batch:.0f} ms/window", {k: round(v) for k, v in by_kind.items()}, flush=True)
    res["attention_ms"] = attention_kernels(a.batch, a.device)
    print("attention", res["attention_ms"], flush=True)
    res["date"] = time.strftime("%Y-%m-%d")
    md = to_markdown(res, a)
    print(md)
    if a.out:
        save_results(a.out, SECTION + (f"_{cpu_id()}" if cpu_id() else ""), a.device, md, res)


def to_markdown(res: dict, a: argparse.Namespace) -> str:
    hw = res["hardware"]
    gf = res["gflop_by_kind"]
    total_gf = sum(gf.values())
    lines = [
        "## Where a paper-size window's inference time goes",
        "",
        f"`python benchmarks/profile_window.py --device {a.device} --batch {a.batch}"
        + (f" --out {a.out}" if a.out else "")
        + "` on "
        f"{hw['cpu_model']} (x86 family-model-stepping {hw.get('cpu_id') or 'n/a'}, {hw['cpu_capability']}, native "
        f"bf16: {hw['cpu_bf16']}, {hw['threads']} threads), torch {hw['torch']}; {res['date']}. One forward of "
        f"{a.batch} random-weight sr_x2 windows, profiled after a warm-up; top-level op time by kind. FLOP shares "
        f"from the architecture ({total_gf:.2f} GFLOP per window).",
        "",
        "| kind | FLOP share | fp32 time share | bf16 time share |",
        "|---|---:|---:|---:|",
    ]
    prof = res["profile"]

    def per_s(p: str) -> float:
        return total_gf / (prof[p]["wall_ms"] / a.batch / 1e3)

    kinds = sorted(
        set().union(*(p["by_kind_ms"] for p in prof.values())), key=lambda k: -prof["bf16"]["by_kind_ms"].get(k, 0)
    )
    for k in kinds:
        share = {p: prof[p]["by_kind_ms"].get(k, 0.0) / sum(prof[p]["by_kind_ms"].values()) for p in prof}
        fl = f"{gf[k] / total_gf:.1%}" if k in gf else "0"
        lines.append(f"| {k} | {fl} | {share['fp32']:.1%} | {share['bf16']:.1%} |")
    lines += [
        "",
        " ".join(f"{p}: {prof[p]['wall_ms'] / a.batch:.0f} ms per window ({per_s(p):.0f} GFLOP/s)." for p in prof),
        "",
        "`matmul` is the time inside `aten::linear` and friends, autocast's casts of their inputs and weights "
        "included; `attention` is `scaled_dot_product_attention` (the CPU flash kernel at head dim 48).",
        "",
        *[f"Top {p} ops: " + "; ".join(f"`{n[:48]}` {ms:.0f} ms" for n, ms in prof[p]["top"][:8]) + "." for p in prof],
        "",
        f"One attention call at this shape ({a.batch} x 12 heads x 256 tokens x 48 dims), best of 5, ms: "
        + "; ".join(
            f"{dt}: fused `scaled_dot_product_attention` {row['fused']:.1f}, explicit baddbmm + softmax + bmm "
            f"{row['explicit']:.1f}"
            for dt, row in res.get("attention_ms", {}).items()
        )
        + ".",
        "",
    ]
    return "\n".join(lines) + "\n"


def ab_markdown(r: dict, a: argparse.Namespace) -> str:
    hw, ab = r["hardware"], r["ab_s_per_window"]

    def cells(name: str) -> str:
        return ", ".join(f"{t:.4f}" for t in ab[name]) + f" (best {min(ab[name]):.4f})"

    return (
        "## Whole bf16 windows: the fused attention kernel against the explicit one\n\n"
        f"`python benchmarks/profile_window.py --ab --device {a.device} --batch {a.batch}"
        + (f" --out {a.out}" if a.out else "")
        + f"` on {hw['cpu_model']} (x86 family-model-stepping {hw.get('cpu_id') or 'n/a'}, native bf16: "
        f"{hw['cpu_bf16']}), {r['date']}. The paper-size model under bf16 autocast, {a.batch} windows per forward, "
        f"with `scaled_dot_product_attention` and with `explicit_sdpa` (baddbmm, softmax, bmm), interleaved "
        f"{len(ab['fused'])} times; s per window.\n\n"
        f"| attention | s per window, each round |\n|---|---|\n| fused | {cells('fused')} |\n"
        f"| explicit | {cells('explicit')} |\n"
    )


if __name__ == "__main__":
    main()
