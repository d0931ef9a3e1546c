"""An experiment's cells as the pipeline's own stages: shard -> corrupt@T -> pretrain -> finetune@T [-> refine@T]
-> benchmark, each the same ``ipt <stage>`` command that DVC runs, reading a params file written for it.

A stage is a :class:`Node` keyed by what decides its output: its params section (less the keys that only say
where files go or how many processes write them), the keys of the stages it reads, and the sha256 of the code it
imports (``ipt.codedeps``, as DVC's deps). Cells whose inputs agree share a node, so a sweep over fine-tuning
trains its pretrained model once; a node whose folder holds ``done.json`` with its key is not run again, so a
killed sweep resumes where it stopped, and a change of params, code or data makes new keys, never a stale reuse.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipt.experiment.spec import Cell, Experiment

# Keys that say where a stage's files go, or how many processes write them: not part of a node's key (the data
# stages write the same bytes for any executor and worker count; docs/data_pipeline.md).
PLACE_KEYS = frozenset(
    {
        "out",
        "shards",
        "clean",
        "init",
        "base",
        "workers",
        "executor",
        "dask_address",
        "num_workers",
        "resume",
        "device",
        "checkpoint_every",
        "keep_checkpoints",
        "threads",
    }
)
DONE = "done.json"


@dataclass
class Node:
    stage: str  # shard | corrupt | pretrain | finetune | refine | benchmark
    task: str | None
    key: str
    deps: tuple[str, ...]  # keys of the nodes it reads
    params: dict[str, Any] = field(repr=False)
    argv: list[str] = field(default_factory=list)  # `python -m ipt.cli` arguments
    folder: Path = Path()
    views: dict[str, str] = field(default_factory=dict)  # pairs/<task> -> the corrupt node folder it links to
    cost: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.stage}@{self.task}" if self.task and self.stage != "shard" else self.stage

    @property
    def run(self) -> Path:
        """Where the stage writes (``out``)."""
        return self.folder / "run"

    def done(self) -> bool:
        try:
            return json.loads((self.folder / DONE).read_text()).get("key") == self.key
        except (OSError, ValueError, AttributeError):
            return False


@dataclass
class Plan:
    experiment: Experiment
    work: Path
    nodes: dict[str, Node]  # key -> node, in an order where every node comes after the ones it reads
    cells: list[Cell]
    cell_nodes: list[dict[str, str]]  # per cell: stage label -> node key (the score node is "score")

    def score_node(self, i: int) -> Node:
        return self.nodes[self.cell_nodes[i]["score"]]

    def training_nodes(self, i: int) -> list[Node]:
        return [
            self.nodes[k]
            for lab, k in self.cell_nodes[i].items()
            if lab.split("@")[0] in ("pretrain", "finetune", "refine")
        ]


def _key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """A stage's effective section: its keys plus the top-level seed and patch_size it inherits."""
    sec = dict(params.get(name) or {})
    for g in ("seed", "patch_size"):
        if g not in sec and params.get(g) is not None:
            sec[g] = params[g]
    return {k: v for k, v in sec.items() if k not in PLACE_KEYS}


def _code(command: str, corruption: str | None = None) -> str:
    from ipt.codedeps import stage_digest

    return stage_digest(command, corruption)


def pretrain_tasks(params: dict[str, Any]) -> list[str]:
    tasks = (params.get("pretrain") or {}).get("tasks")
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t]
    return list(tasks or ((params.get("corrupt") or {}).get("tasks") or {}))


class _Builder:
    def __init__(self, exp: Experiment, work: Path) -> None:
        self.exp, self.work = exp, work
        self.nodes: dict[str, Node] = {}
        self.codes: dict[tuple[str, str | None], str] = {}

    def code(self, command: str, corruption: str | None = None) -> str:
        if (command, corruption) not in self.codes:
            self.codes[command, corruption] = _code(command, corruption)
        return self.codes[command, corruption]

    def add(self, stage: str, task: str | None, inputs: dict[str, Any], deps: list[Node], params: dict) -> Node:
        key = _key({"stage": stage, "task": task, "inputs": inputs, "deps": [d.key for d in deps]})
        if key not in self.nodes:
            name = f"{stage}@{task}" if task and stage != "shard" else stage
            folder = self.work / "nodes" / f"{name}-{key[:12]}"
            self.nodes[key] = Node(stage, task, key, tuple(d.key for d in deps), copy.deepcopy(params), [], folder)
        return self.nodes[key]

    def cell(self, cell: Cell) -> dict[str, str]:
        p = cell.params
        score = self.exp.score
        shard = self.add("shard", None, {"shard": _section(p, "shard"), "code": self.code("shard")}, [], p)
        shard.params["shard"] = {**p["shard"], "out": str(shard.run)}
        shard.argv = ["shard", "--quiet"]
        tasks = pretrain_tasks(p)
        needed = list(dict.fromkeys([*tasks, score.task]))
        corrupt: dict[str, Node] = {}
        for t in needed:
            entry = p["corrupt"]["tasks"][t]
            sec = {k: v for k, v in _section(p, "corrupt").items() if k != "tasks"}
            inputs = {"corrupt": sec, "entry": entry, "code": self.code("corrupt", entry.get("name"))}
            n = self.add("corrupt", t, inputs, [shard], p)
            n.params["corrupt"] = {**p["corrupt"], "clean": str(shard.run), "out": str(n.run)}
            n.argv = ["corrupt", "--task", t, "--quiet"]
            corrupt[t] = n
        labels = {"shard": shard.key, **{f"corrupt@{t}": corrupt[t].key for t in needed}}
        pre_inputs = {
            "pretrain": _section(p, "pretrain"),
            "tasks": tasks,
            "model": p.get("model"),
            "code": self.code("pretrain"),
        }
        pre = self.add("pretrain", None, pre_inputs, [corrupt[t] for t in tasks], p)
        pre.params["pretrain"] = {
            **p["pretrain"],
            "tasks": tasks,
            "shards": str(pre.folder / "pairs"),
            "out": str(pre.run),
        }
        pre.argv = ["pretrain", "--log-every", "0"]
        pre.views = {t: str(corrupt[t].run) for t in tasks}
        labels["pretrain"] = pre.key
        t = score.task
        ft_inputs = {"finetune": _section(p, "finetune"), "code": self.code("finetune")}
        ft = self.add("finetune", t, ft_inputs, [pre, corrupt[t]], p)
        ft.params["finetune"] = {
            **p["finetune"],
            "shards": str(ft.folder / "pairs"),
            "init": str(pre.run),
            "out": str(ft.run),
        }
        ft.argv = ["finetune", "--task", t, "--log-every", "0"]
        ft.views = {t: str(corrupt[t].run)}
        labels[f"finetune@{t}"] = ft.key
        model, model_node = ft.run / "model.pt", ft
        if score.model == "refine":
            rf_inputs = {"refine": _section(p, "refine"), "code": self.code("refine")}
            rf = self.add("refine", t, rf_inputs, [ft, corrupt[t]], p)
            rf.params["refine"] = {
                **p.get("refine", {}),
                "base": str(ft.run / "model.pt"),
                "shards": str(rf.folder / "pairs"),
                "out": str(rf.run),
            }
            rf.argv = ["refine", "--task", t]
            rf.views = {t: str(corrupt[t].run)}
            labels[f"refine@{t}"] = rf.key
            model, model_node = rf.run / "model.pt", rf
        bench_inputs = {
            "score": {k: v for k, v in vars(score).items() if k != "metric"},
            "code": self.code("benchmark"),
        }
        if score.task in ((p.get("corrupt") or {}).get("tasks") or {}):
            bench_inputs["entry"] = p["corrupt"]["tasks"][score.task]
        b = self.add("benchmark", t, bench_inputs, [model_node], p)
        b.argv = [
            "benchmark",
            *("--task", t, "--model", str(model), "--root", score.root, "--datasets", score.dataset),
            *("--tiling", score.tiling, "--precision", score.precision, "--seed", str(score.seed)),
            *(("--limit", str(score.limit)) if score.limit else ()),
            *("--out", str(b.run / "report.json"), "--quiet"),
        ]
        labels["score"] = b.key
        return labels


def build(exp: Experiment, work: str | Path) -> Plan:
    """The plan of ``exp`` with its node folders under ``work`` (runs/experiments/<name> by default)."""
    b = _Builder(exp, Path(work))
    cells = exp.cells()
    cell_nodes = [b.cell(c) for c in cells]
    for n in b.nodes.values():
        n.cost = estimate(n)
    return Plan(exp, Path(work), b.nodes, cells, cell_nodes)


# ------------------------------------------------------------------------------------------------ cost


def _rates() -> dict[str, Any]:
    """Measured rates (docs/bench_train.json, docs/bench_data.json, docs/bench_train_cuda.json) where present."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    out: dict[str, Any] = {}
    for name in ("bench_train", "bench_data", "bench_train_cuda"):
        try:
            out[name] = json.loads((docs / f"{name}.json").read_text())
        except (OSError, ValueError):
            out[name] = {}
    return out


_RATES: dict[str, Any] | None = None


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


def estimate(node: Node) -> dict[str, float]:
    """CPU hours (at the rates measured on this project's 2-core CPU: docs/bench_*.json), GPU hours where a GPU rate
    for the model size was measured, and bytes written. An estimate, stated as one; 0 for a node already done."""
    global _RATES
    if _RATES is None:
        _RATES = _rates()
    rates, p = _RATES, node.params
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
    if node.stage in ("pretrain", "finetune", "refine"):
        sec = p.get(node.stage) or {}
        size = str((p.get("pretrain") or {}).get("model_size", "paper"))
        steps, batch = float(sec.get("steps", 0)), float(sec.get("batch_size", 8))
        precision = str(sec.get("precision", "fp32"))
        cpu = _train_rate(rates["bench_train"], size, "fp32" if precision == "auto" else precision)
        gpu = _train_rate(rates["bench_train_cuda"], size, "bf16")
        scale = 0.3 if node.stage == "refine" else 1.0  # PTG-RM's module is < 1M parameters beside a frozen base
        return {
            "cpu_h": steps * batch / cpu / 3600 * scale if cpu else float("nan"),
            "gpu_h": steps * batch / gpu / 3600 * scale if gpu else float("nan"),
            "bytes": 0.0,
        }
    return {"cpu_h": 0.0, "gpu_h": 0.0, "bytes": 0.0}  # benchmark: seconds on a tiny or small model


def cost_table(plan: Plan) -> str:
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
    lines += ["", f"{'stage':<28} {'cells':>5} {'CPU h':>8} {'GPU h':>8} {'written':>10}  state"]
    users: dict[str, int] = {}
    for labels in plan.cell_nodes:
        for k in labels.values():
            users[k] = users.get(k, 0) + 1
    total = {"cpu_h": 0.0, "gpu_h": 0.0, "bytes": 0.0}
    for n in plan.nodes.values():
        done = n.done()
        if not done:
            for k in total:
                v = n.cost.get(k, 0.0)
                total[k] += 0.0 if v != v else v  # NaN: no measured rate
        gpu = n.cost.get("gpu_h", 0.0)
        lines.append(
            f"{n.label + '-' + n.key[:8]:<28} {users.get(n.key, 0):>5} {n.cost.get('cpu_h', 0.0):>8.3f} "
            f"{'-' if gpu != gpu else f'{gpu:.4f}':>8} {n.cost.get('bytes', 0.0) / 1e6:>8.1f} MB  "
            + ("done" if done else "to run")
        )
    workers = max(exp.workers, 1)
    lines += [
        "",
        f"left to run: {total['cpu_h']:.2f} CPU-hours (about {total['cpu_h'] / workers * 60:.0f} min on {workers}"
        f" worker(s) if they do not slow each other; 2 cores share them here), {total['gpu_h']:.3f} GPU-hours where a"
        f" GPU rate was measured, {total['bytes'] / 1e6:.0f} MB written",
        "rates: docs/bench_train.json and docs/bench_data.json (this project's 2-core CPU, fp32),"
        " docs/bench_train_cuda.json (GPU, bf16); benchmark stages are not priced (seconds to minutes each on a CPU);"
        " an estimate, not a measurement",
    ]
    return "\n".join(lines)


def write_node_params(node: Node) -> Path:
    """The params file the node's command reads, and the pairs/<task> links to the corrupt nodes it trains on."""
    import yaml

    node.folder.mkdir(parents=True, exist_ok=True)
    path = node.folder / "params.yaml"
    text = yaml.safe_dump(node.params, sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    for task, target in node.views.items():
        link = node.folder / "pairs" / task
        link.parent.mkdir(exist_ok=True)
        if link.is_symlink() and os.readlink(link) == target:
            continue
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return path
