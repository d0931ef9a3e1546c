"""The ``ipt`` command: one subcommand per pipeline stage (``python -m ipt.cli <stage>`` in dvc.yaml and flows).

Errors the user can fix are one line on stderr naming the file and the problem, with exit code 2; a folder run
that skipped bad files exits 1 after reporting them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from ipt.checkpoint import CheckpointError
from ipt.data.images import ImageReadError, list_images, read_image, write_png
from ipt.device import PRECISIONS
from ipt.inference import TILINGS
from ipt.refine.cli import PARAMS_KEYS as REFINE_KEYS
from ipt.train.cli import TRAIN_KEYS

EXIT_USAGE, EXIT_PARTIAL = 2, 1


class UserError(Exception):
    """A problem with the user's input, reported as one line."""


def params_source(args: argparse.Namespace) -> str:
    """The params file a command reads: ``--params``, else ``$IPT_PARAMS``, else ``params.yaml`` ('none': no file)."""
    return getattr(args, "params", None) or os.environ.get("IPT_PARAMS") or "params.yaml"


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------ restore


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


def cmd_restore(args: argparse.Namespace) -> int:
    from ipt.checkpoint import load_model
    from ipt.restore import Restorer, refined_restorer

    _check_restore_flags(args)
    pairs = _pairs(Path(args.input), Path(args.output))
    weights = args.weights
    if weights.startswith("models:/"):
        from ipt.tracking import TrackingError, resolve_model_uri

        try:
            weights = resolve_model_uri(weights, args.tracking_uri)
        except TrackingError as e:
            raise UserError(str(e)) from None
    options = {"tiling": args.tiling, "overlap": args.overlap, "batch": args.batch, "device": args.device}
    try:  # a PTG-RM refiner checkpoint (ipt/refine): its base, then the refiner
        restorer = refined_restorer(
            weights,
            args.task,
            tracking_uri=args.tracking_uri,
            num_heads=args.num_heads,
            precision=args.precision,
            **options,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    if restorer is not None:
        args.task = restorer.task
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = load_model(weights, args.task, num_heads=args.num_heads)
        for w in caught:  # one `warning:` line each, like the image notes
            _warn(str(w.message))
        if args.task is None:
            if len(model.spec.task_names) != 1:
                raise UserError(f"{args.weights}: holds tasks {list(model.spec.task_names)}; choose one with --task")
            args.task = model.spec.task_names[0]
        try:
            restorer = Restorer(model, args.task, precision=args.precision, **options)
        except (ValueError, RuntimeError) as e:  # a device that is not there, an overlap the window cannot take
            raise UserError(f"{args.weights}: {str(e).splitlines()[0]}") from None
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
    p.add_argument(
        "--weights",
        required=True,
        help="official IPT_*.pt, a bare state dict, a project checkpoint, or models:/NAME@ALIAS",
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
        "--overlap", type=int, default=None, help="overlap in LR pixels for the default tiling (default: window/4, 12)"
    )
    p.add_argument("--batch", type=int, default=64, help="windows per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="auto picks bf16 only on fast-bf16 hardware")
    p.add_argument("--num-heads", type=int, default=12, help="attention heads of an official-layout file (not stored)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_restore)


# ------------------------------------------------------------------------------------------------ benchmark


def _tracker(args: argparse.Namespace):
    """(tracker, owned): ``--mlflow-run-id`` (or $IPT_MLFLOW_RUN_ID, set by the flows), else a new run in
    ``ipt-benchmark`` (unless $IPT_TRACKING=off); see :func:`ipt.tracking.stage_run`."""
    from ipt.tracking import stage_run

    label = "baseline" if args.model == "baseline" else Path(str(args.model)).parent.name or str(args.model)
    tags = {"ipt.stage": "benchmark", "ipt.task": args.task, "ipt.model": str(args.model)}
    return stage_run(
        "ipt-benchmark", f"{args.task} {label}", run_id=args.mlflow_run_id, tracking_uri=args.tracking_uri, tags=tags
    )


def _benchmark_corruption(args: argparse.Namespace) -> dict | None:
    """None for the paper's tasks; for any other task its ``corrupt.tasks`` entry in the params file (an error
    naming the file and the task when there is none): the benchmark applies it to clean images."""
    import yaml

    from ipt.data.benchmarks import BenchmarkDataError, task_kind

    try:
        task_kind(args.task)
        return None
    except BenchmarkDataError:
        pass
    source = params_source(args)
    tasks: dict = {}
    if source != "none" and Path(source).is_file():
        try:
            tasks = ((yaml.safe_load(Path(source).read_text()) or {}).get("corrupt") or {}).get("tasks") or {}
        except (OSError, yaml.YAMLError, AttributeError) as e:
            raise UserError(f"{source}: cannot read corrupt.tasks ({str(e).splitlines()[0]})") from None
    if not isinstance(tasks, dict) or args.task not in tasks:
        where = f"{source} corrupt.tasks" if source != "none" else "params file (ignored: --params none)"
        known = sorted(tasks) if isinstance(tasks, dict) else []
        raise UserError(
            f"task {args.task!r} is not a paper task (sr_xN, denoise_sNN, derain) and has no corruption entry in "
            f"{where}; known there: {known}"
        )
    return tasks[args.task]


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Score a model (or the bicubic / identity baseline) on benchmark sets; JSON to --out, a table to stdout."""
    from ipt.benchmark import comparison_image, log_report, make_restore_fn, markdown_table, run_benchmark, write_json
    from ipt.data.benchmarks import load_benchmark, resolve_datasets
    from ipt.device import describe

    root = Path(args.root)
    args.out = args.out.format(task=args.task)
    for target in (args.out, args.markdown):  # before minutes of evaluation, not after
        if target:
            _check_writable(Path(target))
    requested = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else None
    corruption = _benchmark_corruption(args)  # None for sr_xN / denoise_sNN / derain
    try:
        names, notes = resolve_datasets(root, args.task, requested, corruption)
        restore_fn, info = make_restore_fn(
            args.model,
            args.task,
            tiling=args.tiling,
            precision=args.precision,
            device=args.device,
            batch=args.batch,
            num_heads=args.num_heads,
            tracking_uri=args.tracking_uri,
            corruption=corruption,
        )
        sets = [
            load_benchmark(root, n, args.task, seed=args.seed, limit=args.limit or None, corruption=corruption)
            for n in names
        ]
    except ValueError as e:  # BenchmarkDataError, BenchmarkModelError, CheckpointError, a bad device or precision
        raise UserError(str(e)) from None
    try:
        tracker, owned = _tracker(args)
    except ValueError as e:  # TrackingError: a run id this store does not have
        raise UserError(str(e)) from None
    for note in notes + [n for s in sets for n in s.notes]:
        print(f"note: {note}", file=sys.stderr)

    def progress(dataset: str, r: dict) -> None:
        if not args.quiet:
            print(f"{dataset}/{r['name']}: {r['psnr_y']:.2f} dB, SSIM {r['ssim_y']:.4f}", file=sys.stderr)

    samples: dict = {}

    def keep_first(dataset: str, pair, output) -> None:
        if tracker is not None and dataset not in samples:
            samples[dataset] = comparison_image(pair.lq, output, pair.hr)

    try:
        report = run_benchmark(
            restore_fn,
            sets,
            task=args.task,
            model=args.model,
            protocol=args.protocol,
            info=info,
            hardware=describe(),
            on_result=progress,
            on_output=keep_first,
            corruption=corruption,
            seed=args.seed,
            limit=args.limit or None,
        )
        write_json(args.out, report)
        if tracker is not None:
            log_report(tracker, report, samples, args.out)
        table = markdown_table(report)
        if args.markdown:
            Path(args.markdown).write_text(table)
    except BaseException as e:  # the MLflow run this command owns ends FAILED, never stays RUNNING
        if owned:
            tracker.finish("FAILED")
        if isinstance(e, ValueError):  # e.g. an image smaller than the official tiling's 48-px window
            raise UserError(str(e)) from None
        if isinstance(e, OSError):
            raise UserError(f"{e.filename or args.out}: cannot write ({e.strerror or e})") from None
        raise
    if owned:
        tracker.finish()
    print(table, end="")
    return 0


def _check_writable(path: Path) -> None:
    """Create ``path``'s folder and a scratch file in it, or a one-line error naming ``path``."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".check"):
            pass
    except OSError as e:
        raise UserError(f"{path}: cannot write there ({e.strerror or e})") from None


def add_benchmark(sub: argparse._SubParsersAction) -> None:
    from ipt.data.benchmarks import DEFAULT_NOISE_SEED

    p = sub.add_parser("benchmark", help="score a model or a baseline on benchmark sets (Y-PSNR, SSIM, RGB-PSNR)")
    p.add_argument(
        "--task",
        required=True,
        help="sr_x2, sr_x3, sr_x4, denoise_s30, denoise_s50, derain, or a task of corrupt.tasks in params.yaml "
        "(its corruption applied to Set5/Set14)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="'bicubic' (SR), 'identity' (x1), 'baseline' (either), a weights file, models:/...",
    )
    p.add_argument("--root", default=None, help="folder holding the sets (Set5/, Set14/, B100/, CBSD68/, ...)")
    p.add_argument("--datasets", default=None, help="comma-separated names (default: the task's standard sets present)")
    p.add_argument("--protocol", choices=("ipt", "matlab"), default="ipt", help="see docs/benchmark_protocol.md")
    p.add_argument("--tiling", choices=TILINGS, default="official", help="'official' reproduces forward_chop exactly")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="fp32 is the reference path")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--batch", type=int, default=64, help="windows per forward pass")
    p.add_argument("--num-heads", type=int, default=12, help="attention heads of an official-layout file (not stored)")
    p.add_argument(
        "--seed", type=int, default=DEFAULT_NOISE_SEED, help="seed of the denoising noise (and custom task) inputs"
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N images of each set (by name); 0: all")
    p.add_argument("--out", default=None, help="JSON report, written atomically; '{task}' is replaced by the task")
    p.add_argument(
        "--params",
        default=None,
        help="params file whose 'benchmark' section gives defaults and whose corrupt.tasks define custom tasks "
        "(default: ./params.yaml if present; 'none' to ignore it)",
    )
    p.add_argument("--markdown", default=None, help="also write the markdown table to this file")
    p.add_argument("--mlflow-run-id", default=None, help="log metrics and sample images to this existing MLflow run")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or "
        "sqlite:///./mlflow.db); also used to resolve models:/ URIs",
    )
    p.add_argument("--quiet", action="store_true", help="no per-image lines on stderr")
    p.set_defaults(func=cmd_benchmark, required_from_params=("model", "root", "out"))


# ------------------------------------------------------------------------------------------------ data stages


def _data_progress(args: argparse.Namespace, desc: str):
    from tqdm import tqdm

    bar = None

    def progress(done: int, total: int, result) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, initial=done, desc=desc, unit="shard", disable=args.quiet)
        else:
            bar.update(1)
        if done == total:
            bar.close()

    return progress


def _run_plan(args: argparse.Namespace, plan, desc: str) -> dict:
    from ipt.data import stages

    return stages.execute(
        plan,
        executor=args.executor,
        workers=args.workers,
        address=args.dask_address,
        progress=_data_progress(args, desc),
    )


def _report(kind: str, folder: str, manifest: dict, quiet: bool) -> None:
    skipped = manifest["skipped"]
    print(
        f"{kind}: {manifest['samples']} samples in {len(manifest['shards'])} shard(s) at {folder}"
        + (f"; skipped {len(skipped)} file(s), listed in {folder}/manifest.json" if skipped else "")
    )
    if not quiet:
        for s in skipped[:10]:
            _warn(f"skipped {s['path']}: {s['reason']}")
        if len(skipped) > 10:
            _warn(f"... and {len(skipped) - 10} more")


def _data_errors():
    from ipt.data.shards import ShardError
    from ipt.data.sources import SourceError
    from ipt.data.storage import StorageError

    return (ShardError, SourceError, StorageError, ValueError)


def cmd_shard(args: argparse.Namespace) -> int:
    from ipt.data import stages

    try:
        cfg = stages.ShardConfig(
            source=args.source,
            out=args.out,
            patch_size=args.patch_size,
            max_scale=args.max_scale,
            crops=args.crops,
            images_per_shard=args.images_per_shard,
            png_level=args.png_level,
            seed=args.seed,
        )
        plan = stages.plan_shard(cfg)
        manifest = _run_plan(args, plan, "shard")
    except _data_errors() as e:
        raise UserError(str(e)) from None
    _report("shard", cfg.out, manifest, args.quiet)
    return 0


def _add_fanout_flags(p: argparse.ArgumentParser) -> None:
    from ipt.data.executors import EXECUTORS

    p.add_argument("--executor", choices=EXECUTORS, default="process", help="how shards fan out (default: process)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (process, local dask)")
    p.add_argument("--dask-address", default=None, help="scheduler of a running Dask cluster, tcp://host:8786")
    p.add_argument("--params", default=None, help="params file (default ./params.yaml; 'none' ignores it)")
    p.add_argument("--quiet", action="store_true")


def add_shard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shard", help="cut clean crops of a source into WebDataset shards (DVC stage `shard`)")
    p.add_argument("--source", help="image folder, ILSVRC2012 train tarball, s3:// URL, or 'skimage'")
    p.add_argument("--out", help="output folder (local or s3://)")
    p.add_argument("--patch-size", type=int, default=48, help="LQ patch size of training (crop = patch x max scale)")
    p.add_argument("--max-scale", type=int, default=4, help="largest SR scale any task will need")
    p.add_argument("--crops", type=int, default=2, help="random crops per image")
    p.add_argument("--images-per-shard", type=int, default=256)
    p.add_argument("--png-level", type=int, default=0, help="zlib level of the stored PNGs (0: stored, fastest)")
    p.add_argument("--seed", type=int, default=20210507)
    _add_fanout_flags(p)
    p.set_defaults(func=cmd_shard, required_from_params=("source", "out"))


def cmd_corrupt(args: argparse.Namespace) -> int:
    from ipt.data import stages

    source = params_source(args)
    params_file = None if source == "none" else source
    try:
        name, spec = stages.task_spec(getattr(args, "tasks", None), args.task, params_file)
        cfg = stages.CorruptConfig(
            task=args.task,
            corruption=name,
            params=spec,
            clean=args.clean,
            out=args.out,
            patch_size=args.patch_size,
            png_level=args.png_level,
            seed=args.seed,
            params_file=params_file,
        )
        plan = stages.plan_corrupt(cfg)
        manifest = _run_plan(args, plan, f"corrupt {args.task}")
    except KeyError as e:
        raise UserError(f"task {args.task}: {e.args[0] if e.args else e}") from None
    except _data_errors() as e:
        raise UserError(str(e)) from None
    _report(f"corrupt {args.task}", cfg.folder, manifest, args.quiet)
    return 0


def add_corrupt(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("corrupt", help="make (LQ, HR) pair shards of one task (DVC stage `corrupt@TASK`)")
    p.add_argument("--task", required=True, help="a key of corrupt.tasks in params.yaml")
    p.add_argument("--clean", help="clean shard folder (output of `ipt shard`)")
    p.add_argument("--out", help="output folder; '{task}' is replaced by the task name")
    p.add_argument("--patch-size", type=int, default=48, help="LQ patch size (HR is patch x scale)")
    p.add_argument("--png-level", type=int, default=0)
    p.add_argument("--seed", type=int, default=20210507)
    _add_fanout_flags(p)
    p.set_defaults(func=cmd_corrupt, required_from_params=("clean", "out"))


# ------------------------------------------------------------------------------------------------ register


def cmd_register(args: argparse.Namespace) -> int:
    import json

    from ipt import registry, tracking

    try:
        report = registry.read_report(args.report) if args.report else None
    except registry.RegistryError as e:
        raise UserError(str(e)) from None
    if not Path(args.checkpoint).is_file():
        raise UserError(f"{args.checkpoint}: no such checkpoint")
    name = args.name or (f"ipt-{args.task}" if args.task else "ipt-pretrained")
    try:
        # The version belongs to the run that trained the checkpoint when this store has it (its folder says which,
        # see ipt.tracking.write_run_file); else to --mlflow-run-id, else to a new run in --experiment.
        made_by = (
            None if args.mlflow_run_id else tracking.run_from_file(Path(args.checkpoint).parent, args.tracking_uri)
        )
        if made_by is not None:
            tracker, owned = made_by, False
        else:
            tracker, owned = tracking.stage_run(
                args.experiment,
                f"register {name}",
                run_id=args.mlflow_run_id,
                tracking_uri=args.tracking_uri,
                tags={"ipt.stage": "register"} | ({"ipt.task": args.task} if args.task else {}),
                required=True,  # registering needs a run, $IPT_TRACKING=off or not
            )
        result = registry.register(
            args.checkpoint,
            task=args.task,
            name=args.name,
            report=report,
            report_path=args.report,
            metric=args.metric,
            dataset=args.dataset,
            allow_new_key=args.allow_new_key,
            tracker=tracker,
        )
    except (registry.RegistryError, tracking.TrackingError) as e:
        raise UserError(str(e)) from None
    if owned:
        tracker.finish()
    for note in result["warnings"]:
        _warn(note)
    print(f"register: {result['uri']} ({'champion' if result['promoted'] else 'not champion'}: {result['reason']})")
    if args.out:
        out = Path(args.out.format(task=args.task or "pretrained"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def add_register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("register", help="register a checkpoint in MLflow; move 'champion' only on a better score")
    p.add_argument("--checkpoint", required=True, help="project checkpoint (or official .pt)")
    p.add_argument("--task", default=None, help="register this task's single-task model as ipt-<task>")
    p.add_argument("--name", default=None, help="registered model name (default ipt-<task> or ipt-pretrained)")
    p.add_argument("--report", default=None, help="`ipt benchmark` JSON that scores this checkpoint")
    p.add_argument("--metric", default="psnr_y")
    p.add_argument("--dataset", default=None, help="score on this dataset only (default: mean over the report's)")
    p.add_argument(
        "--allow-new-key",
        action="store_true",
        help="a score under another score key (protocol, sets, images, seed) may take the champion (no rescoring)",
    )
    p.add_argument("--experiment", default="ipt-register")
    p.add_argument("--mlflow-run-id", default=None, help="log into this run instead of a new one")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--out", default=None, help="write the decision as JSON ('{task}' is replaced)")
    p.set_defaults(func=cmd_register)


# ------------------------------------------------------------------------------------------------ launch


def cmd_launch(args: argparse.Namespace) -> int:
    from ipt import launch

    stage_args = list(args.stage_args)
    if stage_args[:1] == ["--"]:
        stage_args = stage_args[1:]
    if args.params and "--params" not in stage_args:  # the stage reads the same params file
        stage_args = ["--params", args.params, *stage_args]
    try:
        cfg = launch.from_args(args)
    except launch.LaunchError as e:
        raise UserError(str(e)) from None
    if cfg.distributed and not args.dry_run:  # a user error once, before torchrun starts ranks that would each hit it
        from ipt.train.cli import preflight
        from ipt.train.errors import TrainingError

        try:
            preflight(args.stage, parse_args([args.stage, *stage_args]))
        except TrainingError as e:
            raise UserError(str(e)) from None
    try:
        return launch.run(args.stage, stage_args, cfg, dry_run=args.dry_run)
    except launch.LaunchError as e:
        raise UserError(str(e)) from None


def add_launch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "launch",
        help="run pretrain/finetune as one process or under torchrun (params.yaml `launch`)",
        description="ipt launch pretrain -- --steps 10: one process when nproc_per_node x nnodes is 1, else torchrun.",
    )
    p.add_argument("stage", choices=("pretrain", "finetune"))
    p.add_argument("stage_args", nargs=argparse.REMAINDER, help="flags of the stage, after `--`")
    p.add_argument("--nproc-per-node", type=int, default=1, help="processes (GPUs) per node")
    p.add_argument("--nnodes", type=int, default=1, help="nodes; >1 needs --rdzv-endpoint")
    p.add_argument(
        "--rdzv-endpoint", default=None, help="host:port of the c10d rendezvous (one node, reachable by all)"
    )
    p.add_argument("--rdzv-id", default="ipt", help="rendezvous id (the same on every node of one job)")
    p.add_argument("--max-restarts", type=int, default=0, help="torchrun restarts of a failed worker group")
    p.add_argument("--dry-run", action="store_true", help="print the command line instead of running it")
    p.add_argument("--params", default=None, help="params file (default params.yaml)")
    p.set_defaults(func=cmd_launch)


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
    p = sub.add_parser(
        "demo", help="restore a sample image with a tiny random-weight IPT (a smoke run of `ipt restore`)"
    )
    p.add_argument("--out", default="outputs/demo")
    p.set_defaults(func=cmd_demo)


# ------------------------------------------------------------------------------------------------ entry point


# Subcommands whose flags default from a params.yaml section (flags given on the command line win). DVC stages call
# `python -m ipt.cli <stage> --task ${key}`; the section is declared as the stage's params, so DVC reruns on edits.
PARAMS_SECTIONS: dict[str, tuple[str, ...]] = {
    "benchmark": ("model", "root", "datasets", "protocol", "tiling", "precision", "device", "batch", "limit", "out"),
    "shard": (
        "source",
        "out",
        "max_scale",
        "crops",
        "images_per_shard",
        "png_level",
        "executor",
        "workers",
        "dask_address",
        "seed",
        "patch_size",
    ),
    "corrupt": ("tasks", "clean", "out", "png_level", "executor", "workers", "dask_address", "seed", "patch_size"),
    "launch": ("nproc_per_node", "nnodes", "rdzv_endpoint", "rdzv_id", "max_restarts"),
}
_TRAIN_KEYS = (*(k for k in TRAIN_KEYS if k != "resume"), "patch_size")  # --resume stays a flag
PARAMS_SECTIONS["pretrain"] = (*_TRAIN_KEYS, "tasks", "task_weights", "model_size", "model_config", "n_feats")
PARAMS_SECTIONS["pretrain"] += ("num_layers", "num_heads", "image_residual")
PARAMS_SECTIONS["finetune"] = (*_TRAIN_KEYS, "init", "init_num_heads")
PARAMS_SECTIONS["refine"] = REFINE_KEYS  # ipt/refine/cli.py
# Top-level params.yaml keys that a section inherits when it does not set them itself.
PARAMS_GLOBALS = ("seed", "patch_size")
# Keys that left a section: (section, key) -> where they are now (named in the error for an old params file).
PARAMS_MOVED = {("refine", "tasks"): "the top-level key 'refine_tasks' (outside the section)"}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="ipt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    from ipt.refine.cli import add_subcommands as add_refine
    from ipt.train.cli import add_subcommands as add_training

    for add in (add_restore, add_benchmark, add_shard, add_corrupt, add_training, add_register, add_launch, add_demo):
        add(sub)
    add_refine(sub)
    return parser, dict(sub.choices)


def params_section(path: Path, command: str) -> dict:
    """The strict ``command`` section of a params file: unknown keys are an error naming the file."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read params ({str(e).splitlines()[0]})") from None
    section = data.get(command) or {}
    if not isinstance(section, dict):
        raise UserError(f"{path}: section '{command}' must be a mapping")
    unknown = sorted(set(section) - set(PARAMS_SECTIONS[command]))
    moved = [f"'{command}.{k}' is now {PARAMS_MOVED[command, k]}" for k in unknown if (command, k) in PARAMS_MOVED]
    if moved:
        raise UserError(f"{path}: {'; '.join(moved)}")
    if unknown:
        raise UserError(f"{path}: unknown key(s) {unknown} in '{command}'; known: {list(PARAMS_SECTIONS[command])}")
    section = dict(section)
    if command == "pretrain" and "tasks" not in section and isinstance((data.get("corrupt") or {}).get("tasks"), dict):
        section["tasks"] = list(data["corrupt"]["tasks"])  # the task list lives once, in corrupt.tasks
    for key in PARAMS_GLOBALS:
        if key in PARAMS_SECTIONS[command] and key not in section and data.get(key) is not None:
            section[key] = data[key]
    # lists go through the flags' own comma-separated parsers (argparse applies `type` to string defaults)
    return {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in section.items() if v is not None}


def launch_argv(argv: list[str], launch: argparse.ArgumentParser) -> list[str]:
    """``ipt launch STAGE --nnodes 2 --dry-run -- ...``: launch's own flags may follow the stage as well as precede it.

    The stage's arguments are an argparse remainder, which would swallow them; they move before the stage here.
    Tokens after ``--`` always belong to the stage; other tokens after the stage go to it too (``--`` is added).
    """
    if not argv or argv[0] != "launch":
        return argv
    arity = {o: a.nargs != 0 for a in launch._actions for o in a.option_strings}
    cut = argv.index("--") if "--" in argv else len(argv)
    head, tail = argv[1:cut], argv[cut + 1 :]
    front: list[str] = []  # launch's options (before the stage: any option, so argparse reports unknown ones)
    rest: list[str] = []  # the stage's tokens that came before `--`
    stage, i = None, 0
    while i < len(head):
        tok = head[i]
        name = tok.split("=", 1)[0]
        if name in arity or (stage is None and tok.startswith("-")):
            takes = arity.get(name, False) and "=" not in tok  # its value is the next token
            front += head[i : i + 1 + takes]
            i += 1 + takes
            continue
        if stage is None:
            stage = tok
        else:
            rest.append(tok)
        i += 1
    if stage is None:
        return argv
    return ["launch", *front, stage, "--", *rest, *tail]


def _check_param_values(path: Path, command: str, section: dict, sub: argparse.ArgumentParser) -> None:
    """Each value goes through its flag's type and choices here, so a bad one is reported against the params file
    and key (argparse would blame a flag the user never typed)."""
    actions = {a.dest: a for a in sub._actions}
    for key, value in section.items():
        action = actions.get(key)
        if action is None:
            continue
        if isinstance(value, bool) and action.type not in (None, bool) and action.nargs != 0:
            raise UserError(f"{path}: {command}.{key}: expected a value for --{key.replace('_', '-')}, not {value}")
        try:
            if action.type is not None and isinstance(value, (str, int, float)):
                value = action.type(str(value))  # 1.5 for an integer flag is an error, as on the command line
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise UserError(f"{path}: {command}.{key}: invalid value {value!r} ({e})") from None
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise UserError(f"{path}: {command}.{key}: {value!r} is not one of {choices}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser, subs = build_parser()
    argv = launch_argv(list(sys.argv[1:] if argv is None else argv), subs["launch"])
    args = parser.parse_args(argv)
    source = params_source(args)
    if args.command in PARAMS_SECTIONS and source != "none":
        path = Path(source)
        explicit = source != "params.yaml" or getattr(args, "params", None) is not None
        if explicit or path.is_file():
            section = params_section(path, args.command)
            _check_param_values(path, args.command, section, subs[args.command])
            subs[args.command].set_defaults(**section)
            args = parser.parse_args(argv)
    for name in getattr(args, "required_from_params", ()):
        if getattr(args, name) is None:
            raise UserError(f"--{name} is required (or '{args.command}.{name}' in params.yaml)")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
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
