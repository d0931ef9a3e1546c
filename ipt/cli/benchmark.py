"""``ipt benchmark``: score a model or a baseline on the paper's test sets; a JSON report, a table, MLflow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ipt.cli.commands import UserError, warn
from ipt.cli.params import params_source
from ipt.device import PRECISIONS
from ipt.inference import TILINGS


def _tracker(args: argparse.Namespace):
    """(tracker, owned): ``--mlflow-run-id`` (or $IPT_MLFLOW_RUN_ID, set by the flows), else a new run in
    ``ipt-benchmark`` (unless $IPT_TRACKING=off); see :func:`ipt.tracking.stage_run`."""
    from ipt.tracking import stage_run

    label = (
        f"{args.model} ({'bicubic' if args.task.startswith('sr_x') else 'input'})"
        if args.model == "baseline"
        else str(args.model)
    )
    tags = {"ipt.stage": "benchmark", "ipt.task": args.task, "ipt.model": str(args.model)}
    if args.inputs and args.inputs != args.task:
        tags["ipt.inputs"] = args.inputs
    return stage_run(
        "ipt-benchmark", f"{args.task}: {label}", run_id=args.mlflow_run_id, tracking_uri=args.tracking_uri, tags=tags
    )


def _corrupt_tasks(args: argparse.Namespace) -> tuple[str, dict]:
    """The params file (its path, or ``none``) and its ``corrupt.tasks``, read once for the model's task and
    ``--inputs``' task alike."""
    import yaml

    source = params_source(args)
    tasks: dict = {}
    if source != "none" and Path(source).is_file():
        try:
            tasks = ((yaml.safe_load(Path(source).read_text()) or {}).get("corrupt") or {}).get("tasks") or {}
        except (OSError, yaml.YAMLError, AttributeError) as e:
            raise UserError(f"{source}: cannot read corrupt.tasks ({str(e).splitlines()[0]})") from None
    return source, tasks if isinstance(tasks, dict) else {}


def _benchmark_corruption(source: str, tasks: dict, task: str) -> dict | None:
    """None for the paper's tasks (their names say how the test inputs are made); for any other task its
    ``corrupt.tasks`` entry in the params file ``source`` (an error naming the file and the task when there is
    none), which the benchmark applies to clean images. Both go through :mod:`ipt.tasks` (the scale from the
    corruption itself)."""
    from ipt.tasks import TaskError, from_entry, inputs_corruption, paper_kind

    if paper_kind(task) is not None and task in tasks:  # its entry must make what the name says (the name rules)
        from_entry(task, tasks[task], source, trial=False)
    where = f"{source} corrupt.tasks" if source != "none" else "params file (ignored: --params none)"
    try:
        return inputs_corruption(task, tasks, where)
    except TaskError as e:
        raise UserError(str(e)) from None


def _inputs(
    inputs: str | None, task: str, corruption: dict | None, source: str, tasks: dict
) -> tuple[str, dict | None]:
    """The task whose test inputs are scored (``--inputs``; the model's own task by default) and its corruption;
    refused when its scale is not the model task's (the tail upsamples by that)."""
    from ipt.data.testsets import input_scale

    inputs = inputs or task
    if inputs == task:
        return task, corruption
    other = _benchmark_corruption(source, tasks, inputs)
    theirs, ours = input_scale(inputs, other), input_scale(task, corruption)
    if theirs != ours:
        raise UserError(f"--inputs {inputs}: its inputs are at x{theirs}, the {task} model restores x{ours}")
    return inputs, other


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Score a model (or the bicubic / identity baseline) on benchmark sets; a table to stdout, JSON to --out."""
    from ipt.config import ConfigError
    from ipt.data.testsets import load_benchmark, resolve_datasets
    from ipt.device import describe
    from ipt.score_report import comparison_image, markdown_table
    from ipt.scoring import BenchmarkConfig, make_restore_fn, run_benchmark

    try:  # flags and the params file's section, checked once
        cfg = BenchmarkConfig.from_values(vars(args))
    except ConfigError as e:
        raise UserError(str(e)) from None
    root = Path(cfg.root)
    if args.out:
        args.out = args.out.format(task=cfg.task)
    if args.scores:
        args.scores = args.scores.format(task=cfg.task)
    for target in (args.out, args.scores, args.markdown):  # before minutes of evaluation, not after
        if target:
            _check_writable(Path(target))
    source, tasks = _corrupt_tasks(args)
    corruption = _benchmark_corruption(source, tasks, cfg.task)  # None for sr_xN / denoise_sNN / derain
    inputs, made_by = _inputs(args.inputs, cfg.task, corruption, source, tasks)  # another task's: generalisation
    names, notes = resolve_datasets(root, inputs, list(cfg.datasets) if cfg.datasets else None, made_by)
    restore_fn, info = make_restore_fn(
        cfg.model,
        cfg.task,
        tiling=cfg.tiling,
        precision=cfg.precision,
        device=cfg.device,
        batch=cfg.batch,
        num_heads=cfg.num_heads,
        tracking_uri=args.tracking_uri,
        corruption=corruption,
        prior_probe=args.prior_probe,
    )
    limit = cfg.limit
    sets = [load_benchmark(root, n, inputs, seed=cfg.seed, limit=limit, corruption=made_by) for n in names]
    tracker, owned = _tracker(args)
    for note in notes + [n for s in sets for n in s.notes]:
        print(f"note: {note}", file=sys.stderr)
    for note in info.get("notes") or []:
        warn(note)
    for s in sets:
        if len(s.pairs) < (s.total or 0):
            warn(
                f"{s.name}: scoring {len(s.pairs)} of its {s.total} images (--limit {limit}): not comparable with "
                "full-set scores (the paper's tables score every image)"
            )

    def progress(dataset: str, r: dict) -> None:
        if not args.quiet:
            print(f"{dataset}/{r['name']}: {r['psnr_y']:.2f} dB, SSIM {r['ssim_y']:.4f}", file=sys.stderr)

    samples: dict = {}

    def keep_first(dataset: str, pair, output) -> None:
        if tracker is not None and dataset not in samples:
            samples[dataset] = comparison_image(pair.lq, output, pair.hr)

    from ipt.tracking import run_scope

    try:
        with run_scope(tracker, owned):  # the MLflow run this command owns ends FAILED, never stays RUNNING
            report = run_benchmark(
                restore_fn,
                sets,
                task=inputs,
                model=cfg.model,
                protocol=cfg.protocol,
                info=info,
                hardware=describe(),
                on_result=progress,
                on_output=keep_first,
                corruption=made_by,
                seed=cfg.seed,
                limit=limit,
            )
            if info.get("prior_probe"):
                report["prior_probe"] = info["prior_probe"]
            if inputs != cfg.task:  # the model's task, and the task whose inputs it was scored on
                report = {"task": cfg.task, "inputs": inputs} | {k: v for k, v in report.items() if k != "task"}
            _write_report(report, args, tracker, samples)
            table = markdown_table(report)
            if args.markdown:
                Path(args.markdown).write_text(table)
    except OSError as e:
        raise UserError(f"{e.filename or args.out}: cannot write ({e.strerror or e})") from None
    print(table, end="")
    return 0


def _write_report(report: dict, args: argparse.Namespace, tracker, samples: dict) -> None:
    """The JSON report to --out and the scores alone to --scores (each only where asked for), and to the MLflow run
    the report with the metrics (the timings among them) and images."""
    import tempfile

    from ipt.fileio import write_json
    from ipt.score_report import file_report, log_report, scores

    out = args.out
    if out:
        write_json(out, file_report(report, timings=args.timings))
    if args.scores:
        write_json(args.scores, scores(report))
    if tracker is None:
        return
    if out:
        log_report(tracker, report, samples, out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{report['task']}.json"
        write_json(path, file_report(report, timings=args.timings))
        log_report(tracker, report, samples, str(path))


def _check_writable(path: Path) -> None:
    """Create ``path``'s folder and a scratch file in it, or a one-line error naming ``path``."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".check"):
            pass
    except OSError as e:
        raise UserError(f"{path}: cannot write there ({e.strerror or e})") from None


def add_benchmark(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:

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
    p.add_argument(
        "--inputs",
        default=None,
        help="score on another task's test inputs at the same scale (e.g. a denoise_s30 model on denoise_s10 noise:"
        " generalisation); default: the model's task. Such a report cannot register the model",
    )
    p.add_argument(
        "--prior-probe",
        choices=("own", "zero", "next"),
        default="own",
        help="a PTG-RM refiner's prior output g: the image's own (default), zero, or the next image's of the set (a"
        " pooled prior), to see whether the refiner uses its prior (docs/refine.md). Such a report cannot register"
        " the model",
    )
    p.add_argument("--root", default=None, help="folder holding the sets (Set5/, Set14/, B100/, CBSD68/, ...)")
    p.add_argument("--datasets", default=None, help="comma-separated names (default: the task's standard sets present)")
    p.add_argument("--protocol", choices=("ipt", "matlab"), help="default ipt; see docs/benchmark_protocol.md")
    p.add_argument("--tiling", choices=TILINGS, help="default 'official', which reproduces forward_chop exactly")
    p.add_argument("--precision", choices=PRECISIONS, help="default fp32, the reference path")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--batch", type=int, help="windows per forward pass (default 64)")
    p.add_argument("--num-heads", type=int, help="attention heads of an official-layout file (not stored; default 12)")
    p.add_argument(
        "--seed", type=int, help="seed of the denoising noise (and custom task) inputs (default: the project seed)"
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="only the first N images of each set (by name; the report says 'N of M' and warns); 0 or unset: all",
    )
    p.add_argument(
        "--out",
        default=None,
        help="JSON report: scores, per-image values and how they were made, written atomically ('{task}' is "
        "replaced); none without it",
    )
    p.add_argument(
        "--scores",
        default=None,
        help="also the scores alone, per dataset, as JSON ('{task}' is replaced): what a DVC stage declares as metrics",
    )
    p.add_argument(
        "--timings",
        action="store_true",
        help="keep each set's seconds_per_image in the --out report (left out by default: it changes on every run; "
        "the table and MLflow always have it)",
    )
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
    p.set_defaults(func=cmd_benchmark, required_from_params=("model", "root"))
    return p


PARSERS = {"benchmark": add_benchmark}
PARAMS_KEYS = {
    "benchmark": ("model", "root", "datasets", "protocol", "tiling", "precision", "device", "batch", "limit", "out")
}
