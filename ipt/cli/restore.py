"""``ipt restore`` (an image or a folder with IPT weights) and ``ipt demo`` (the same with a tiny random IPT)."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from ipt.cli.commands import EXIT_PARTIAL, UserError
from ipt.cli.commands import warn as _warn
from ipt.cli.parsing import parse_args
from ipt.data.images import ImageReadError, list_images, read_image, write_png
from ipt.device import ENGINES, PRECISIONS
from ipt.errors import IPTError
from ipt.inference import TILINGS


def _pairs(inp: Path, out: Path) -> list[tuple[Path, Path]]:
    """(input, output) per image. Outputs are PNG; an output named without a suffix (or ending in /) is a folder."""
    if inp.is_dir():
        if out.exists() and not out.is_dir():
            raise UserError(f"{out}: output must be a folder when the input {inp} is a folder")
        src, dst = inp.resolve(), out.resolve()
        if dst == src or src in dst.parents:
            raise UserError(f"{out}: the output folder is the input folder {inp} or inside it; choose another")
        files = list_images(inp)
        if not files:
            raise UserError(f"{inp}: no images found (looked for .png, .jpg, .jpeg, .bmp, .tif, .webp)")
        pairs = [(f, out / f.relative_to(inp).with_suffix(".png")) for f in files]
        seen: dict[Path, Path] = {}
        for f, o in pairs:
            if o in seen:
                raise UserError(f"{seen[o]} and {f} would both be written to {o}; rename one of them")
            seen[o] = f
        return pairs
    if not inp.exists():
        raise UserError(f"{inp}: no such file or folder")
    folder = out.is_dir() or str(out).endswith("/") or (not out.suffix and not out.exists())
    target = out / f"{inp.stem}.png" if folder else out
    if target.suffix.lower() != ".png":
        raise UserError(f"{out}: outputs are PNG (lossless, as the official evaluation); name it .png or a folder")
    if target.resolve() == inp.resolve():
        raise UserError(f"{inp}: output would overwrite the input")
    return [(inp, target)]


def _check_restore_flags(args: argparse.Namespace) -> None:
    if args.batch < 1:
        raise UserError(f"--batch must be >= 1, not {args.batch}")
    if args.num_heads < 1:
        raise UserError(f"--num-heads must be >= 1, not {args.num_heads}")
    if args.overlap is not None and args.overlap < 0:
        raise UserError(f"--overlap must be >= 0, not {args.overlap}")


def _restore_all(restorer, pairs: list[tuple[Path, Path]], progress: bool) -> list[tuple[Path, str]]:
    from tqdm import tqdm

    failed: list[tuple[Path, str]] = []
    for src, dst in tqdm(pairs, desc="restore", unit="img", disable=not progress or len(pairs) == 1):
        try:
            img, notes = read_image(src)
            for n in notes:
                _warn(f"{src}: {n}")
            out = restorer(img)
        except (ImageReadError, ValueError) as e:  # ValueError: this image does not fit the tiling, say
            why = str(e) if isinstance(e, ImageReadError) else f"{src}: {e}"
            failed.append((src, why))
            if len(pairs) == 1:
                raise UserError(why) from None
            continue
        try:
            write_png(dst, out)
        except OSError as e:  # every later write would fail the same way; what was written stays
            where = f": {e.filename}" if e.filename and str(e.filename) != str(dst) else ""
            raise UserError(f"{dst}: cannot write ({e.strerror or e}{where})") from None
    return failed


RECORD = "ipt-restore.json"  # what a folder run writes beside its outputs: how they were made


def _open(args: argparse.Namespace):
    from ipt.restore import open_restorer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            restorer = open_restorer(
                args.weights,
                args.task,
                tiling=args.tiling,
                overlap=args.overlap,
                batch=args.batch,
                device=args.device,
                precision=args.precision,
                num_heads=args.num_heads,
                tracking_uri=args.tracking_uri,
                engine=args.engine,
            )
        except (ValueError, RuntimeError) as e:  # a device that is not there, an overlap the window cannot take
            raise UserError(str(e).splitlines()[0] if isinstance(e, IPTError) else f"{args.weights}: {e}") from None
    for w in caught:  # one `warning:` line each, like the image notes
        _warn(str(w.message))
    for note in restorer.notes:
        _warn(note)
    return restorer


def _check_record(out: Path) -> Path:
    """The folder run's record file; an existing file of that name that is not an earlier run's is refused."""
    import json

    record = out / RECORD
    if record.exists():
        try:
            ours = json.loads(record.read_text()).get("command") == "ipt restore"
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise UserError(f"{record}: exists and was not written by `ipt restore`; move it or choose another folder")
    return record


def _write_record(record: Path, args: argparse.Namespace, restorer, pairs, failed) -> None:

    from ipt.device import describe
    from ipt.fileio import file_sha256, write_json
    from ipt.modeluri import MODEL_URI_PREFIX

    bad = {str(src) for src, _ in failed}
    weights = str(args.weights)
    info = {
        "command": "ipt restore",
        "weights": weights,
        "weights_sha256": None if weights.startswith(MODEL_URI_PREFIX) else file_sha256(weights),
        "engine": args.engine,
        **restorer.describe(),
        "hardware": describe(),
        "inputs": str(args.input),
        "outputs": [str(dst.relative_to(record.parent)) for src, dst in pairs if str(src) not in bad],
        "failed": [{"input": str(src), "reason": why} for src, why in failed],
    }
    write_json(record, info, indent=1)


def cmd_restore(args: argparse.Namespace) -> int:
    _check_restore_flags(args)
    pairs = _pairs(Path(args.input), Path(args.output))
    record = _check_record(Path(args.output)) if Path(args.input).is_dir() else None
    restorer = _open(args)
    args.task = restorer.task
    t0 = time.perf_counter()
    failed = _restore_all(restorer, pairs, progress=not args.quiet)
    done = len(pairs) - len(failed)
    how = restorer.label if args.engine == "onnxruntime" else restorer.precision_info.label
    if record is not None:
        _write_record(record, args, restorer, pairs, failed)
    print(
        f"restored {done}/{len(pairs)} image(s) for {args.task} ({args.tiling} tiling, {how}) in "
        f"{time.perf_counter() - t0:.1f}s -> {args.output}" + (f" (how: {record})" if record is not None else ""),
        file=sys.stderr,
    )
    for _src, why in failed:
        print(f"failed: {why}", file=sys.stderr)
    return EXIT_PARTIAL if failed else 0


def add_restore(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("restore", help="restore an image or a folder of images with IPT weights")
    p.add_argument("input", help="an image file or a folder of images (PNG/JPEG/BMP/TIFF/WebP)")
    p.add_argument("output", help="output PNG file, or a folder (mirrors the input tree, .png names)")
    p.add_argument(
        "--weights",
        required=True,
        help="official IPT_*.pt, a bare state dict, a project checkpoint, or models:/NAME@ALIAS; with --engine "
        "onnxruntime, an .onnx file of `ipt export --format onnx`",
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="torch",
        help="what runs the windows: torch (the exact path in fp32), or onnxruntime (CPU; an .onnx file, fp32 or "
        "int8 as exported; not bit-exact: docs/export.md)",
    )
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for models:/ weights")
    p.add_argument(
        "--task",
        default=None,
        help="sr_x2, sr_x3, sr_x4, denoise_s30, denoise_s50, derain, ... (optional for a "
        "single-task model that names its task)",
    )
    p.add_argument("--tiling", choices=TILINGS, default="overlap", help="'official' reproduces forward_chop exactly")
    p.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="least overlap in LR pixels of neighbouring windows, default tiling (default: window/4, 12)",
    )
    p.add_argument("--batch", type=int, default=64, help="windows per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: fp32 with --tiling official (the exact path); else bf16 where the hardware runs it natively, "
        "else int8 linear maps on a CPU with int8 dot products (AVX512-VNNI), else fp32 (the summary line says which)",
    )
    p.add_argument("--num-heads", type=int, default=12, help="attention heads of an official-layout file (not stored)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_restore)
    return p


def cmd_demo(args: argparse.Namespace) -> int:
    """Restore sample images with a tiny *random* IPT, through the same files and commands a user would use."""
    import numpy as np
    import torch

    import corruptions
    from ipt.config import ModelSpec
    from ipt.data.images import synthetic_image
    from ipt.model import build_ipt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    spec = ModelSpec.for_tasks(["sr_x2"], n_feats=16, num_layers=1, num_heads=4)
    weights = out / "tiny_random_sr_x2.pt"
    torch.save(build_ipt(spec).state_dict(), weights)  # a bare state dict in the official key layout
    hr = synthetic_image(96, 128, seed=1)
    x = torch.from_numpy(hr).permute(2, 0, 1)[None].float() / 255
    lr = corruptions.apply("bicubic_down", x, generator=torch.Generator().manual_seed(0), scale=2)
    lr8 = (lr[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    write_png(out / "input" / "testcard_x2.png", lr8)
    write_png(out / "testcard_hr.png", np.ascontiguousarray(hr))
    print("demo: weights are RANDOM (tiny IPT, 16 features, 1 layer): outputs show the pipeline, not quality.")
    for tiling in TILINGS:
        argv = [
            "restore",
            str(out / "input"),
            str(out / tiling),
            "--weights",
            str(weights),
            "--task",
            "sr_x2",
            "--tiling",
            tiling,
            "--quiet",
        ]
        print("demo: ipt " + " ".join(argv))
        rc = cmd_restore(parse_args(argv))
        if rc:
            return rc
    print(f"demo: outputs in {out}/overlap and {out}/official")
    return 0


def add_demo(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo", help="restore a sample image with a tiny random-weight IPT (a smoke run of `ipt restore`)"
    )
    p.add_argument("--out", default="outputs/demo")
    p.set_defaults(func=cmd_demo)
    return p


PARSERS = {"restore": add_restore, "demo": add_demo}
