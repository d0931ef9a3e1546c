"""``ipt register``: a checkpoint as a new version of ``ipt-<task>`` (or ``ipt-pretrained``); champion on score."""

from __future__ import annotations

import argparse
from pathlib import Path

from ipt.cli.commands import UserError
from ipt.cli.commands import warn as _warn
from ipt.fileio import write_json


def cmd_register(args: argparse.Namespace) -> int:

    from ipt import registry, tracking

    report = registry.read_report(args.report) if args.report else None
    if not Path(args.checkpoint).is_file():
        raise UserError(f"{args.checkpoint}: no such checkpoint")
    name = args.name or (f"ipt-{args.task}" if args.task else "ipt-pretrained")
    # The version belongs to the run that trained the checkpoint when this store has it (its folder says which,
    # see ipt.tracking.write_run_file); else to --mlflow-run-id, else to a new run in --experiment.
    made_by = None if args.mlflow_run_id else tracking.run_from_file(Path(args.checkpoint).parent, args.tracking_uri)
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
    with tracking.run_scope(tracker, owned):
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
    for note in result["warnings"]:
        _warn(note)
    print(f"register: {result['uri']} ({'champion' if result['promoted'] else 'not champion'}: {result['reason']})")
    if args.out:
        out = Path(args.out.format(task=args.task or "pretrained"))
        write_json(out, result, indent=1)
    return 0


def add_register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    return p


PARSERS = {"register": add_register}
