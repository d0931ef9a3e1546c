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

from ipt.experiment.spec import Cell, Experiment, ExperimentError

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
    code: tuple[str, str | None, str] = ("", None, "")  # (command, corruption, sha256 of its code) in the key

    def code_changed(self) -> bool:
        """Whether the code this stage imports differs now from the code its key was made with (the checkout
        changed while the sweep ran): running it would put new code's numbers under the old key."""
        return bool(self.code[0]) and _code(self.code[0], self.code[1]) != self.code[2]

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

    def add(
        self,
        stage: str,
        task: str | None,
        inputs: dict[str, Any],
        deps: list[Node],
        params: dict,
        corruption: str | None = None,
    ) -> Node:
        digest = self.code(stage, corruption)
        inputs = {**inputs, "code": digest}
        key = _key({"stage": stage, "task": task, "inputs": inputs, "deps": [d.key for d in deps]})
        if key not in self.nodes:
            name = f"{stage}@{task}" if task and stage != "shard" else stage
            folder = self.work / "nodes" / f"{name}-{key[:12]}"
            n = Node(stage, task, key, tuple(d.key for d in deps), copy.deepcopy(params), [], folder)
            n.code = (stage, corruption, digest)
            self.nodes[key] = n
        return self.nodes[key]

    def cell(self, cell: Cell) -> dict[str, str]:
        p = cell.params
        score = self.exp.score
        source = str(p["shard"].get("source", ""))
        shard_inputs = {"shard": _section(p, "shard"), "source": files_digest(source)}
        shard = self.add("shard", None, shard_inputs, [], p)
        shard.params["shard"] = {**p["shard"], "out": str(shard.run)}
        shard.argv = ["shard", "--quiet"]
        tasks = pretrain_tasks(p)
        needed = list(dict.fromkeys([*tasks, score.task]))
        corrupt: dict[str, Node] = {}
        for t in needed:
            entry = p["corrupt"]["tasks"][t]
            sec = {k: v for k, v in _section(p, "corrupt").items() if k != "tasks"}
            inputs = {"corrupt": sec, "entry": entry}
            n = self.add("corrupt", t, inputs, [shard], p, corruption=entry.get("name"))
            n.params["corrupt"] = {**p["corrupt"], "clean": str(shard.run), "out": str(n.run)}
            n.argv = ["corrupt", "--task", t, "--quiet"]
            corrupt[t] = n
        labels = {"shard": shard.key, **{f"corrupt@{t}": corrupt[t].key for t in needed}}
        pre_inputs = {
            "pretrain": _section(p, "pretrain"),
            "tasks": tasks,
            "model": p.get("model"),
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
        ft_inputs = {"finetune": _section(p, "finetune")}
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
            rf_inputs = {"refine": _section(p, "refine")}
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
            # `inputs` only where set: the keys of files written before it existed stay what they were
            "score": {k: v for k, v in vars(score).items() if k != "metric" and _keyed(k, v)},
            "benchmark": {k: v for k, v in (p.get("benchmark") or {}).items() if k not in ("model", "out")},
            "dataset": files_digest(str(Path(score.root) / score.dataset)),
        }
        if score.task in ((p.get("corrupt") or {}).get("tasks") or {}):
            bench_inputs["entry"] = p["corrupt"]["tasks"][score.task]
        b = self.add("benchmark", t, bench_inputs, [model_node], p)
        b.argv = [
            "benchmark",
            *("--task", t, "--model", str(model), "--root", score.root, "--datasets", score.dataset),
            *("--tiling", score.tiling, "--precision", score.precision, "--seed", str(score.seed)),
            *("--protocol", "ipt", "--limit", str(score.limit)),
            *(("--inputs", score.inputs) if score.inputs else ()),
            *(("--prior-probe", score.prior_probe) if score.prior_probe != "own" else ()),
            *("--out", str(b.run / "report.json"), "--quiet"),
        ]
        labels["score"] = b.key
        return labels


def _keyed(name: str, value: Any) -> bool:
    """Whether a score field enters the benchmark stage's key: the fields added later only where set away from
    their default, so the keys of files written before them stay what they were."""
    return {"inputs": value is not None, "prior_probe": value != "own"}.get(name, True)


def build(exp: Experiment, work: str | Path) -> Plan:
    """The plan of ``exp`` with its node folders under ``work`` (runs/experiments/<name> by default). Two cells that
    would share their scored stage are refused: a factor or seed that reaches no stage of the score cannot answer."""
    b = _Builder(exp, Path(work))
    cells = exp.cells()
    cell_nodes = [b.cell(c) for c in cells]
    seen: dict[str, Cell] = {}
    for c, labels in zip(cells, cell_nodes, strict=True):
        if labels["score"] in seen:
            raise ExperimentError(
                f"{exp.path}: cells '{seen[labels['score']].label}' and '{c.label}' run the same stages: what tells"
                " them apart reaches no stage of the score (a seed stage or a param that no stage reads)"
            )
        seen[labels["score"]] = c
    return Plan(exp, Path(work), b.nodes, cells, cell_nodes)


@functools.lru_cache(maxsize=64)
def files_digest(source: str) -> str:
    """What a data stage's key knows of its input files: for a local folder the sha256 of every file's relative
    path and size (cheap for ImageNet's 1.28 M files, and a changed or added image changes it); else the source
    name itself (``skimage``: with scikit-image's version; a tarball or s3:// URL: its name only)."""
    folder = Path(source)
    if source == "skimage":
        import skimage

        return f"skimage {skimage.__version__}"
    if folder.is_file():
        return f"{source} {folder.stat().st_size}"
    if not folder.is_dir():
        return source
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f"{f.relative_to(folder).as_posix()}\0{f.stat().st_size}\0".encode())
    return h.hexdigest()


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
