"""``ipt export``: one task of a model as ONNX (a window model, any batch) or in the official layout (spandrel)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ipt.cli.commands import UserError, warn


def cmd_export(args: argparse.Namespace) -> int:
    from ipt import export

    out = Path(args.out)
    suffixes = {"onnx": (".onnx",), "official": (".pt", ".pth")}[args.format]
    if out.suffix.lower() not in suffixes:
        raise UserError(f"{out}: a --format {args.format} file is named *{' or *'.join(suffixes)}")
    if out.is_dir():
        raise UserError(f"{out}: is a folder; name the file to write")
    if args.quantize and args.format != "onnx":
        raise UserError(f"--quantize {args.quantize}: is for --format onnx; the official layout is fp32")
    model, task = export.load_for_export(args.model, args.task, num_heads=args.num_heads)
    if args.format == "official":
        for note in export.export_official(model, task, out, source=args.model):
            warn(f"{out}: {note}")
        print(f"export: {out} ({task}, official layout: IPT_*.pt's keys, for the official code and spandrel)")
        return 0
    info = export.export_onnx(model, task, out, quantize=args.quantize)
    p, s = model.spec.patch_size, model.spec.scale_of(task)
    check = f"onnxruntime vs torch on {info['check_windows']} random windows: max abs diff {info['max_abs_diff']:.2g}"
    if args.quantize:
        check = (
            f"{info['ipt.quantized']}; {info['bytes'] / 1e6:.3g} MB against fp32's {info['fp32_bytes'] / 1e6:.3g} MB; "
            f"{check} for the fp32 graph, {info['max_abs_diff_quantized']:.2g} for the {args.quantize} one (not exact)"
        )
    print(
        f"export: {out} ({task}, ONNX opset {info['opset']}: {export.ONNX_INPUT} (batch, 3, {p}, {p}) -> "
        f"{export.ONNX_OUTPUT} (batch, 3, {s * p}, {s * p}); {check}; `ipt restore --engine onnxruntime` runs it)"
    )
    return 0


def add_export(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="write one task of a model as ONNX or in the official layout (spandrel)")
    p.add_argument("model", help="weights: a project checkpoint, an official .pt, or models:/ipt-<task>@champion")
    p.add_argument("out", help="the file to write (.onnx for onnx, .pt for official)")
    p.add_argument("--format", choices=("onnx", "official"), required=True)
    p.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="onnx: write the MatMuls in int8 (weights per output channel, activations per call; onnxruntime's "
        "dynamic quantization), about half the size and faster on CPUs; not exact (docs/export.md)",
    )
    p.add_argument("--task", default=None, help="the task to export (needed for a multi-task model)")
    p.add_argument("--num-heads", type=int, default=12, help="attention heads of an official file (not recorded)")
    p.set_defaults(func=cmd_export)
    return p


PARSERS = {"export": add_export}
