"""Prefect flow `run-experiment`: an experiment file (experiments/<name>.yaml) run to its report.

Its cells become the pipeline's own stages (ipt.experiment.plan), shared where their inputs agree; each stage is a
Prefect task on the Dask task runner the data stages use (``engine.workers`` processes, or a running cluster at
``engine.dask_address``), started once the stages it reads are done. A stage already done (its key in its folder's
done.json) is not run again: rerun a killed sweep and only the unfinished cells run. MLflow: one parent run per
experiment in ``exp-<name>``, one child per finished cell (factor values and seed as params, scores as metrics,
training losses as step metrics). The report (experiments/<name>/report.md, .json, score.png) is computed from the
finished cells. No torch import here. Docs: docs/experiments.md.

    python -m flows.experiment experiments/derain_loss.yaml --dry-run    # cells and their cost, nothing runs
    python -m flows.experiment experiments/derain_loss.yaml              # run (or resume) and report
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.cost import experiment_report, stage_threads
from flows.stages import run_cli
from ipt.experiment import plan as P
from ipt.experiment import report as R
from ipt.experiment.spec import Experiment, ExperimentError, get_path, load, project_root
from ipt.fileio import atomic_write

MLFLOW_PREFIX = "exp-"  # the sweeps' MLflow experiments: apart from the DAG's stage experiments and its registry
RESUMABLE = ("pretrain", "finetune")  # stages that continue from their latest checkpoint


def _stage_env(threads: int) -> dict[str, str]:
    return {
        "IPT_TRACKING": "off",  # a cell's stages log nothing of their own: the cell's child run carries their numbers
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }


@task(name="experiment-stage", task_run_name="{label}")
def run_node(node: P.Node, label: str, threads: int, cwd: str) -> dict[str, Any]:
    """Run one stage (unless its folder says it is done) and mark it done with its key."""
    from ipt.data.shards import FolderLock
    from ipt.fileio import write_json

    if node.done():
        return {"key": node.key, "state": "done"}
    node.folder.mkdir(parents=True, exist_ok=True)
    with FolderLock(str(node.folder)):
        t0 = time.perf_counter()  # the stage's own time, not the wait for the lock
        if node.done():  # finished by another run while this one waited for the lock
            return {"key": node.key, "state": "done"}
        if node.code_changed():
            raise RuntimeError(
                f"{node.label}: the code it imports changed after this sweep was planned (the checkout was edited"
                " while it ran); run the sweep again: stages of the new code get new keys"
            )
        params = P.write_node_params(node)
        args = [*node.argv, "--params", str(params)]
        resumed = node.stage in RESUMABLE and node.run.exists()  # an earlier attempt's steps are not in `seconds`
        if node.stage in RESUMABLE:
            args.append("--resume")
        elif node.run.exists():  # a stage that cannot continue (refine, benchmark) starts over; the folder is ours
            shutil.rmtree(node.run)
        run_cli(args, env=_stage_env(threads), cwd=cwd)
        seconds = time.perf_counter() - t0
        # seconds, threads, the command and whether it resumed: what the dry run prices stages of its kind by
        record = {"key": node.key, "stage": node.label, "seconds": seconds, "threads": threads, "argv": node.argv}
        write_json(node.folder / P.DONE, record | ({"resumed": True} if resumed else {}))
    return {"key": node.key, "state": "ran", "seconds": seconds}


def _cell_record(plan: P.Plan, i: int) -> dict[str, Any] | None:
    node = plan.score_node(i)
    if not node.done():
        return None
    report = json.loads((node.run / "report.json").read_text())
    s = plan.experiment.score
    d = report["datasets"][s.dataset]
    cell = plan.cells[i]
    return {
        "variant": cell.variant.label,
        "values": cell.variant.as_dict(),
        "seed": cell.seed,
        "score": d[s.metric],
        "metrics": {k: d[k] for k in ("psnr_y", "ssim_y", "psnr_rgb") if k in d},
        "images": f"{d['images']} of {d['images_total']}",
        "hardware": report.get("hardware", {}),
        "tiling": report.get("tiling"),
        "precision": report.get("precision"),
        "seed_of_inputs": report.get("seed"),
        "key": node.key,
        "curves": _curves(plan, i),
    }


def _curves(plan: P.Plan, i: int) -> dict[str, list[dict[str, float]]]:
    """Each training stage's validation rows of cell ``i`` (stage -> [{step, psnr_y, ssim_y, seconds}]): the curves
    the report draws. Stages that did not validate have none."""
    out = {}
    for n in plan.training_nodes(i):
        path = n.run / "validation.jsonl"
        if path.is_file():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            keep = ("step", "psnr_y", "ssim_y", "seconds")
            out[n.stage] = [{k: r[k] for k in keep if k in r} for r in rows if "step" in r and "psnr_y" in r]
    return out


def _losses(node: P.Node) -> list[tuple[str, float, int]]:
    """A training stage's metrics.jsonl as (stage/name, value, step)."""
    out = []
    path = node.run / "metrics.jsonl"
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        step = int(row.get("step", 0))
        for k, v in row.items():
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                out.append((f"{node.stage}/{k}", float(v), step))
    return out


def log_to_mlflow(plan: P.Plan, records: dict[int, dict[str, Any]], tracking_uri: str) -> str:
    """The parent run of the experiment (made once, found again on a rerun) and a child per finished cell that has
    none yet. Returns the parent's run id."""
    from ipt.tracking import MlflowTracker, find_run

    exp = plan.experiment
    name = MLFLOW_PREFIX + exp.name
    # the design: every cell's scored stage, whose key holds its params, code and data; an edited file or a code
    # change makes a new parent instead of mixing its cells into the old one
    design = hashlib.sha256(" ".join(sorted(c["score"] for c in plan.cell_nodes)).encode()).hexdigest()[:16]
    tags = {"ipt.experiment": exp.name, "ipt.experiment_file": str(exp.path), "ipt.design": design}
    parent_id = find_run(name, {"ipt.design": design, "ipt.role": "parent"}, tracking_uri)
    if parent_id is None:
        parent = MlflowTracker.start(name, run_name=exp.name, tracking_uri=tracking_uri)
        parent.set_tags({**tags, "ipt.role": "parent", "mlflow.note.content": exp.question})
        parent.log_params(
            {
                "factors": ",".join(exp.factors) or "variants",
                "seeds": ",".join(map(str, exp.seeds)),
                "reference": exp.reference.label,
                "score": f"{exp.score.dataset}/{exp.score.metric}",
            }
        )
        parent_id = parent.run_id
    parent = MlflowTracker(parent_id, tracking_uri)
    paths = list(dict.fromkeys(k for v in exp.variants for k in v.as_dict()))
    for i, rec in sorted(records.items()):
        if find_run(name, {"ipt.cell": rec["key"], "ipt.parent": parent_id}, tracking_uri):
            continue
        child = MlflowTracker.start(
            name, run_name=plan.cells[i].label, tracking_uri=tracking_uri, parent_run_id=parent_id
        )
        child.set_tags(
            {**tags, "ipt.role": "cell", "ipt.cell": rec["key"], "ipt.parent": parent_id, "ipt.variant": rec["variant"]}
        )
        # every path any variant sets, with this cell's value (a variant that leaves one at the base still has a
        # point on that axis of the compare view)
        values = {k: get_path(plan.cells[i].params, k) for k in paths}
        child.log_params(
            {
                **{k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in values.items()},
                "seed": rec["seed"],
                "variant": rec["variant"],
            }
        )
        s = exp.score
        child.log_metrics({f"{s.dataset}/{k}": v for k, v in rec["metrics"].items()} | {"score": rec["score"]})
        series = [x for n in plan.training_nodes(i) for x in _losses(n)]
        child.log_series(series)
        child.finish()
    parent.finish()  # a rerun that finishes more cells adds their children to this parent
    return parent_id


def about_lines(plan: P.Plan, records: dict[int, dict[str, Any]]) -> list[str]:
    """How the numbers were made: what a reader needs to trust or compare them."""
    exp, s = plan.experiment, plan.experiment.score
    kinds = sorted(
        {
            json.dumps(
                {k: r["hardware"].get(k) for k in ("cpu_model", "cpu_id", "cpu_capability", "cpu_bf16", "cuda")},
                sort_keys=True,
            )
            for r in records.values()
        }
    )
    images = sorted({r["images"] for r in records.values()})
    lines = [
        f"- Cells: {len(records)} of {len(plan.cells)} finished ({len(exp.variants)} variant(s) x"
        f" {len(exp.seeds)} seed(s): {', '.join(map(str, exp.seeds))}); the seed sets "
        + ", ".join(f"`{st}.seed`" for st in exp.seed_stages)
        + ".",
        f"- Score: `{s.metric}` of the `{s.model}` model for"
        f" `{s.task}` on {s.dataset}"
        + (f" with `{s.inputs}`'s inputs (`--inputs`: a task it was not trained on)" if s.inputs else "")
        + (f" with its prior's output set to {s.prior_probe} (`--prior-probe`)" if s.prior_probe != "own" else "")
        + f" ({', '.join(images)} images), `ipt benchmark` protocol ipt, tiling {s.tiling},"
        f" precision {s.precision}, input seed {s.seed}.",
        f"- Factors: {', '.join(f'`{k}` in {v}' for k, v in exp.factors.items()) or 'named variants only'}.",
        f"- Base: {exp.params_file.name}{base_overrides(exp)}; the command:"
        f" `python -m flows.experiment {exp.path.as_posix()}`.",
    ]
    from ipt.provenance import git_commit

    lines.append(
        f"- Code: git commit {git_commit() or 'unknown'} (each stage's key holds the sha256 of the code it imports)."
    )
    for k in kinds:
        h = json.loads(k)
        lines.append(
            f"- Ran on: {h.get('cpu_model')} (x86 {h.get('cpu_id')}, torch capability {h.get('cpu_capability')},"
            f" native bf16: {h.get('cpu_bf16') or 'none'}), CUDA {h.get('cuda')}."
        )
    if len(kinds) > 1:
        lines.append(
            "- The cells ran on more than one CPU kind: fp32 training differs in the last digits between kinds;"
            " compare with that tolerance (docs/experiments.md)."
        )
    return lines


def write_report(plan: P.Plan, records: dict[int, dict[str, Any]]) -> dict[str, Path]:
    exp = plan.experiment
    numbers = R.build(
        list(records.values()), reference=exp.reference.label, factors=exp.factors, metric=exp.score.metric
    )
    numbers["cells"] = [{k: v for k, v in r.items() if k != "hardware"} for r in records.values()]
    return R.write(exp.path.parent / exp.name, exp.name, exp.question, numbers, about_lines(plan, records))


@flow(name="run-experiment", log_prints=True)
def run_experiment(
    file: str,
    work: str | None = None,
    workers: int | None = None,
    tracking_uri: str | None = None,
    params_file: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) the experiment in ``file`` and write its report. Returns the report's paths and verdict."""
    from flows.data import task_runner

    logger = get_run_logger()
    exp, plan = prepare(file, work, workers, params_file)
    root = project_root()
    logger.info("%s", experiment_report(plan))
    todo = [n for n in plan.nodes.values() if not n.done()]
    logger.info("%d of %d stages to run on %s (%d worker(s))", len(todo), len(plan.nodes), exp.executor, exp.workers)
    threads = stage_threads(exp)
    failed: list[str] = []
    if todo:
        runner = task_runner(exp.executor, exp.workers, exp.dask_address)

        @flow(name="experiment-cells", task_runner=runner)
        def cells() -> list[str]:
            futures: dict[str, Any] = {}
            for n in todo:
                deps = [futures[d] for d in n.deps if d in futures]
                futures[n.key] = run_node.with_options(task_run_name=n.label).submit(
                    n, n.label, threads, str(root), wait_for=deps
                )
            bad = []
            for k, f in futures.items():
                try:
                    f.result()
                except Exception as e:  # noqa: BLE001 - a failed stage fails its cells, not the others
                    bad.append(f"{plan.nodes[k].label}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            return bad

        failed = cells()
    records = {i: r for i in range(len(plan.cells)) if (r := _cell_record(plan, i)) is not None}
    paths = write_report(plan, records) if records else {}  # first: an unreachable MLflow costs no report
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
    parent = log_to_mlflow(plan, records, uri) if records else None
    for line in failed:
        logger.error("failed: %s", line)
    result = {
        "cells": len(plan.cells),
        "finished": len(records),
        "failed_stages": failed,
        "report": str(paths.get("md", "")),
        "mlflow_parent_run": parent,
    }
    if paths:
        result["verdict"] = R.load_json(paths["json"])["verdict"]
    if failed:
        raise RuntimeError(
            f"{len(failed)} stage(s) failed ({'; '.join(failed[:3])}); "
            f"report of the {len(records)} finished cells: {result['report']}"
        )
    return result


def prepare(file: str, work: str | None, workers: int | None, params_file: str | None) -> tuple[Experiment, P.Plan]:
    """The checked experiment and its plan; ``work`` (default runs/experiments/<name>) is under the project root
    when relative, as every path the stages read."""
    exp = load(file, params_file=params_file)
    if workers:
        exp = Experiment(**{**vars(exp), "workers": workers})
    folder = Path(work or exp.work or Path("runs") / "experiments" / exp.name)
    return exp, P.build(exp, folder if folder.is_absolute() else project_root() / folder)


def base_overrides(exp: Experiment) -> str:
    """How the file's ``base:`` changes the params file, as the report's Base line quotes it (`` with
    `shard.source: ../shared/train` (the `base:` of `experiments/x.yaml`)``): what every cell shares beyond the params
    file, such as the training corpus."""
    from ipt.experiment.spec import flatten

    over = flatten(exp.raw.get("base") or {})  # the file as `load` read it (and checked), not read again
    where = f"`{exp.path.as_posix()}`"
    if not over:
        return f" as it is ({where} has no `base:`)"
    quoted = ", ".join(f"`{k}: {v if isinstance(v, str) else json.dumps(v)}`" for k, v in over.items())
    return f" with {quoted} (the `base:` of {where})"


def heading_depth(markdown_text: str) -> int:
    """The level of the last heading in ``markdown_text`` outside fenced code and outside other rendered blocks
    (``<!-- name:start -->`` .. ``<!-- name:end -->``; 1 if none): a report copied there goes one level under it, and
    several reports rendered one after another under one heading stay siblings."""
    level, fenced, blocks = 1, False, 0
    for line in markdown_text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            continue
        elif re.fullmatch(r"<!-- \S+:start -->", line.strip()):
            blocks += 1
        elif re.fullmatch(r"<!-- \S+:end -->", line.strip()):
            blocks = max(0, blocks - 1)
        elif not blocks and (m := re.match(r"(#+) ", line)):
            level = len(m.group(1))
    return level


def _deeper(line: str, depth: int) -> str:
    """A report line with its heading ``depth`` levels deeper (at most markdown's 6; other lines as they are)."""
    m = re.match(r"(#+) ", line)
    return "#" * min(6, len(m.group(1)) + depth) + line[len(m.group(1)) :] if m else line


def render(exp: Experiment, markdown: Path) -> Path:
    """Copy the experiment's report into ``markdown`` (docs/BENCHMARKS.md) as the section ``experiment_<name>``, its
    headings one level under the heading it lands beneath and its links made relative to that file: the docs table
    is the computed report."""
    folder = exp.path.parent / exp.name
    report = folder / "report.md"
    if not report.is_file():
        raise ExperimentError(f"{report}: no report yet; run the experiment first")
    rel = Path(os.path.relpath(folder.resolve(), markdown.resolve().parent)).as_posix()
    body = (
        report.read_text()
        .replace("](score.png)", f"]({rel}/score.png)")
        .replace("](curves.png)", f"]({rel}/curves.png)")
    )
    name = f"experiment_{exp.name}"
    start = f"<!-- {name}:start -->"
    text = markdown.read_text()
    depth = heading_depth(text[: text.index(start)] if start in text else text)
    body = "\n".join(_deeper(line, depth) for line in body.splitlines()) + "\n"
    write_text(markdown, replace_section(text, name, body))
    return markdown


def write_text(path: Path, text: str) -> Path:
    """``text`` into ``path`` through a temporary and a rename: a render stopped half-way leaves the old file whole."""
    return atomic_write(path, lambda f: f.write(text.encode()), fsync=False)


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the block between ``<!-- name:start -->`` and ``<!-- name:end -->`` replaced by ``body`` (or the
    block appended when the markers are absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body}{end}"
    if start in text and end in text:
        return text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    return text.rstrip() + "\n\n" + block + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.experiment", description="Run an experiment file to its report.")
    ap.add_argument("file", help="experiments/<name>.yaml")
    ap.add_argument("--dry-run", action="store_true", help="list the cells and their cost; run nothing")
    ap.add_argument(
        "--work", default=None, help="stage folders (default: the file's engine.work, else runs/experiments/<name>)"
    )
    ap.add_argument("--workers", type=int, default=None, help="Dask workers (default: the file's engine.workers)")
    ap.add_argument("--params", default=None, help="base params file (default: the file's `params`, else params.yaml)")
    ap.add_argument(
        "--tracking-uri", default=None, help="MLflow (default $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)"
    )
    ap.add_argument("--render", type=Path, default=None, help="copy the report into this markdown file; run nothing")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from the cells finished so far (a sweep that spans sittings); run nothing",
    )
    a = ap.parse_args(argv)
    try:
        if a.render:
            print(render(load(a.file, params_file=a.params), a.render))
            return 0
        exp, plan = prepare(a.file, a.work, a.workers, a.params)
        if a.dry_run:
            print(experiment_report(plan))
            return 0
        if a.report_only:
            records = {i: r for i in range(len(plan.cells)) if (r := _cell_record(plan, i)) is not None}
            if not records:
                raise ExperimentError(f"{exp.path}: no cell has finished yet; nothing to report")
            paths = write_report(plan, records)
            print(f"{paths['md']}: {len(records)} of {len(plan.cells)} cells finished")
            return 0
    except ExperimentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from flows.server import prefect_api

    with prefect_api():
        result = run_experiment(
            a.file, work=a.work, workers=a.workers, tracking_uri=a.tracking_uri, params_file=a.params
        )
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
