"""A run priced before it starts: per stage, the samples, the bytes written and the hours at measured rates.

The plan and the rates: docs/paper_scale.md.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class CostError(ValueError):
    """A plan or a rates file that cannot price the run (named in the message)."""


@dataclass(frozen=True)
class Row:
    stage: str
    samples: float
    bytes: float  # written by the stage
    hours: float  # wall-clock, at the given workers / GPUs
    resource: str  # what the hours run on


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CostError(f"{path}: rates file not found (make it with the benchmark named in the plan)") from None
    except ValueError as e:
        raise CostError(f"{path}: not JSON ({e})") from None


def load_plan(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    try:
        plan = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise CostError(f"{p}: plan file not found") from None
    except yaml.YAMLError as e:
        raise CostError(f"{p}: not YAML ({str(e).splitlines()[0]})") from None
    for key in ("source", "shard", "corrupt", "pretrain", "finetune", "rates"):
        if not isinstance((plan or {}).get(key), dict):
            raise CostError(f"{p}: needs a '{key}' section")
    return plan


def _gpu_rate(train: dict[str, Any], size: str, precision: str, where: Path) -> tuple[float, str]:
    for run in train.get("runs", []):
        if run.get("size") == size and run.get("precision") == precision:
            gpu = train.get("hardware", {}).get("cuda", "GPU")
            return float(run["samples_per_s"]), f"{gpu}: {run['samples_per_s']:.0f} samples/s ({precision})"
    raise CostError(f"{where}: no measured {size}/{precision} training rate")


def price(plan: dict[str, Any], root: Path, *, workers: int, gpus: int, png_level: int | None = None) -> list[Row]:
    """The rows of the plan at ``workers`` data workers and ``gpus`` GPUs (relative rate paths under ``root``)."""
    if workers < 1 or gpus < 1:
        raise CostError(f"workers and gpus must be >= 1, got {workers} and {gpus}")
    rates = plan["rates"]
    data_path, train_path = root / rates["data"], root / rates["train"]
    data, train = _read_json(data_path), _read_json(train_path)
    level = str(plan["shard"].get("png_level", 0) if png_level is None else png_level)
    if level not in data.get("clean", {}):
        raise CostError(f"{data_path}: no measurement at PNG level {level} (measured: {', '.join(data['clean'])})")
    images = float(plan["source"]["images"])
    crops = images * float(plan["shard"]["crops"])
    cpu = f"{workers} x {data.get('hardware', {}).get('cpu_model', 'CPU')} worker"
    clean = data["clean"][level]
    rows = [
        Row(
            "shard",
            crops,
            crops * clean["bytes_per_sample"],
            (images * data["decode_s_per_image"] + crops * clean["s_per_crop"]) / workers / 3600,
            cpu,
        )
    ]
    for task in plan["corrupt"]["tasks"]:
        if task not in data.get("pairs", {}):
            raise CostError(f"{data_path}: no measured corrupt rate for {task}")
        pair = data["pairs"][task][level]
        rows.append(
            Row(
                f"corrupt@{task}",
                crops,
                crops * pair["bytes_per_sample"],
                crops * pair["s_per_sample"] / workers / 3600,
                cpu,
            )
        )
    size = plan["pretrain"].get("model_size", "paper")
    rate, what = _gpu_rate(train, size, plan["pretrain"].get("precision", "bf16"), train_path)
    seen = crops * float(plan["pretrain"]["epochs"])
    rows.append(Row("pretrain", seen, 0.0, seen / (rate * gpus) / 3600, f"{gpus} x {what}"))
    rate, what = _gpu_rate(train, size, plan["finetune"].get("precision", "bf16"), train_path)
    for task in plan["corrupt"]["tasks"]:
        seen = crops * float(plan["finetune"]["epochs"])
        rows.append(Row(f"finetune@{task}", seen, 0.0, seen / (rate * gpus) / 3600, f"{gpus} x {what}"))
    bench = plan.get("benchmark") or {}
    if bench and rates.get("benchmark"):
        tiling = _read_json(root / rates["benchmark"])
        s_img = float(tiling["runs"]["official/fp32"]["seconds_per_image"])
        for task, n in (bench.get("images") or {}).items():
            rows.append(
                Row(
                    f"benchmark@{task}",
                    float(n),
                    0.0,
                    n * s_img / 3600,
                    f"1 GPU, official tiling fp32, {s_img:.2f} s/image",
                )
            )
    return rows


def _size(n: float) -> str:
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= f:
            return f"{n / f:.2f} {unit}"
    return f"{n:.0f} B" if n else "-"


def _count(n: float) -> str:
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= f:
            return f"{n / f:.2f}{unit}"
    return f"{n:.0f}"


def storage_by_level(plan: dict[str, Any], root: Path) -> list[tuple[int, float, float, float]]:
    """``(level, clean bytes, pair bytes, CPU-hours of shard + corrupt)`` for every measured PNG level: the data
    rows of :func:`price` at each level, on one worker."""
    out = []
    for level in _read_json(root / plan["rates"]["data"])["levels"]:
        rows = price(plan, root, workers=1, gpus=1, png_level=int(level))
        clean = sum(r.bytes for r in rows if r.stage == "shard")
        pairs = sum(r.bytes for r in rows if r.stage.startswith("corrupt@"))
        cpu_h = sum(r.hours for r in rows if r.stage == "shard" or r.stage.startswith("corrupt@"))
        out.append((int(level), clean, pairs, cpu_h))
    return out


def report(plan: dict[str, Any], root: Path, *, workers: int, gpus: int, png_level: int | None = None) -> str:
    rows = price(plan, root, workers=workers, gpus=gpus, png_level=png_level)
    level = plan["shard"].get("png_level", 0) if png_level is None else png_level
    lines = [
        f"cost of {plan['source'].get('name', 'the source')} ({_count(plan['source']['images'])} images x "
        f"{plan['shard']['crops']} crops), PNG level {level}, {workers} data worker(s), {gpus} GPU(s):",
        "",
        f"{'stage':<22} {'samples':>9} {'written':>10} {'hours':>9}  on",
    ]
    for r in rows:
        lines.append(f"{r.stage:<22} {_count(r.samples):>9} {_size(r.bytes):>10} {r.hours:>9.2f}  {r.resource}")
    data_h = sum(r.hours for r in rows if r.stage.startswith(("shard", "corrupt")))
    gpu_h = sum(r.hours for r in rows if r.stage.startswith(("pretrain", "finetune", "benchmark")))
    lines += [
        "",
        f"written: {_size(sum(r.bytes for r in rows))}; data stages {data_h:.1f} h on {workers} worker(s); "
        f"training and scoring {gpu_h:.1f} h on {gpus} GPU(s) ({gpu_h * gpus:.0f} GPU-hours; linear DDP scaling "
        "assumed beyond the measured single GPU)",
        "",
        "storage and data-stage CPU time by PNG level (clean crops + the six tasks' pairs):",
    ]
    for lv, clean, pairs, cpu_h in storage_by_level(plan, root):
        lines.append(
            f"  level {lv}: clean {_size(clean)}, pairs {_size(pairs)}, total {_size(clean + pairs)}; "
            f"{cpu_h:.0f} CPU-hours ({cpu_h / workers:.1f} h on {workers} worker(s))"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ experiments
# The dry run of an experiment (flows/experiment.py --dry-run): its distinct stages priced at the project's measured
# CPU and GPU rates.


@functools.lru_cache(maxsize=1)
def _rates() -> dict[str, Any]:
    """Measured rates (docs/bench_train.json, docs/bench_data.json, docs/bench_train_cuda.json) where present."""
    docs = Path(__file__).resolve().parents[1] / "docs"
    out: dict[str, Any] = {}
    for name in ("bench_train", "bench_data", "bench_train_cuda"):
        try:
            out[name] = json.loads((docs / f"{name}.json").read_text())
        except (OSError, ValueError):
            out[name] = {}
    return out


def _train_rate(table: dict[str, Any], size: str, precision: str) -> float | None:
    for run in table.get("runs", []):
        if run.get("size") == size and run.get("precision") == precision:
            return float(run["samples_per_s"])
    return None


@functools.lru_cache(maxsize=16)
def _source_images(source: str, default: float) -> float:
    """Images of a shard source: counted in a local folder, 26 for scikit-image's samples, else the measured set's."""
    if source == "skimage":
        return 26.0
    folder = Path(source)
    if folder.is_dir():
        from ipt.data.images import IMAGE_EXTENSIONS

        return float(sum(1 for f in folder.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS))
    return default


def on_gpu(node: Any) -> bool:
    """A training stage whose section asks for a GPU (``device: cuda`` or ``cuda:N``): its hours are GPU hours, neither
    core-hours nor part of the CPU schedule. ``auto`` counts as the CPU (where it runs on this machine)."""
    return node.stage in TRAINING and str((node.params.get(node.stage) or {}).get("device", "auto")).startswith("cuda")


def stage_estimate(node: Any) -> dict[str, float]:
    """Core-hours at the measured rates (docs/bench_train.json's training rates times the cores they were measured
    on; docs/bench_data.json's data rates as they are), GPU hours where a GPU rate for the model size was measured
    (a stage whose section sets ``device: cuda`` costs GPU hours only), and bytes written; whether the node is done
    is the caller's to ask. An estimate, stated as one."""
    rates, p = _rates(), node.params
    data = rates["bench_data"]
    crops_per_image = float((p.get("shard") or {}).get("crops", 1))
    per_sample = float(data.get("clean_bytes_per_sample", 112656.0))
    images = _source_images(str((p.get("shard") or {}).get("source", "")), float(data.get("images", 1440)))
    samples = images * crops_per_image
    if node.stage == "shard":
        return {
            "cpu_h": images / float(data.get("shard_img_s", 200.0)) / 3600,
            "gpu_h": 0.0,
            "bytes": samples * per_sample,
        }
    if node.stage == "corrupt":
        rate = float(data.get("corrupt_sr_x2_samples_s", 380.0))
        return {"cpu_h": samples / rate / 3600, "gpu_h": 0.0, "bytes": samples * per_sample * 1.25}
    if node.stage in TRAINING:
        sec = p.get(node.stage) or {}
        size = str((p.get("pretrain") or {}).get("model_size", "paper"))
        precision = str(sec.get("precision", "fp32"))
        table = rates["bench_train"]
        cpu = _train_rate(table, size, "fp32" if precision == "auto" else precision)
        gpu = _train_rate(rates["bench_train_cuda"], size, "bf16")
        cores = float((table.get("hardware") or {}).get("threads", 1))  # the rate used that many cores at once
        scale = REFINE_SCALE if node.stage == "refine" else 1.0
        n = _samples(node.stage, p)
        return {
            "cpu_h": 0.0 if on_gpu(node) else n / cpu * cores / 3600 * scale if cpu else float("nan"),
            "gpu_h": n / gpu / 3600 * scale if gpu else float("nan"),
            "bytes": 0.0,
        }
    return {"cpu_h": 0.0, "gpu_h": 0.0, "bytes": 0.0}  # benchmark: priced only from measured records


TRAINING = ("pretrain", "finetune", "refine")
# A refine step against a pretraining step of the same batch on the same base: the frozen base's forward, the prior
# network's and PTG-RM's own forward and backward, per sample. Measured in experiments/ptgrm_prior's two runs (one
# thread a stage, two at a time, EPYC 26-2-1, other work beside both): at 879691a nine refines of 1500 x 8 samples
# took a mean 951 s and the pretraining (300 x 16) 729 s, 0.079 against 0.152 s a sample, 0.52; at 2c4db1b 511 s
# and 548 s, 0.043 against 0.114, 0.37. The mean of the two; a run's own finished stages price it better.
REFINE_SCALE = 0.45


def _samples(stage: str, params: dict[str, Any]) -> float:
    """Training samples a stage draws (steps x batch) under ``params``."""
    sec = params.get(stage) or {}
    return float(sec.get("steps", 0)) * float(sec.get("batch_size", 8))


def stage_threads(exp: Any) -> int:
    """Threads each stage of ``exp`` runs with: its engine's ``threads``, else this machine's cores over its workers."""
    return exp.threads or max(1, (os.cpu_count() or 1) // max(exp.workers, 1))


def price_key(label: str, params: dict[str, Any], argv: list[str] | None) -> str | None:
    """What a finished stage must share with a stage to price it: the label, the model size, and for a training
    stage its precision (a refine also its prior, whose network runs every step); for a benchmark its command with
    the stage folders reduced to their labels (set, images, tiling, precision, probe, the kind of model scored), and
    None for a benchmark record that did not keep its command; for the data stages their source and crops."""
    stage = label.split("@")[0]
    pre = params.get("pretrain") or {}
    parts = [label, f"model_size={pre.get('model_size', 'paper')}"]
    if stage in TRAINING:
        sec = params.get(stage) or {}
        parts.append(f"precision={sec.get('precision', 'fp32')}")
        if stage == "refine":
            parts += [f"prior={sec.get('prior')}", f"spatial={bool(sec.get('prior_spatial', False))}"]
    elif stage == "benchmark":
        if argv is None:
            return None
        ref = params.get("refine") or {}
        parts += [f"prior={ref.get('prior')}", f"spatial={bool(ref.get('prior_spatial', False))}"]
        parts += [re.sub(r".*/nodes/([^/]+)-[0-9a-f]{12}/.*", r"\1", str(a)) for a in argv]
    else:
        shard = params.get("shard") or {}
        parts += [f"source={shard.get('source')}", f"crops={shard.get('crops')}"]
    return " ".join(parts)


def measured_records(work: Path) -> dict[str, list[dict[str, Any]]]:
    """Finished stages under ``work/nodes`` (this experiment's and any other file's that shares the folder), by
    :func:`price_key`: their ``done.json`` seconds and threads (where recorded) and training samples. A training
    stage that resumed from a checkpoint is left out (its seconds are those of the steps it ran after resuming)."""
    import yaml

    out: dict[str, list[dict[str, Any]]] = {}
    for done in sorted((Path(work) / "nodes").glob("*/done.json")):
        try:
            rec = json.loads(done.read_text())
            label, seconds = str(rec["stage"]), float(rec["seconds"])
            params = yaml.safe_load((done.parent / "params.yaml").read_text()) or {}
            key = price_key(label, params, rec.get("argv"))
            samples = _samples(label.split("@")[0], params)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError):
            continue  # a record from before seconds were kept, or a half-written folder: no measurement
        if key is None or rec.get("resumed"):
            continue
        out.setdefault(key, []).append({"seconds": seconds, "threads": rec.get("threads"), "samples": samples})
    return out


def measured_estimate(node: Any, records: dict[str, list[dict[str, Any]]], threads: int) -> tuple[float, int] | None:
    """Core-hours of ``node`` from the finished stages of its :func:`price_key` (mean core-seconds, per training
    sample for a training stage), and how many records priced it; None without records. ``threads``: what a record
    that does not say ran with (the plan's)."""
    recs = [r for r in records.get(str(price_key(node.label, node.params, node.argv)), []) if r["seconds"] > 0]
    if node.stage in TRAINING:
        recs = [r for r in recs if r["samples"] > 0]
    if not recs:
        return None
    core_s = [r["seconds"] * float(r["threads"] or threads) for r in recs]
    if node.stage in TRAINING:
        per_sample = sum(c / r["samples"] for c, r in zip(core_s, recs, strict=True)) / len(recs)
        return per_sample * _samples(node.stage, node.params) / 3600, len(recs)
    return sum(core_s) / len(core_s) / 3600, len(recs)


def stage_cores(workers: int, threads: int, cores: int) -> float:
    """Cores one stage has while ``workers`` stages of ``threads`` threads each share ``cores``: its threads, or its
    share of the cores when the threads outnumber them."""
    return threads / max(1.0, workers * threads / max(cores, 1))


def schedule_hours(plan: Any, costs: dict[str, dict[str, float]], workers: int, per_stage_cores: float) -> float:
    """Hours until the last stage left finishes when ``workers`` run the stages, a free worker taking the first stage
    (in plan order) whose inputs have finished; a stage takes its core-hours over ``per_stage_cores``."""
    free = [0.0] * max(workers, 1)
    done = {n.key: n.done() for n in plan.nodes.values()}  # asked once: a running sweep may finish one meanwhile
    finish = {k: 0.0 for k, d in done.items() if d}
    left = [n for n in plan.nodes.values() if not done[n.key]]

    def finished(dep: str, now: float) -> bool:  # a key outside the plan is nothing to wait for
        return dep not in done or (dep in finish and finish[dep] <= now)

    while left:
        w = min(range(len(free)), key=free.__getitem__)
        now = free[w]
        ready = next((n for n in left if all(finished(d, now) for d in n.deps)), None)
        if ready is None:  # wait for the next stage to finish
            later = [f for f in finish.values() if f > now]
            if not later:
                raise ValueError(f"the stages {[n.label for n in left]} wait for stages that never run")
            free[w] = min(later)
            continue
        hours = costs[ready.key]["cpu_h"]
        finish[ready.key] = free[w] = now + (0.0 if hours != hours else hours / per_stage_cores)  # NaN: no rate
        left.remove(ready)
    return max(finish.values(), default=0.0)


def experiment_report(plan: Any) -> str:
    """The dry run's text: every cell, every distinct stage with its estimate, the totals of what is left to run."""
    exp = plan.experiment
    lines = [
        f"experiment {exp.name}: {len(exp.variants)} variant(s) x {len(exp.seeds)} seed(s) = {len(plan.cells)} cells,"
        f" {len(plan.nodes)} distinct stages ({sum(n.done() for n in plan.nodes.values())} done)",
        f"score: {exp.score.task} on {exp.score.dataset}, {exp.score.metric}, model {exp.score.model},"
        f" tiling {exp.score.tiling}, " + (f"the first {exp.score.limit} images" if exp.score.limit else "every image"),
        f"reference: {exp.reference.label}",
        "",
        "cells:",
    ]
    for i, c in enumerate(plan.cells):
        state = "done" if plan.score_node(i).done() else "to run"
        lines.append(f"  {i + 1:>3}. {c.label}  [{state}]")
    lines += ["", f"{'stage':<28} {'cells':>5} {'core h':>8} {'GPU h':>8} {'written':>10}  state, priced by"]
    workers, threads = max(exp.workers, 1), stage_threads(exp)
    records = measured_records(plan.work)
    finished = {n.key: n.done() for n in plan.nodes.values()}  # each done.json read once here
    costs, basis = {}, {}
    for n in plan.nodes.values():
        costs[n.key] = stage_estimate(n)
        cuda = on_gpu(n)
        got = None if finished[n.key] or cuda else measured_estimate(n, records, threads)  # records are CPU's
        if got is not None:
            costs[n.key]["cpu_h"] = got[0]
            basis[n.key] = f"measured ({got[1]} finished {n.label})"
        elif finished[n.key]:
            basis[n.key] = "-"
        else:
            basis[n.key] = "GPU rate (cuda)" if cuda else "rate" if n.stage != "benchmark" else "not priced"
    users: dict[str, int] = {}
    for labels in plan.cell_nodes:
        for k in labels.values():
            users[k] = users.get(k, 0) + 1
    total = {"cpu_h": 0.0, "gpu_h": 0.0, "bytes": 0.0}
    for n in plan.nodes.values():
        done = finished[n.key]
        if not done:
            for k in total:
                v = costs[n.key].get(k, 0.0)
                total[k] += 0.0 if v != v else v  # NaN: no measured rate
        gpu = costs[n.key].get("gpu_h", 0.0)
        lines.append(
            f"{n.label + '-' + n.key[:8]:<28} {users.get(n.key, 0):>5} {costs[n.key].get('cpu_h', 0.0):>8.3f} "
            f"{'-' if gpu != gpu else f'{gpu:.4f}':>8} {costs[n.key].get('bytes', 0.0) / 1e6:>8.1f} MB  "
            + ("done" if done else "to run")
            + f", {basis[n.key]}"
        )
    cores = min(os.cpu_count() or 1, workers * threads)
    wall = schedule_hours(plan, costs, workers, stage_cores(workers, threads, cores))
    unpriced = sum(basis[k] == "not priced" for k in basis)
    gpu_stages = sum(basis[k] == "GPU rate (cuda)" for k in basis)
    lines += [
        "",
        f"left to run: {total['cpu_h']:.2f} core-hours (about {wall * 60:.0f} min with {workers} worker(s) of"
        f" {threads} thread(s) on {cores} of this machine's {os.cpu_count() or 1} core(s), each stage after the ones"
        " it reads)"
        + (f", plus {unpriced} benchmark stage(s) not priced" if unpriced else "")
        + (f", plus {gpu_stages} stage(s) on cuda, in GPU-hours only and not in the wall time" if gpu_stages else "")
        + f"; {total['gpu_h']:.3f} GPU-hours where a GPU rate was measured; {total['bytes'] / 1e6:.0f} MB written",
        "priced by: the stages of the same kind already finished in this work folder where there are any (label,"
        " model size, precision, prior; a benchmark's command; their measured seconds x threads, per training"
        " sample), else the rates in docs/bench_train.json (x the cores they were measured on), docs/bench_data.json"
        " and docs/bench_train_cuda.json (GPU, bf16);"
        " a benchmark stage only from finished ones; an estimate, not a measurement",
    ]
    bf16 = sorted({n.stage for n in plan.nodes.values() if (n.params.get(n.stage) or {}).get("precision") == "bf16"})
    lines += rate_kind_lines(_rates()["bench_train"], bf16)
    return "\n".join(lines)


def rate_kind_lines(table: dict[str, Any], bf16_stages: list[str], here: dict[str, str] | None = None) -> list[str]:
    """What CPU the training rates were measured on, and a warning where this CPU is of another kind for the
    precision the plan trains in: a bf16 step is 10-100x slower than fp32 without native bf16 and faster with it,
    so a bf16 rate from one kind prices nothing on the other."""
    hw = table.get("hardware") or {}
    if not hw:
        return ["CPU training rates: none measured (docs/bench_train.json missing); CPU hours are not priced"]
    if here is None:
        from ipt.device import describe

        here = describe()
    there = f"{hw.get('cpu_model', '?')}, {hw.get('cpu_capability', '?')}, native bf16 {hw.get('fast_bf16', '?')}"
    mine = f"{here.get('cpu_model', '?')}, {here.get('cpu_capability', '?')}, native bf16 {here.get('fast_bf16', '?')}"
    out = [f"CPU training rates measured on: {there}; this CPU: {mine}"]
    if bf16_stages and str(hw.get("fast_bf16")) != str(here.get("fast_bf16")):
        out.append(
            f"warning: {', '.join(bf16_stages)} train(s) in bf16, and the bf16 rate was measured on a CPU "
            + ("without" if str(hw.get("fast_bf16")) != "True" else "with")
            + " native bf16 while this one "
            + ("has it" if str(here.get("fast_bf16")) == "True" else "has none")
            + ": their CPU hours do not hold here (rerun benchmarks/bench_train.py on this CPU to price them)"
        )
    return out
