"""Inference variants on this CPU kind: speed at paper size, Y-PSNR change on trained weights.

For each variant (fp32, channels-last, torch.compile, int8 dynamic quantization of the Linear layers, int8 with
per-token scales (ipt.model.int8, `--precision int8`; eager and compiled), bf16 autocast, bf16 weights, bf16
autocast + compile): the paper-size IPT's time per 48x48 window (random weights, batch 8) against the measured matmul
peak of the dtype it computes in, whether a window's output changes with the other windows of its batch, the
whole-image Set5 x2 time with the default overlap tiling, and the change of Set5 x2 Y-PSNR against the exact path
(official tiling, fp32) on each trained model given.
The exact path itself is timed beside the official code's window count (it recomputes the top/left strips).

    python benchmarks/bench_variants.py --root ../shared/benchmarks --trained runs/finetune/sr_x2/model.pt \
        --out docs/BENCHMARKS.md

The section is named after the CPU kind (``bench_variants_avx2``, ``bench_variants_avx512_bf16``,
``bench_variants_amx``) and the x86 family-model-stepping (``_25-17-1``), so every CPU met keeps its own table.

``--isa AVX2`` (oneDNN's ISA names) runs the script again with oneDNN, ATen's kernels, Inductor and MKL capped at
that ISA: the kernels an older CPU kind would run, on this CPU's cores, caches and clock (not that CPU; its section
is ``bench_variants_<isa>_on_<kind>_<id>``). int8_dynamic (fbgemm picks its kernels from the CPU's own flags) is
refused under a cap; the bf16 variants are left out of the default list where the cap leaves no native bf16, and the
int8 ones where it leaves no int8 dot products (oneDNN's int8 matmul is not exact there: tests/test_int8.py).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import save_results  # noqa: E402

from ipt.checkpoint import load_model  # noqa: E402
from ipt.config import ModelSpec  # noqa: E402
from ipt.data.testsets import load_benchmark  # noqa: E402
from ipt.device import (  # noqa: E402
    ONEDNN_ISA,
    choose_precision,
    cpu_flags,
    cpu_has_exact_int8,
    cpu_has_fast_bf16,
    describe,
    isa_cap,
    usable_cpu_flags,
)
from ipt.inference import (  # noqa: E402
    default_overlap,
    forward_chop_official,
    quantize,
    restore_image,
    run_windows,
    window_starts,
)
from ipt.metrics import psnr_y  # noqa: E402
from ipt.model import build_ipt  # noqa: E402
from ipt.model.int8 import quantize_int8  # noqa: E402

SECTION = "bench_variants"
GFLOP_X2_WINDOW = 66.65  # paper-size IPT, one 48x48 x2 window (IPT_REFERENCE 3.5)
VARIANTS = (
    "fp32",
    "channels_last",
    "compile",
    "int8_dynamic",
    "int8_token",
    "int8_token_compile",
    "bf16_autocast",
    "bf16_weights",
    "bf16_compile",
)
BF16 = {"bf16_autocast", "bf16_weights", "bf16_compile"}
INT8 = {"int8_token", "int8_token_compile"}  # every linear map in int8 ('% peak' against the int8 matmul's)
STATIC_COMPILE = {"compile", "bf16_compile"}  # compiled for one batch shape (a new shape recompiles, ~50 s)
WindowFn = Callable[[torch.Tensor], torch.Tensor]


UNCAPPED = {"int8_dynamic"}  # fbgemm: its kernels follow the CPU's flags whatever the ISA cap


def own_capability() -> str:
    """The widest vector kernels this CPU runs uncapped: ``avx512`` or ``avx2`` (ATen's names)."""
    return "avx512" if "avx512f" in cpu_flags() else "avx2"


def cpu_kind() -> str:
    """amx, avx512_bf16 or torch's capability name (avx2, ...): the key of this machine's table; under an ISA cap
    ``<isa>_on_<kind>`` (``avx2_on_amx``), so a capped run never passes for a CPU of the capped kind."""
    flags = cpu_flags()
    kind = "amx" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else ""
    cap = isa_cap()
    if cap:
        return f"{cap.lower()}_on_{kind or own_capability()}"
    return kind or torch.backends.cpu.get_cpu_capability().lower()


def isa_env(isa: str) -> dict[str, str]:
    """The environment capping oneDNN (``ONEDNN_MAX_CPU_ISA``), ATen's and Inductor's vector kernels
    (``ATEN_CPU_CAPABILITY``) and MKL's (``MKL_ENABLE_INSTRUCTIONS``) at ``isa``, oneDNN's name (AVX2 and above)."""
    mask = ONEDNN_ISA[isa]
    if mask & ONEDNN_ISA["AVX2"] != ONEDNN_ISA["AVX2"]:
        raise ValueError(f"--isa {isa}: below AVX2, which torch's kernels need at least")
    wide = mask & ONEDNN_ISA["AVX512_CORE"] == ONEDNN_ISA["AVX512_CORE"]
    return {
        "ONEDNN_MAX_CPU_ISA": isa,
        "ATEN_CPU_CAPABILITY": "avx512" if wide else "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512" if wide else "AVX2",
    }


def section_name(r: dict, prefix: str = SECTION) -> str:
    """``bench_variants_<kind>[_<family-model-stepping>]``: one table per CPU, since one kind spans CPUs whose bf16
    peaks differ 1.5x (tables before 2026-12-04 did not record the id and keep the bare kind)."""
    cid = r["hardware"].get("cpu_id")
    return f"{prefix}_{r['kind']}" + (f"_{cid}" if cid else "")


def heading(title: str, r: dict, command: str) -> list[str]:
    """A table's first lines: its title with the CPU kind (and x86 id), and the command that made it."""
    cid = r["hardware"].get("cpu_id")
    return [
        f"## {title}, CPU kind `{r['kind']}`" + (f", x86 family-model-stepping {cid}" if cid else ""),
        "",
        f"Command: `{command}`",
        "",
    ]


def variant(name: str, model: nn.Module, task: str) -> WindowFn:
    """A window function (N, 3, P, P) float -> (N, 3, P*s, P*s) float computing ``model`` as ``name`` says."""
    if name == "fp32":
        return lambda w: model(w, task)
    if name == "channels_last":
        m = copy.deepcopy(model).to(memory_format=torch.channels_last)
        return lambda w: m(w.contiguous(memory_format=torch.channels_last), task).contiguous()
    if name == "int8_dynamic":  # (under bf16 autocast its quantized Linear refuses bf16 inputs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
            from torch.ao.quantization import quantize_dynamic

            q = quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
        return lambda w: q(w, task)
    if name in INT8:
        m = quantize_int8(model, compile=name == "int8_token_compile")
        return lambda w: m(w, task)
    if name == "bf16_weights":
        m = copy.deepcopy(model).to(torch.bfloat16)
        return lambda w: m(w.to(torch.bfloat16), task).float()
    if name in ("compile", "bf16_compile"):
        compiled = torch.compile(model, dynamic=False)
        if name == "compile":
            return lambda w: compiled(w, task)

        def fn(w: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return compiled(w, task).float()

        return fn
    if name == "bf16_autocast":

        def fn(w: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(w, task).float()

        return fn
    raise ValueError(f"unknown variant {name!r}; known: {list(VARIANTS)}")


def matmul_peak(dtype: torch.dtype, n: int = 2048, trials: int = 3, repeat: int = 5) -> float:
    """G(FL)OP/s of an n^3 matmul in ``dtype`` on this CPU (int8: ``torch._int_mm``, int32 sums), best of ``trials``
    after a warm-up."""
    if dtype == torch.int8:
        a, b = (torch.randint(-127, 128, (n, n), dtype=torch.int8) for _ in range(2))
        mm = torch._int_mm
    else:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        mm = torch.matmul
    mm(a, b)
    return 2 * n**3 * repeat / _best(lambda: [mm(a, b) for _ in range(repeat)], trials) / 1e9


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def official_window_count(h: int, w: int, patch: int = 48) -> tuple[int, int]:
    """(distinct windows the exact path evaluates, windows the official forward_chop evaluates) for an h x w input:
    the official code runs the grid, its top/left strips again, the bottom/right strips and the corner."""
    step = patch // 4
    hp, wp = h - (h - patch) % step, w - (w - patch) % step
    nr, nc = len(range(0, hp - patch + 1, step)), len(range(0, wp - patch + 1, step))
    rows, cols = set(range(0, hp - patch + 1, step)), set(range(0, wp - patch + 1, step))
    coords = {(r, c) for r in rows for c in cols} | {(h - patch, c) for c in cols} | {(r, w - patch) for r in rows}
    coords.add((h - patch, w - patch))
    return len(coords), nr * nc + 2 * nr + 2 * nc + 1


def official_code_windows(fn: WindowFn, x: torch.Tensor, batch: int = 64, patch: int = 48) -> torch.Tensor:
    """The official forward_chop's window evaluations (its duplicates included, batched 64 as its
    ``--crop_batch_size``): the compute the official code spends on ``x``, for timing only."""
    _, n_official = official_window_count(x.shape[2], x.shape[3], patch)
    step = patch // 4
    h, w = x.shape[2:]
    rows, cols = window_starts(h, patch, patch - step), window_starts(w, patch, patch - step)
    coords = [(r, c) for r in rows for c in cols]
    coords = (coords * (n_official // len(coords) + 1))[:n_official]
    windows = torch.stack([x[0, :, r : r + patch, c : c + patch] for r, c in coords])
    return run_windows(fn, windows, batch)


def window_times(names: list[str], batch: int, repeat: int) -> dict[str, dict]:
    torch.manual_seed(0)
    model = build_ipt(ModelSpec.for_tasks(["sr_x2"])).eval()
    x = torch.rand(batch, 3, 48, 48) * 255
    out: dict[str, dict] = {}
    with torch.inference_mode():
        ref = model(x, "sr_x2")
        for name in names:
            fn = variant(name, model, "sr_x2")
            t0 = time.perf_counter()
            y = fn(x)  # warm-up (and the compile, for the compiled variants)
            first = time.perf_counter() - t0
            t = _best(lambda fn=fn: fn(x), repeat)
            diff = (quantize(y.float()) - quantize(ref)).abs()
            out[name] = {
                "s_per_window": t / batch,
                "first_call_s": first,
                "gflops": GFLOP_X2_WINDOW * batch / t,
                "max_abs_vs_fp32_random": diff.max().item(),
            }
            if name not in STATIC_COMPILE:  # the first window alone against the same window among its batch
                alone = quantize(fn(x[:1]).float())
                out[name]["batch_mates_grey_levels"] = (alone - quantize(y[:1].float())).abs().max().item()
            print(f"window {name}: {t / batch:.3f} s/window (first call {first:.1f} s)", flush=True)
            del fn
            gc.collect()
    return out


def set5_windows(overlap: int, patch: int = 48) -> int:
    """Windows the overlap tiling evaluates for Set5 x2's LR files (their sizes, H x W)."""
    sizes = ((256, 256), (144, 144), (128, 128), (140, 140), (172, 114))
    return sum(len(window_starts(h, patch, overlap)) * len(window_starts(w, patch, overlap)) for h, w in sizes)


def set5(root: Path) -> list:
    return load_benchmark(root, "Set5", "sr_x2").pairs


def row_keys(names: list[str], extra_overlap: int | None) -> list[tuple[str, str, int | None]]:
    """(row key, variant, overlap) of the whole-image rows: every variant at the default overlap, then the ones not
    compiled for one batch shape (those recompile for every new one) again at ``extra_overlap``."""
    keys = [(n, n, None) for n in names]
    if extra_overlap is not None:
        keys += [(f"{n}@{extra_overlap}", n, extra_overlap) for n in names if n not in STATIC_COMPILE]
    return keys


def whole_image_times(names: list[str], pairs: list, batch: int, extra_overlap: int | None = None) -> dict[str, float]:
    """Seconds for the whole of Set5 x2 at paper size (random weights): the exact path, the official code's window
    count, and each variant with the overlap tiling (at the default overlap, and at ``extra_overlap``)."""
    torch.manual_seed(0)
    model = build_ipt(ModelSpec.for_tasks(["sr_x2"])).eval()
    xs = [torch.from_numpy(p.lq.copy()).permute(2, 0, 1)[None].float() for p in pairs]
    res: dict[str, float] = {}
    with torch.inference_mode():
        fp32 = variant("fp32", model, "sr_x2")
        t0 = time.perf_counter()
        for x in xs:
            forward_chop_official(fp32, x, 2, batch=batch)
        res["exact_path"] = time.perf_counter() - t0
        print(f"Set5 exact path: {res['exact_path']:.1f} s", flush=True)
        t0 = time.perf_counter()
        for x in xs:
            official_code_windows(fp32, x)
        res["official_code_windows"] = time.perf_counter() - t0
        print(f"Set5 official code's windows: {res['official_code_windows']:.1f} s", flush=True)
        for key, name, overlap in row_keys(names, extra_overlap):
            fn = variant(name, model, "sr_x2")
            fn(xs[0][:, :, :48, :48])  # warm-up / compile outside the timing
            t0 = time.perf_counter()
            for x in xs:
                restore_image(fn, x, 2, overlap=overlap, batch=batch)
            res[key] = time.perf_counter() - t0
            print(f"Set5 overlap tiling {key}: {res[key]:.1f} s", flush=True)
            del fn
            gc.collect()
    return res


def trained_psnr_changes(
    weights: Path, names: list[str], pairs: list, batch: int, extra_overlap: int | None = None
) -> dict:
    """Set5 x2 Y-PSNR of the trained model ``weights``: exact path, and each variant with the overlap tiling
    (and the change against the exact path); the overlap tiling's own change is the fp32 row."""
    model = load_model(str(weights), "sr_x2").eval()
    res: dict = {"weights": str(weights), "params": sum(p.numel() for p in model.parameters())}

    def mean_psnr(fn: WindowFn, tiling: str, overlap: int | None = None) -> float:
        vals = []
        for p in pairs:
            x = torch.from_numpy(p.lq.copy()).permute(2, 0, 1)[None].float()
            y = restore_image(fn, x, 2, tiling=tiling, overlap=overlap, batch=batch)
            sr = quantize(y)[0].permute(1, 2, 0).to(torch.uint8).numpy()
            vals.append(psnr_y(sr, p.hr, crop_border=2))
        return sum(vals) / len(vals)

    with torch.inference_mode():
        res["exact_path_psnr"] = mean_psnr(variant("fp32", model, "sr_x2"), "official")
        for key, name, overlap in row_keys(names, extra_overlap):
            res[key] = mean_psnr(variant(name, model, "sr_x2"), "overlap", overlap) - res["exact_path_psnr"]
            print(f"trained {weights}: {key} {res[key]:+.4f} dB", flush=True)
    return res


def to_markdown(r: dict, command: str) -> str:
    hw = r["hardware"]
    peak32, peak16 = r["peak_gflops"]["fp32"], r["peak_gflops"]["bf16"]
    peak8 = r["peak_gflops"].get("int8")
    mates = any("batch_mates_grey_levels" in w for w in r["windows"].values())  # (not measured before 2026-12-04)
    # (runs before 2026-12-04 stored neither; their grid placement evaluated as many windows as the even one)
    overlap = r.get("overlap", 12)
    windows = r.get("set5_windows") or {str(o): set5_windows(o) for o in (overlap, r.get("extra_overlap")) if o}
    lines = heading("Inference variants, paper-size IPT", r, command) + [
        f"Hardware: {hw['cpu_model']} (torch CPU capability {hw['cpu_capability']}, native bf16"
        + (" under the cap" if hw.get("isa_cap") else "")
        + f": {hw['cpu_bf16']}, "
        f"{hw['threads']} threads), torch {hw['torch']}; {r['date']}. Measured matmul peak (2048^3): fp32 "
        f"{peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s"
        + (f", int8 {peak8:.0f} GOP/s (`torch._int_mm`)" if peak8 else "")
        + ". One run; compare rows of this table only."
        + (
            f" **ISA capped at {hw['isa_cap']}** ("
            + ", ".join(f"`{k}={v}`" for k, v in r.get("isa_env", {}).items())
            + "): the kernels a CPU of that kind runs, on this CPU's cores, caches and clock; not such a CPU."
            if hw.get("isa_cap")
            else ""
        )
        + (f" `--precision auto` here: {r['auto']}." if r.get("auto") else ""),
        "",
        f"Windows: random weights, batch {r['batch']}, best of {r['repeat']} after a warm-up; GFLOP/s from "
        f"{GFLOP_X2_WINDOW} GFLOP per window, '% peak' against the dtype the matmuls run in (int8_dynamic: fp32's, "
        "as it leaves the attention's input projections in fp32)"
        + (
            "; 'first call' is the warm-up, for a compiled variant a compile with an empty Inductor cache"
            if r.get("cold_compile")
            else ""
        )
        + (
            "; 'batch-mates': the largest change, in grey levels, of a window's output computed alone instead of "
            f"among its batch of {r['batch']} (random weights; variants compiled for one shape not checked)"
            if mates
            else ""
        )
        + ". Set5 "
        f"x2 (5 images, LR files): paper size, random weights, batch {r['image_batch']}, the overlap tiling "
        f"(default {overlap}-px overlap, {windows[str(overlap)]} windows) for every variant"
        + (
            f"; rows `name@{r['extra_overlap']}` at `--overlap {r['extra_overlap']}` "
            f"({windows[str(r['extra_overlap'])]} windows)"
            if r.get("extra_overlap") is not None
            else ""
        )
        + "; speed-up against the exact path (official tiling, fp32). Y-PSNR change: Set5 x2 on the trained "
        "model(s) below, the variant with the overlap tiling against the exact path.",
        "",
    ]
    trained = r.get("trained", [])
    head = (
        "| variant | s / window | GFLOP/s | % peak | first call (s) |"
        + (" batch-mates |" if mates else "")
        + " Set5 x2 (s) | speed-up vs exact | vs the official code's windows |"
    )
    sep = "|---|---:|---:|---:|---:|" + ("---:|" if mates else "") + "---:|---:|---:|"
    pad = " |" if mates else ""
    for t in trained:
        head += f" ΔY-PSNR, {t['label']} |"
        sep += "---:|"
    lines += [head, sep]
    exact = r["images"].get("exact_path")
    if exact is not None:
        oc = r["images"]["official_code_windows"]
        lines.append(
            f"| official code's windows (its duplicates, batch 64, fp32; windows only) | | | | |{pad} {oc:.1f} | "
            f"{exact / oc:.2f}x | 1.00x |" + " |" * len(trained)
        )
        lines.append(
            f"| exact path (official tiling, fp32) | | | | |{pad} {exact:.1f} | 1.00x | {oc / exact:.2f}x |"
            + "".join(f" 0 ({t['exact_path_psnr']:.2f} dB) |" for t in trained)
        )
    oc = r["images"].get("official_code_windows")
    for key, name, _ in row_keys(list(r["windows"]), r.get("extra_overlap")):
        peak = peak16 if name in BF16 else peak8 if name in INT8 else peak32
        img = r["images"].get(key)
        w = r["windows"][name] if key == name else None
        cells = [
            key,
            f"{w['s_per_window']:.3f}" if w else "",
            f"{w['gflops']:.0f}" if w else "",
            ("n/a" if name == "int8_dynamic" or not peak else f"{100 * w['gflops'] / peak:.0f}%") if w else "",
            f"{w['first_call_s']:.1f}" if w else "",
        ]
        if mates:
            cells.append(f"{w['batch_mates_grey_levels']:g}" if w and "batch_mates_grey_levels" in w else "")
        cells += [
            f"{img:.1f}" if img is not None else "",
            f"{exact / img:.1f}x" if img and exact else "",
            f"{oc / img:.1f}x" if img and oc else "",
        ]
        cells += [f"{t[key]:+.4f}" if key in t else "" for t in trained]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for t in trained:
        lines.append(
            f"- {t['label']}: `{t['weights']}`, {t['params']:,} parameters, exact path {t['exact_path_psnr']:.3f} dB."
        )
    if r.get("notes"):
        lines += [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("../shared/benchmarks"))
    ap.add_argument("--trained", type=Path, action="append", default=[], help="trained sr_x2 model (repeatable)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--batch", type=int, default=8, help="windows per forward for the window timings")
    ap.add_argument("--image-batch", type=int, default=64, help="windows per forward for whole images")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-images", action="store_true", help="skip the whole-image Set5 timings")
    ap.add_argument(
        "--extra-overlap", type=int, default=None, help="also time and score the uncompiled variants at this overlap"
    )
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--render", type=Path, default=None, help="rewrite the section from this saved JSON; run nothing")
    ap.add_argument("--isa", default=None, help="cap the kernels at this ISA (oneDNN's name: AVX2, AVX512_CORE_VNNI)")
    args = ap.parse_args()
    if args.isa and args.render:
        ap.error("--isa runs the benchmark under a cap; --render only rewrites a saved one (its JSON names its cap)")
    if isa_cap() and not args.isa:
        ap.error(f"oneDNN is capped at {isa_cap()} by the environment: use --isa, which caps ATen and MKL with it")
    env: dict[str, str] = {}
    if args.isa:
        isa = args.isa.upper()
        if isa not in ONEDNN_ISA:
            ap.error(f"--isa {isa}: known: {', '.join(ONEDNN_ISA)}")
        try:
            env = isa_env(isa)
        except ValueError as e:
            ap.error(str(e))
        if any(os.environ.get(k) != v for k, v in env.items()):  # the caps are read when the libraries load
            os.execve(sys.executable, sys.orig_argv, {**os.environ, **env})
        if torch.backends.cpu.get_cpu_capability().lower() != env["ATEN_CPU_CAPABILITY"]:
            ap.error(f"--isa {isa}: torch runs {torch.backends.cpu.get_cpu_capability()} kernels, not the capped ones")
        if usable_cpu_flags() == cpu_flags() and env["ATEN_CPU_CAPABILITY"] == own_capability():
            ap.error(f"--isa {isa}: at or above this CPU's own instructions, so it caps nothing; run without it")
    # a compiled variant's first call is a cold compile: Inductor's on-disk cache would hide it on a second run
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_variants_inductor_")
    if args.render:
        r = json.loads(args.render.read_text())
        save_results(args.out or Path("docs/BENCHMARKS.md"), section_name(r), "cpu", to_markdown(r, r["command"]), r)
        return
    if args.extra_overlap is not None and not 0 <= args.extra_overlap < 48:
        ap.error(f"--extra-overlap must be in [0, 48), not {args.extra_overlap}")
    default_names = args.variants == ",".join(VARIANTS)
    names = [n for n in args.variants.split(",") if n]
    for n in names:
        if n not in VARIANTS:
            ap.error(f"unknown variant {n!r}; known: {', '.join(VARIANTS)}")
    if args.isa:
        if default_names:  # (bf16 emulated: ~10x slower than fp32, as bench_inference measured on AVX2)
            names = [
                n
                for n in names
                if n not in UNCAPPED
                and (cpu_has_fast_bf16() or n not in BF16)
                and (cpu_has_exact_int8() or n not in INT8)
            ]
        elif set(names) & UNCAPPED:
            ap.error(f"--isa {args.isa}: {', '.join(sorted(set(names) & UNCAPPED))} ignores the cap (fbgemm)")
    if set(names) & INT8 and not cpu_has_exact_int8():
        ap.error("the int8 variants need int8 dot products (VNNI or AMX): oneDNN's int8 matmul is not exact without")
    r: dict = {
        "hardware": describe(),
        "kind": cpu_kind(),
        "auto": choose_precision("auto", torch.device("cpu")).label,
        "date": time.strftime("%Y-%m-%d"),
        "batch": args.batch,
        "image_batch": args.image_batch,
        "repeat": args.repeat,
        "cold_compile": True,
        "extra_overlap": args.extra_overlap,
        "overlap": default_overlap(48),
        "set5_windows": {str(o): set5_windows(o) for o in {default_overlap(48), args.extra_overlap} if o is not None},
        "peak_gflops": {
            "fp32": matmul_peak(torch.float32),
            "bf16": matmul_peak(torch.bfloat16, n=2048 if cpu_has_fast_bf16() else 512, trials=1, repeat=1),
            "int8": matmul_peak(torch.int8),
        },
    }
    if env:  # (a cap set in the environment alone was refused above)
        r["isa_env"] = env
    print(f"{r['kind']}: matmul peak {r['peak_gflops']}", flush=True)
    r["windows"] = window_times(names, args.batch, args.repeat)
    pairs = set5(args.root)
    r["images"] = {} if args.no_images else whole_image_times(names, pairs, args.image_batch, args.extra_overlap)
    r["trained"] = []
    for i, w in enumerate(args.trained):
        t = trained_psnr_changes(w, names, pairs, args.image_batch, args.extra_overlap)
        t["label"] = f"trained #{i + 1}"
        r["trained"].append(t)
    command = "python benchmarks/bench_variants.py " + " ".join(
        [f"--root {args.root}"]
        + [f"--trained {w}" for w in args.trained]
        + ([f"--variants {args.variants}"] if not default_names else [])
        + [f"--batch {args.batch}", f"--repeat {args.repeat}"]
        + (["--no-images"] if args.no_images else [])
        + ([f"--extra-overlap {args.extra_overlap}"] if args.extra_overlap is not None else [])
        + ([f"--isa {args.isa.upper()}"] if args.isa else [])
        + ([f"--out {args.out}"] if args.out else [])
    )
    r["command"] = command
    md = to_markdown(r, command)
    print(md)
    if args.out:
        save_results(args.out, section_name(r), "cpu", md, r)


if __name__ == "__main__":
    main()
