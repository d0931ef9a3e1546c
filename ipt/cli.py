"""The ``ipt`` command: one subcommand per pipeline stage (``python -m ipt.cli <stage>`` in dvc.yaml and flows).

Errors the user can fix are one line on stderr naming the file and the problem, with exit code 2; a folder run
that skipped bad files exits 1 after reporting them.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from ipt.checkpoint import CheckpointError
from ipt.data.images import ImageReadError, list_images, read_image, write_png
from ipt.device import PRECISIONS
from ipt.inference import TILINGS

EXIT_USAGE, EXIT_PARTIAL = 2, 1


class UserError(Exception):
    """A problem with the user's input, reported as one line."""


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------ restore


def _pairs(inp: Path, out: Path) -> list[tuple[Path, Path]]:
    if inp.is_dir():
        if out.exists() and not out.is_dir():
            raise UserError(f"{out}: output must be a folder when the input {inp} is a folder")
        files = list_images(inp)
        if not files:
            raise UserError(f"{inp}: no images found (looked for .png, .jpg, .jpeg, .bmp, .tif, .webp)")
        return [(f, out / f.relative_to(inp).with_suffix(".png")) for f in files]
    if not inp.exists():
        raise UserError(f"{inp}: no such file or folder")
    target = out / f"{inp.stem}.png" if out.is_dir() or str(out).endswith("/") else out
    if target.resolve() == inp.resolve():
        raise UserError(f"{inp}: output would overwrite the input")
    return [(inp, target)]


def _restore_all(restorer, pairs: list[tuple[Path, Path]], progress: bool) -> list[tuple[Path, str]]:
    from tqdm import tqdm

    failed: list[tuple[Path, str]] = []
    for src, dst in tqdm(pairs, desc="restore", unit="img", disable=not progress or len(pairs) == 1):
        try:
            img, notes = read_image(src)
            for n in notes:
                _warn(f"{src}: {n}")
            write_png(dst, restorer(img))
        except ImageReadError as e:
            failed.append((src, str(e)))
            if len(pairs) == 1:
                raise UserError(str(e)) from None
    return failed


def cmd_restore(args: argparse.Namespace) -> int:
    from ipt.checkpoint import load_model
    from ipt.restore import Restorer

    pairs = _pairs(Path(args.input), Path(args.output))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        model = load_model(args.weights, args.task, num_heads=args.num_heads)
    restorer = Restorer(
        model,
        args.task,
        tiling=args.tiling,
        overlap=args.overlap,
        batch=args.batch,
        device=args.device,
        precision=args.precision,
    )
    t0 = time.perf_counter()
    failed = _restore_all(restorer, pairs, progress=not args.quiet)
    done = len(pairs) - len(failed)
    print(
        f"restored {done}/{len(pairs)} image(s) for {args.task} ({args.tiling} tiling, {restorer.precision_used}) "
        f"in {time.perf_counter() - t0:.1f}s -> {args.output}",
        file=sys.stderr,
    )
    for _src, why in failed:
        print(f"failed: {why}", file=sys.stderr)
    return EXIT_PARTIAL if failed else 0


def add_restore(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="restore an image or a folder of images with IPT weights")
    p.add_argument("input", help="an image file or a folder of images (PNG/JPEG/BMP/TIFF/WebP)")
    p.add_argument("output", help="output PNG file, or a folder (mirrors the input tree, .png names)")
    p.add_argument("--weights", required=True, help="official IPT_*.pt, a bare state dict, or a project checkpoint")
    p.add_argument("--task", required=True, help="sr_x2, sr_x3, sr_x4, denoise_s30, denoise_s50, derain, ...")
    p.add_argument("--tiling", choices=TILINGS, default="overlap", help="'official' reproduces forward_chop exactly")
    p.add_argument("--overlap", type=int, default=12, help="overlap in LR pixels for the default tiling")
    p.add_argument("--batch", type=int, default=64, help="windows per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="auto picks bf16 only on fast-bf16 hardware")
    p.add_argument("--num-heads", type=int, default=12, help="attention heads of an official-layout file (not stored)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_restore)


# ------------------------------------------------------------------------------------------------ demo (make run)


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
        rc = main(argv)
        if rc:
            return rc
    print(f"demo: outputs in {out}/overlap and {out}/official")
    return 0


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="restore a sample image with a tiny random IPT (what `make run` does for now)")
    p.add_argument("--out", default="outputs/demo")
    p.set_defaults(func=cmd_demo)


# ------------------------------------------------------------------------------------------------ entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_restore, add_demo):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, CheckpointError, ImageReadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyError as e:  # unknown task names carry their own explanation
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
