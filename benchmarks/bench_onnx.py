"""ONNX Runtime against the project's own inference, in one run: `ipt export --format onnx` files (fp32, and
onnxruntime's dynamic int8 quantization of the linear maps, or of the convolutions too) beside torch fp32 and the
precision `ipt restore` picks on this CPU (`--precision auto`).

Speed: the paper-size IPT (random weights) per 48x48 window (batch 8) and on whole Set5 x2 images (the LR
files ``--images`` names, the default overlap tiling, batch 64). Quality: Set5 x2 Y-PSNR of a trained sr_x2 model
with each form and the overlap tiling, against the exact path (official tiling, fp32 torch), all five images.

    nice -n 19 python benchmarks/bench_onnx.py --root ../shared/benchmarks --trained MODEL.pt --images bird,head \
        --out docs/BENCHMARKS.md

The section is ``bench_onnx_<kind>[_<family-model-stepping>]``, as bench_variants names its tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import save_results  # noqa: E402
from bench_variants import (  # noqa: E402
    GFLOP_X2_WINDOW,
    _best,
    cpu_kind,
    heading,
    official_code_windows,
    section_name,
    set5,
    variant,
)

from ipt.checkpoint import load_model  # noqa: E402
from ipt.config import ModelSpec  # noqa: E402
from ipt.device import choose_precision, describe  # noqa: E402
from ipt.export import QUANTIZE, check_onnx, export_onnx, onnx_session, onnx_windows, quantize_onnx  # noqa: E402
from ipt.inference import default_overlap, quantize, restore_image  # noqa: E402
from ipt.metrics import psnr_y  # noqa: E402
from ipt.model import IPT, build_ipt  # noqa: E402

SECTION = "bench_onnx"
TORCH_OF_PRECISION = {"fp32": "fp32", "bf16": "bf16_autocast", "int8": "int8_token"}  # what `ipt restore` runs
ORT_FORMS = ("onnx_fp32", "onnx_int8", "onnx_int8_unfolded", "onnx_int8_conv")
# ipt.export.quantize_onnx's options per form (quantize_dynamic's, and its own `fold`): the linear maps only,
# weights per output channel (as `--precision int8`; what `ipt export --quantize int8` writes); and onnxruntime's
# defaults, which quantize the convolutions too (ConvInteger), weights per tensor; each after
# ipt.export.fold_constants, which the unfolded form leaves out
ORT_QUANTIZE = {
    "onnx_int8": QUANTIZE["int8"],
    "onnx_int8_unfolded": {**QUANTIZE["int8"], "fold": False},  # the graph as torch wrote it: q, k, v stay fp32
    "onnx_int8_conv": {},
}
WindowFn = Callable[[torch.Tensor], torch.Tensor]


def ort_files(model: IPT, folder: Path, forms: list[str]) -> dict[str, dict]:
    """Export ``model``'s sr_x2 windows to ONNX and quantize it: {form: {path, export_s, bytes}}."""
    out: dict[str, dict] = {}
    t0 = time.perf_counter()
    info = export_onnx(model, "sr_x2", folder / "fp32.onnx")
    out["onnx_fp32"] = {"path": folder / "fp32.onnx", "export_s": time.perf_counter() - t0}
    out["onnx_fp32"]["max_abs_vs_torch"] = info["max_abs_diff"]
    for form, options in ORT_QUANTIZE.items():
        if form not in forms:
            continue
        t0 = time.perf_counter()
        path = folder / f"{form}.onnx"
        quantize_onnx(folder / "fp32.onnx", path, **options)
        out[form] = {"path": path, "export_s": time.perf_counter() - t0}
    for v in out.values():
        v["bytes"] = v["path"].stat().st_size
    return out


def window_fns(model: IPT, files: dict[str, dict], names: list[str], threads: int) -> dict[str, WindowFn]:
    """onnxruntime's windows (`ipt restore --engine onnxruntime`'s, ipt.export.onnx_windows) or a torch variant."""
    return {
        n: onnx_windows(onnx_session(files[n]["path"], threads=threads)) if n in files else variant(n, model, "sr_x2")
        for n in names
    }


def lr_tensor(pair) -> torch.Tensor:
    return torch.from_numpy(pair.lq.copy()).permute(2, 0, 1)[None].float()


def speed(
    names: list[str],
    pairs: list,
    batch: int,
    image_batch: int,
    repeat: int,
    threads: int,
    tmp: Path,
    official: bool = False,
) -> dict:
    """Per-window and whole-image seconds of each form: ``repeat`` rounds, each timing every form once in turn (a
    batch of windows, then the images), and the best round kept, so a change of the machine's load falls on all
    forms alike rather than on the ones timed during it. ``official``: also the official code's window evaluations
    on the same images (fp32 torch, its duplicate windows, batch 64), once, after the rounds: the speed goal's
    yardstick."""
    torch.manual_seed(0)
    model = build_ipt(ModelSpec.for_tasks(["sr_x2"])).eval()
    files = ort_files(model, tmp / "paper", names)
    fns = window_fns(model, files, names, threads)
    x = torch.rand(batch, 3, 48, 48, generator=torch.Generator().manual_seed(1)) * 255
    xs = [lr_tensor(p) for p in pairs]
    res: dict = {"files": {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in files.items()}}
    window_s: dict[str, list[float]] = {n: [] for n in names}
    images_s: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        ref = model(x, "sr_x2")
        for name in names:  # warm-up, and the output check
            y = fns[name](x)
            res[name] = {"max_abs_vs_fp32_random": (quantize(y.float()) - quantize(ref)).abs().max().item()}
        for i in range(repeat):
            for name in names:
                fn = fns[name]
                window_s[name].append(_best(lambda fn=fn: fn(x), 1))
                t0 = time.perf_counter()
                for img in xs:
                    restore_image(fn, img, 2, tiling="overlap", batch=image_batch)
                images_s[name].append(time.perf_counter() - t0)
                print(
                    f"round {i + 1} {name}: {window_s[name][-1] / batch:.3f} s/window, Set5 x2 ({len(xs)} "
                    f"image(s)) {images_s[name][-1]:.1f} s, load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        if official:
            t0 = time.perf_counter()
            fp32 = variant("fp32", model, "sr_x2")
            for img in xs:
                official_code_windows(fp32, img)
            res["official_code_windows"] = time.perf_counter() - t0
            print(
                f"official code's windows: Set5 x2 ({len(xs)} image(s)) {res['official_code_windows']:.1f} s",
                flush=True,
            )
    for name in names:
        t = min(window_s[name])
        res[name] |= {
            "s_per_window": t / batch,
            "gflops": GFLOP_X2_WINDOW * batch / t,
            "images_s": min(images_s[name]),
            "images_s_rounds": images_s[name],
        }
    return res


def quality(weights: Path, names: list[str], pairs: list, image_batch: int, threads: int, tmp: Path) -> dict:
    model = load_model(str(weights), "sr_x2").eval()
    files = ort_files(model, tmp / "trained", names)
    fns = window_fns(model, files, names, threads)
    res: dict = {"weights": str(weights), "params": sum(p.numel() for p in model.parameters())}
    res["onnx_max_abs_vs_torch"] = check_onnx(files["onnx_fp32"]["path"], model, "sr_x2", batch=8)

    def mean_psnr(fn: WindowFn, tiling: str) -> float:
        vals = []
        for p in pairs:
            y = restore_image(fn, lr_tensor(p), 2, tiling=tiling, patch=model.spec.patch_size, batch=image_batch)
            vals.append(psnr_y(quantize(y)[0].permute(1, 2, 0).to(torch.uint8).numpy(), p.hr, crop_border=2))
        return sum(vals) / len(vals)

    with torch.inference_mode():
        res["exact_path_psnr"] = mean_psnr(variant("fp32", model, "sr_x2"), "official")
        for name in names:
            res[name] = mean_psnr(fns[name], "overlap") - res["exact_path_psnr"]
            print(f"trained {weights}: {name} {res[name]:+.4f} dB", flush=True)
    return res


def to_markdown(r: dict) -> str:
    hw = r["hardware"]
    default = r["default"]
    t = r.get("trained")
    base = r["speed"][default]["images_s"]
    oc = r["speed"].get("official_code_windows")
    lines = heading("ONNX Runtime against the project's inference, paper-size IPT", r, r["command"]) + [
        f"Hardware: {hw['cpu_model']} (torch CPU capability {hw['cpu_capability']}, native bf16: {hw['cpu_bf16']}, "
        f"int8 dot products: {hw['cpu_int8']}, {hw['threads']} threads; onnxruntime given the same number of "
        f"intra-op threads), torch {hw['torch']}, onnxruntime {r['onnxruntime']}; {r['date']}. `ipt restore "
        f"--precision auto` here: {r['auto']}, the **default** row. "
        + (
            "One run on a machine shared with other jobs (`nice -n 19`; "
            if r.get("niced", True)
            else "One run, not niced ("
        )
        + (
            f"1-minute load average {r['load_average_start']:.1f} at the start, {r['load_average_end']:.1f} at "
            f"the end, on {r['cores']} cores"
            if "load_average_start" in r
            else ""
        )
        + f"): every form is timed once per round, {r['repeat']} rounds, the best kept; compare rows of this table "
        "only, and read differences under ~15% as noise.",
        "",
        f"Windows: random paper-size weights, batch {r['batch']}, after a warm-up, GFLOP/s from "
        f"{GFLOP_X2_WINDOW} GFLOP per window; 'vs fp32' is the largest change of a window's output, in grey levels, "
        f"against torch fp32 (random weights). Set5 x2: the LR files of "
        + ", ".join(f"{n} ({h}x{w})" for n, (h, w) in zip(r["images"], r["image_sizes"], strict=True))
        + f", the overlap tiling "
        f"({r['overlap']}-px overlap), batch {r['image_batch']}. ONNX files: `ipt export --format onnx` (opset 18, "
        "dynamic batch), int8 by `onnxruntime.quantization.quantize_dynamic` (activations quantized per call, one "
        "scale per tensor)"
        + (
            ", each after onnxruntime's constant folding (`ipt.export.fold_constants`): onnx_int8 quantizes the "
            "MatMuls only, weights per output channel; onnx_int8_unfolded is the same without the fold, which leaves "
            "the attention's query, key and value maps in fp32 (their weights are computed in the graph); "
            if r.get("int8_folded")
            else ", without folding constants first (before 2026-12-08: the attention's query, key and value maps "
            "stayed fp32): onnx_int8 quantizes the MatMuls only, weights per output channel; "
        )
        + "onnx_int8_conv is quantize_dynamic's defaults, MatMuls and convolutions (ConvInteger), weights per tensor."
        + (
            f" ΔY-PSNR: Set5 x2 (5 images) of `{t['weights']}` ({t['params']:,} parameters, exact path "
            f"{t['exact_path_psnr']:.3f} dB), each form with the overlap tiling against the exact path (official "
            "tiling, fp32 torch); the torch fp32 row is the overlap tiling's own change."
            if t
            else ""
        ),
        "",
        "| form | s / window | GFLOP/s | vs fp32 (grey levels) | Set5 x2 (s) | each round (s) | against the default |"
        + (" vs the official code's windows |" if oc else "")
        + (" ΔY-PSNR (dB) |" if t else ""),
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if oc else "") + ("---:|" if t else ""),
    ]
    if oc:
        lines.append(
            f"| official code's windows (fp32 torch, its duplicate windows, batch 64; timed once) | | | | {oc:.1f} | | "
            f"{base / oc:.2f}x | 1.00x |" + (" |" if t else "")
        )
    for name in r["names"]:
        s = r["speed"][name]
        label = f"{name} (torch{', the default' if name == default else ''})" if name not in ORT_FORMS else name
        cells = [
            label,
            f"{s['s_per_window']:.3f}",
            f"{s['gflops']:.0f}",
            f"{s['max_abs_vs_fp32_random']:g}",
            f"{s['images_s']:.1f}",
            " / ".join(f"{v:.1f}" for v in s.get("images_s_rounds", [])),
            f"{base / s['images_s']:.2f}x",
        ]
        if oc:
            cells.append(f"{oc / s['images_s']:.1f}x")
        if t:
            cells.append(f"{t[name]:+.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    files = r["speed"]["files"]
    lines.append(
        "- Files (paper size): "
        + ", ".join(f"{k} {v['bytes'] / 1e6:.0f} MB (made in {v['export_s']:.0f} s)" for k, v in files.items())
        + f"; onnxruntime fp32 against torch fp32 on random paper-size windows: max abs "
        f"{files['onnx_fp32']['max_abs_vs_torch']:.2g} (0..255 scale)"
        + (f", on the trained model's: {t['onnx_max_abs_vs_torch']:.2g}" if t else "")
        + "."
    )
    best = min((n for n in r["names"] if n in ORT_FORMS), key=lambda n: r["speed"][n]["images_s"], default=None)
    if best:
        ours, theirs = r["speed"][best], r["speed"][default]
        a, b = ours.get("images_s_rounds", [ours["images_s"]]), theirs.get("images_s_rounds", [theirs["images_s"]])
        overlap = min(a) <= max(b) and min(b) <= max(a)
        lines.append(
            f"- Fastest ONNX Runtime form on whole images: {best}, "
            f"{'faster' if ours['images_s'] < theirs['images_s'] else 'not faster'} than the default in the best "
            f"round ({ours['images_s']:.1f} against {theirs['images_s']:.1f} s)"
            + ("; but their rounds overlap, so this run does not separate them" if overlap and len(a) > 1 else "")
            + "."
        )
        if ours["images_s"] < theirs["images_s"]:  # issue 37's rule: such a form becomes an `ipt restore` engine
            lines.append(
                "- Issue 37's rule (a form faster than the default on whole images at its quality becomes an `ipt "
                "restore` engine): `ipt restore --engine onnxruntime` runs the onnx_fp32 and onnx_int8 forms (files of "
                "`ipt export --format onnx`, `--quantize int8`) in the project's tilings; docs/export.md."
            )
    if oc:
        lines.append(speed_goal(r))
    return "\n".join(lines) + "\n"


def speed_goal(r: dict) -> str:
    """Issue 37's speed goal against this run's numbers: the fastest form on whole images over the official code's
    windows, 25x where bf16 is native, 8x on AVX2 CPUs (fp32); a sentence computed from the table."""
    oc, hw = r["speed"]["official_code_windows"], r["hardware"]
    best = min(r["names"], key=lambda n: r["speed"][n]["images_s"])
    ratio = oc / r["speed"][best]["images_s"]
    if hw["cpu_bf16"] != "none":
        goal, where = 25.0, f"native bf16 ({hw['cpu_bf16']})"
    elif hw["cpu_capability"].lower() == "avx2":
        goal, where = 8.0, "AVX2"
    else:
        return (
            f"- Fastest form on whole images: {best}, {ratio:.1f}x the official code's windows (no goal is set for "
            "this CPU kind)."
        )
    verdict = (
        "met"
        if ratio >= goal
        else f"not met: it would need {oc / goal:.1f} s against {r['speed'][best]['images_s']:.1f}"
    )
    return (
        f"- Speed goal ({goal:.0f}x the official code's windows on a CPU with {where}): the fastest form on whole "
        f"images, {best}, is {ratio:.1f}x ({oc:.1f} against {r['speed'][best]['images_s']:.1f} s): {verdict}."
    )


def _section(r: dict) -> str:
    """bench_variants' naming, ``_<n>threads`` for a run given ``--threads`` and ``_<tag>`` for one given ``--tag``."""
    return (
        section_name(r, SECTION)
        + (f"_{r['threads_asked']}threads" if r.get("threads_asked") else "")
        + (f"_{r['tag']}" if r.get("tag") else "")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("../shared/benchmarks"))
    ap.add_argument("--trained", type=Path, default=None, help="a trained sr_x2 model for the ΔY-PSNR column")
    ap.add_argument("--images", default="bird,head", help="Set5 images timed, by name (quality uses all 5)")
    ap.add_argument("--batch", type=int, default=8, help="windows per forward for the window timings")
    ap.add_argument("--image-batch", type=int, default=64, help="windows per forward for whole images")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--forms", default=",".join(ORT_FORMS), help="ONNX Runtime forms to time")
    ap.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: torch's)")
    ap.add_argument(
        "--official",
        action="store_true",
        help="also time the official code's window evaluations on the timed images (the speed goal's yardstick)",
    )
    ap.add_argument("--tag", default=None, help="a suffix for the section's name, so a run keeps another's table")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--render", type=Path, default=None, help="rewrite the section from this saved JSON; run nothing")
    args = ap.parse_args()
    if args.render:
        r = json.loads(args.render.read_text())
        save_results(args.out or Path("docs/BENCHMARKS.md"), _section(r), "cpu", to_markdown(r), r)
        return
    import onnxruntime

    forms = [f for f in args.forms.split(",") if f]
    if unknown := sorted(set(forms) - set(ORT_FORMS)):
        ap.error(f"unknown form(s) {unknown}; known: {', '.join(ORT_FORMS)}")
    if "onnx_fp32" not in forms:
        forms.insert(0, "onnx_fp32")  # the quantized forms are made from it
    auto = choose_precision("auto", torch.device("cpu"))
    default = TORCH_OF_PRECISION[auto.name]
    names = list(dict.fromkeys(["fp32", default, *forms]))
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads must be >= 1, not {args.threads}")
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    pairs = set5(args.root)
    names_of = {Path(p.name).stem.removesuffix("x2"): p for p in pairs}
    timed = [n for n in args.images.split(",") if n]
    if not timed or set(timed) - set(names_of):
        ap.error(f"--images: Set5's images are {', '.join(names_of)}, not {args.images!r}")
    r: dict = {
        "hardware": describe(),
        "kind": cpu_kind(),
        "auto": auto.label,
        "default": default,
        "names": names,
        "onnxruntime": onnxruntime.__version__,
        "threads_asked": args.threads,
        "date": time.strftime("%Y-%m-%d"),
        "batch": args.batch,
        "image_batch": args.image_batch,
        "repeat": args.repeat,
        "images": timed,
        "image_sizes": [list(names_of[n].lq.shape[:2]) for n in timed],
        "overlap": default_overlap(48),
        "niced": os.nice(0) > 0,
        "tag": args.tag,
        "int8_folded": True,  # int8 forms made after ipt.export.fold_constants (runs before 2026-12-08: without)
    }
    r["load_average_start"], r["cores"] = os.getloadavg()[0], os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as tmp:
        r["speed"] = speed(
            names,
            [names_of[n] for n in timed],
            args.batch,
            args.image_batch,
            args.repeat,
            threads,
            Path(tmp),
            official=args.official,
        )
        if args.trained:
            r["trained"] = quality(args.trained, names, pairs, args.image_batch, threads, Path(tmp))
    r["load_average_end"] = os.getloadavg()[0]
    r["command"] = (
        ("nice -n 19 " if r["niced"] else "")
        + "python benchmarks/bench_onnx.py "
        + " ".join(
            [f"--root {args.root}"]
            + ([f"--trained {args.trained}"] if args.trained else [])
            + [f"--images {args.images}", f"--batch {args.batch}", f"--repeat {args.repeat}"]
            + ([f"--threads {args.threads}"] if args.threads is not None else [])
            + ([f"--forms {args.forms}"] if args.forms != ",".join(ORT_FORMS) else [])
            + (["--official"] if args.official else [])
            + ([f"--tag {args.tag}"] if args.tag else [])
            + ([f"--out {args.out}"] if args.out else [])
        )
    )
    md = to_markdown(r)
    print(md)
    if args.out:
        save_results(args.out, _section(r), "cpu", md, r)


if __name__ == "__main__":
    main()
