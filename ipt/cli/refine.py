"""``ipt refine`` (train PTG-RM behind a base IPT, DVC stage ``refine@TASK``) and ``ipt refine-register``
(register a refiner checkpoint as ``ipt-<task>-ptgrm``). Flags left out come from params.yaml ``refine``, then from
``RefineConfig``'s defaults."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipt.fileio import write_json

# RefineConfig fields a flag (or the params section) may set.
CONFIG_KEYS = (
    "base prior prior_layer prior_spatial shards out steps batch_size crop flip lr min_lr betas grad_clip joint "
    "calibration channels blocks zero_init seed shuffle_buffer num_workers device"
).split()
# the keys `refine:` in params.yaml may hold
PARAMS_KEYS = {"refine": (*CONFIG_KEYS, "threads")}


def _floats(text: str) -> list[float]:
    return [float(x) for x in str(text).split(",") if x.strip()]


def add_refine(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ipt.refine.priors import PRIORS

    p = sub.add_parser("refine", help="train PTG-RM (prior-guided refinement) behind a base IPT on pair shards")
    p.add_argument("--task", required=True, help="the task (its pair shards <shards>/<task> are the training data)")
    p.add_argument(
        "--base", help="restorer to refine: checkpoint, run folder, official .pt or models:/ipt-TASK@ALIAS ('{task}')"
    )
    p.add_argument("--prior", choices=sorted(PRIORS), help="frozen prior network (default mobilenet_v2_imagenet)")
    p.add_argument("--prior-layer", type=int, help="MobileNetV2 layer whose global average is the prior (17: 320-d)")
    p.add_argument(
        "--prior-spatial",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="MobileNetV2 priors: feature maps at 1/8 and 1/16 instead of the pooled vector (off)",
    )
    p.add_argument("--shards", help="root of the pair-shard folders (data/pairs)")
    p.add_argument("--out", help="run folder ('{task}', '{prior}' are replaced)")
    p.add_argument("--steps", type=int, help="optimizer updates")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--crop", type=int, help="random LQ crop side from each shard patch (0: whole patch)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None, help="random h/v flips (on)")
    p.add_argument("--lr", type=float, help="Adam learning rate, cosine-annealed to --min-lr (1e-4)")
    p.add_argument("--min-lr", type=float)
    p.add_argument("--betas", type=_floats, help="Adam betas, comma-separated (0.9,0.99)")
    p.add_argument("--grad-clip", type=float, help="max gradient norm (0: off)")
    p.add_argument(
        "--joint",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the base too, on L1(base) + L1(refined) (default: base frozen, L1(refined))",
    )
    p.add_argument("--calibration", type=int, help="training patches that recalibrate the random prior's BN (64)")
    p.add_argument("--channels", type=int, help="PTG-RM feature channels (16)")
    p.add_argument("--blocks", type=int, help="Restormer blocks of the long-range branch (4)")
    p.add_argument(
        "--zero-init",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="zero PTG-RM's last decoder conv so the untrained refiner is the identity on the base (default on)",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--shuffle-buffer", type=int)
    p.add_argument("--workers", dest="num_workers", type=int, help="DataLoader workers (0: in-process)")
    p.add_argument("--device", help="auto, cpu, cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (0: torch's default)")
    p.add_argument("--params", default=None, help="params file (default ./params.yaml; 'none' ignores it)")
    p.add_argument("--register", action="store_true", help="register the result as ipt-<task>-ptgrm in MLflow")
    p.add_argument("--experiment", default="ipt-refine", help="MLflow experiment of the run --register starts")
    p.add_argument("--mlflow-run-id", default=None, help="log params and per-step metrics to this MLflow run")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--log-every", type=int, default=10, help="print a progress line every N steps (0: never)")
    p.set_defaults(func=cmd_refine, required_from_params=("base",))
    return p


def add_refine_register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    r = sub.add_parser("refine-register", help="register a refiner checkpoint as ipt-<task>-ptgrm (champion on score)")
    r.add_argument("--checkpoint", required=True, help="refiner checkpoint (runs/refine/<task>/model.pt)")
    r.add_argument("--report", default=None, help="`ipt benchmark` JSON of the refined model")
    r.add_argument("--metric", default="psnr_y")
    r.add_argument("--dataset", default=None, help="score on this dataset only (default: mean over the report's)")
    r.add_argument("--name", default=None, help="registered model name (default ipt-<task>-ptgrm)")
    r.add_argument("--allow-new-key", action="store_true", help="a score under another score key may take the champion")
    r.add_argument("--experiment", default="ipt-refine")
    r.add_argument("--mlflow-run-id", default=None, help="log into this run instead of a new one")
    r.add_argument("--tracking-uri", default=None)
    r.add_argument("--out", default=None, help="write the decision as JSON ('{task}' is replaced)")
    r.set_defaults(func=cmd_refine_register)
    return r


def _tracker(args: argparse.Namespace, *, start: bool, run_name: str) -> tuple[Any, bool]:
    """(tracker or None, whether this command started the run and must finish it), from
    :func:`ipt.tracking.stage_run` in ``--experiment``; ``start``: a run even when $IPT_TRACKING is off (registering
    needs one)."""
    from ipt.tracking import stage_run

    tags = {"ipt.stage": args.command} | ({"ipt.task": args.task} if getattr(args, "task", None) else {})
    return stage_run(
        args.experiment,
        run_name,
        run_id=args.mlflow_run_id,
        tracking_uri=args.tracking_uri,
        tags=tags,
        required=start,
    )


def _progress(every: int) -> Callable[[dict[str, Any]], None] | None:
    if every <= 0:
        return None

    def show(row: dict[str, Any]) -> None:
        if row["step"] % every == 0:
            print(
                f"step {row['step']}: loss {row['loss']:.5f} (refined {row['l1_refined']:.5f}, base "
                f"{row['l1_base']:.5f}) lr {row['lr']:.2e} {row['samples_per_s']:.1f} samples/s",
                file=sys.stderr,
            )

    return show


def cmd_refine(args: argparse.Namespace) -> int:
    from ipt.device import torch_threads

    with torch_threads(args.threads):
        return _refine(args)


def _refine(args: argparse.Namespace) -> int:
    from ipt.refine.config import RefineConfig
    from ipt.refine.train import refine
    from ipt.tracking import run_scope

    data = {k: getattr(args, k) for k in CONFIG_KEYS if getattr(args, k, None) is not None}
    if isinstance(data.get("betas"), str):
        data["betas"] = _floats(data["betas"])
    data["task"] = args.task
    if isinstance(data.get("base"), str):
        data["base"] = data["base"].replace("{task}", args.task)
    cfg = RefineConfig.from_dict(data)
    tracker, owned = _tracker(args, start=args.register, run_name=f"refine {cfg.task} ({cfg.prior})")
    with run_scope(tracker, owned):  # FINISHED, or FAILED whatever goes wrong
        result = refine(cfg, tracker=tracker, progress=_progress(args.log_every), tracking_uri=args.tracking_uri)
        if args.register:
            from ipt.refine.registry import register_refiner

            result["registered"] = register_refiner(result["model"], tracker=tracker)
    last = result["last"]
    print(
        f"refine {cfg.task} ({cfg.prior}): loss {last.get('loss', float('nan')):.5f} after {cfg.steps} steps, "
        f"{result['parameters']['refiner']:,} PTG-RM parameters -> {result['model']}",
        file=sys.stderr,
    )
    if "registered" in result:
        reg = result["registered"]
        print(f"registered {reg['uri']} ({'champion' if reg['promoted'] else 'not champion'}: {reg['reason']})")
    print(json.dumps(result))
    return 0


def cmd_refine_register(args: argparse.Namespace) -> int:
    from ipt.refine.registry import register_refiner
    from ipt.registry import read_report
    from ipt.tracking import run_scope

    report = read_report(args.report) if args.report else None
    tracker, owned = _tracker(args, start=True, run_name=f"register {Path(args.checkpoint).parent.name} refiner")
    with run_scope(tracker, owned):
        result = register_refiner(
            args.checkpoint,
            tracker=tracker,
            report=report,
            metric=args.metric,
            dataset=args.dataset,
            name=args.name,
            report_path=args.report,
            allow_new_key=args.allow_new_key,
        )
    for note in result["warnings"]:
        print(f"warning: {note}", file=sys.stderr)
    print(
        f"refine-register: {result['uri']} ({'champion' if result['promoted'] else 'not champion'}: {result['reason']})"
    )
    if args.out:
        task = result["name"].removeprefix("ipt-").removesuffix("-ptgrm")
        out = Path(args.out.format(task=task))
        write_json(out, result, indent=1)
    return 0


PARSERS = {"refine": add_refine, "refine-register": add_refine_register}
