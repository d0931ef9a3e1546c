"""An experiment file, read and checked whole before anything runs; its cells (variant x seed) with their params.

The file's keys (docs/experiments.md has an annotated example):

    question:  one line: what the experiment asks (printed atop its report)
    params:    the params file the cells start from (default: params.yaml beside the experiments/ folder)
    base:      overrides of that file shared by every cell: nested mappings or dotted paths
    factors:   param path -> list of values; the cells take every combination (a grid)
    variants:  name -> overrides (dotted paths): named variants where a grid does not fit; crossed with factors
    reference: the variant the others are paired against: a variant name, or factor values {path: value}
    seeds:     the seeds; each cell sets ``<stage>.seed`` of every stage in ``seed_stages``
    seed_stages: the stages whose seed is the cell's (default: pretrain, finetune, refine; data stays at the base seed)
    score:     {task, dataset, metric (psnr_y | ssim_y | psnr_rgb), model (finetune | refine), limit, tiling,
                precision, root, seed}: what answers the question
    engine:    {workers, threads, work}: cells in parallel (Dask workers), torch threads per stage, and the stage
               folders (default runs/experiments/<name>; files that name one folder share the stages they agree on)

Every error is one line naming the file and the key: :class:`ExperimentError`.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipt.errors import IPTError

# Sections that a subcommand reads (checked against its own params keys); the others are checked against params.yaml.
COMMAND_SECTIONS = ("shard", "corrupt", "pretrain", "finetune", "refine", "benchmark")
# What a cell may vary: the top-level keys its stages inherit and the sections of the stages it runs. `benchmark.*`
# is the score's (set in `score:`); `model:`, `dag:`, `launch:` and `refine_tasks` are read by no stage of a cell.
VARIABLE_TOP = ("seed", "patch_size")
VARIABLE_SECTIONS = ("shard", "corrupt", "pretrain", "finetune", "refine")
# Keys the plan sets itself (where each stage reads and writes): a value given for them would be overwritten.
WIRED_KEYS = frozenset({"out", "shards", "clean", "init", "base", "resume"})
TRAINING_STAGES = ("pretrain", "finetune", "refine")
METRICS = ("psnr_y", "ssim_y", "psnr_rgb")
SCORED_MODELS = ("finetune", "refine")
TILINGS = ("official", "overlap")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
FILE_KEYS = {
    "question",
    "params",
    "base",
    "factors",
    "variants",
    "reference",
    "seeds",
    "seed_stages",
    "score",
    "engine",
}
SCORE_KEYS = {"task", "dataset", "metric", "model", "limit", "tiling", "precision", "root", "seed", "inputs"}
SCORE_KEYS |= {"prior_probe"}
ENGINE_KEYS = {"workers", "threads", "executor", "dask_address", "work"}


class ExperimentError(IPTError):
    """An experiment file that cannot run; the message names the file and the key."""


@dataclass(frozen=True)
class Variant:
    """One point of the design: its label and the param values that make it (dotted path -> value)."""

    label: str
    values: tuple[tuple[str, Any], ...]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)


@dataclass(frozen=True)
class Score:
    task: str
    dataset: str
    metric: str = "psnr_y"
    model: str = "finetune"
    limit: int = 0  # the first N images of the set (0: all of them, the paper's protocol)
    tiling: str = "official"
    precision: str = "fp32"
    root: str = ""
    seed: int = 0  # seed of the benchmark's noisy inputs: the same for every cell, so cells differ only by training
    inputs: str | None = None  # another task's test inputs at the same scale (generalisation; `ipt benchmark --inputs`)
    prior_probe: str = "own"  # a refiner's prior output: own, zero, next (`ipt benchmark --prior-probe`)


@dataclass(frozen=True)
class Cell:
    variant: Variant
    seed: int
    params: dict[str, Any] = field(compare=False, hash=False, repr=False)

    @property
    def label(self) -> str:
        return f"{self.variant.label} | seed {self.seed}"


@dataclass(frozen=True)
class Experiment:
    name: str
    path: Path
    question: str
    params_file: Path
    base: dict[str, Any]  # params.yaml with the experiment's base overrides, before any factor
    factors: dict[str, list[Any]]
    variants: list[Variant]
    reference: Variant
    seeds: list[int]
    seed_stages: tuple[str, ...]
    score: Score
    workers: int = 1
    threads: int = 0  # 0: cores / workers
    executor: str = "dask"
    dask_address: str | None = None
    work: str | None = None  # the stage folders (default runs/experiments/<name>); files naming one share stages
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def cells(self) -> list[Cell]:
        return [Cell(v, s, cell_params(self, v, s)) for v in self.variants for s in self.seeds]


def _fail(path: Path, key: str, problem: str) -> ExperimentError:
    return ExperimentError(f"{path}: {key}: {problem}")


def set_path(params: dict[str, Any], dotted: str, value: Any) -> None:
    """``params[a][b][c] = value`` for ``a.b.c`` (mappings made on the way; a mapping value replaces, never merges:
    a corruption entry given whole drops the old function's arguments)."""
    node = params
    *parents, last = dotted.split(".")
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[last] = copy.deepcopy(value)


def get_path(params: dict[str, Any], dotted: str) -> Any:
    """``params[a][b][c]`` for ``a.b.c``; None where a key is missing."""
    node: Any = params
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def flatten(overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted paths of a nested override mapping. A dotted key stays one path; a corruption entry
    (``corrupt.tasks.<task>``) is flattened to its keyword arguments."""
    out: dict[str, Any] = {}
    for k, v in overrides.items():
        path = f"{prefix}{k}"
        entry = path.startswith("corrupt.tasks.") and path.count(".") == 2  # a whole corruption entry: one value
        deep = path.count(".") < 1 or path == "corrupt.tasks"
        if isinstance(v, dict) and v and not entry and (deep or path.split(".")[0] not in COMMAND_SECTIONS):
            out.update(flatten(v, path + "."))
        else:
            out[path] = v
    return out


def check_path(file: Path, key: str, dotted: str, params: dict[str, Any], value: Any = None) -> None:
    """Refuse a param path the pipeline does not read, naming ``key`` of ``file``."""
    from ipt.cli.params import section_keys

    parts = dotted.split(".")
    head = parts[0]
    if any(not p for p in parts):
        raise _fail(file, key, f"'{dotted}' is not a param path (empty part)")
    if head == "benchmark":
        raise _fail(file, key, f"'{dotted}': the scoring is set in `score:` (task, dataset, metric, limit, ...)")
    if head in params and head not in VARIABLE_TOP + VARIABLE_SECTIONS:
        varied = list(VARIABLE_TOP + VARIABLE_SECTIONS)
        raise _fail(file, key, f"'{dotted}': no stage of an experiment reads '{head}' (it varies {varied})")
    if head not in params and head not in COMMAND_SECTIONS:
        raise _fail(file, key, f"unknown param path '{dotted}': params has no '{head}' (it has {sorted(params)})")
    if head in VARIABLE_TOP:
        if len(parts) > 1:
            raise _fail(file, key, f"'{head}' is a single value; '{dotted}' names a key inside it")
        return
    if head in COMMAND_SECTIONS:
        if len(parts) > 1 and parts[1] in WIRED_KEYS:
            raise _fail(file, key, f"'{dotted}': the experiment wires each stage's inputs and outputs itself")
        if len(parts) == 1:
            raise _fail(file, key, f"'{dotted}' is a whole section; name a key in it ('{head}.<key>')")
        known = section_keys(head) or ()
        if parts[1] not in known:
            raise _fail(
                file, key, f"unknown param path '{dotted}': '{head}' has no key '{parts[1]}'; known: {list(known)}"
            )
        if len(parts) > 2 and dotted.startswith("corrupt.tasks."):
            _check_corruption_path(file, key, parts, params, value)
        elif len(parts) > 2:
            raise _fail(file, key, f"unknown param path '{dotted}': '{head}.{parts[1]}' holds no keys")
        return
    node: Any = params
    for i, p in enumerate(parts):
        if not isinstance(node, dict) or p not in node:
            where = ".".join(parts[:i]) or "params"
            raise _fail(file, key, f"unknown param path '{dotted}': '{where}' has no key '{p}'")
        node = node[p]


def _check_corruption_path(file: Path, key: str, parts: list[str], params: dict[str, Any], value: Any) -> None:
    tasks = (params.get("corrupt") or {}).get("tasks") or {}
    task = parts[2]
    if len(parts) == 3:
        if not isinstance(value, dict) or "name" not in value:
            raise _fail(file, key, f"corrupt.tasks.{task} must be a corruption entry {{name: ..., <its params>}}")
        return
    if task not in tasks:
        raise _fail(file, key, f"unknown task '{task}' in '{'.'.join(parts)}': corrupt.tasks has {sorted(tasks)}")
    if len(parts) > 4:
        raise _fail(file, key, f"'{'.'.join(parts)}': a corruption's parameter has no keys")
    import corruptions

    name = tasks[task].get("name")
    accepted, _ = corruptions.get(name).param_names() if name in corruptions.known() else (set(), set())
    if parts[3] != "name" and parts[3] not in accepted:
        raise _fail(
            file, key, f"corruption '{name}' of task '{task}' has no parameter '{parts[3]}'; known: {sorted(accepted)}"
        )


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ExperimentError(f"{path}: {what} not found") from None
    except (OSError, yaml.YAMLError) as e:
        raise ExperimentError(f"{path}: cannot read {what} ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ExperimentError(f"{path}: {what} must be a mapping")
    return data


def _int_list(file: Path, key: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not value:
        raise _fail(file, key, "needs a non-empty list of integers")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise _fail(file, key, f"every seed must be an integer, got {value}")
    if len(set(value)) != len(value):
        raise _fail(file, key, f"seeds repeat: {value}")
    return list(value)


def _label(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def project_root() -> Path:
    """Where the stages run and relative paths (params, score.root, --work) resolve: $IPT_PROJECT_DIR, else here."""
    import os

    return Path(os.environ.get("IPT_PROJECT_DIR") or Path.cwd()).resolve()


def load(path: str | Path, *, params_file: str | Path | None = None) -> Experiment:
    """Read and check ``path`` (an ``experiments/<name>.yaml``) whole: every refusal comes before any stage runs."""
    file = Path(path)
    data = _read_yaml(file, "experiment file")
    name = file.stem
    if not NAME_RE.match(name):
        raise ExperimentError(f"{file}: the file name '{name}' must be letters, digits, '_', '.', '-'")
    unknown = sorted(set(data) - FILE_KEYS)
    if unknown:
        raise _fail(file, unknown[0], f"unknown key; an experiment file has {sorted(FILE_KEYS)}")
    root = project_root()
    given = params_file if params_file is not None else data.get("params", "params.yaml")
    if not isinstance(given, str | Path) or not str(given):
        raise _fail(file, "params", f"must be a params file's path, got {given!r}")
    pfile = Path(given) if Path(given).is_absolute() else root / given
    try:
        params = _read_yaml(pfile, "params file")
    except ExperimentError as e:
        raise _fail(file, "params", str(e)) from None

    base_over = data.get("base") or {}
    if not isinstance(base_over, dict):
        raise _fail(file, "base", "must be a mapping of param overrides")
    base = copy.deepcopy(params)
    for dotted, value in flatten(base_over).items():
        check_path(file, f"base.{dotted}", dotted, base, value)
        set_path(base, dotted, value)

    factors = data.get("factors") or {}
    if not isinstance(factors, dict):
        raise _fail(file, "factors", "must map param paths to lists of values")
    for dotted, values in factors.items():
        if not isinstance(values, list) or not values:
            raise _fail(file, f"factors.{dotted}", "needs a non-empty list of values")
        if len({repr(v) for v in values}) != len(values):
            raise _fail(file, f"factors.{dotted}", f"values repeat: {values}")
        for v in values:
            check_path(file, f"factors.{dotted}", dotted, base, v)
    named = data.get("variants") or {}
    if not isinstance(named, dict):
        raise _fail(file, "variants", "must map variant names to param overrides")
    for label, over in named.items():
        if not isinstance(over, dict):  # {}: the base as it is (the reference a change is measured against)
            raise _fail(file, f"variants.{label}", "needs a mapping of param overrides (dotted paths; {}: the base)")
        for dotted, v in flatten(over).items():
            check_path(file, f"variants.{label}.{dotted}", dotted, base, v)
            if dotted in factors:
                raise _fail(file, f"variants.{label}.{dotted}", "is also a factor; set it in one place")
    if not factors and not named:
        raise _fail(file, "factors", "an experiment needs at least one factor (or named variants) to compare")

    variants: list[Variant] = []
    grid = list(itertools.product(*factors.values())) if factors else [()]
    for label, over in (named or {"": {}}).items():
        for combo in grid:
            values = tuple(zip(factors, combo, strict=True)) + tuple(flatten(over).items())
            shown = [f"{k.split('.')[-1]}={_label(v)}" for k, v in zip(factors, combo, strict=True)]
            variants.append(Variant(", ".join(([str(label)] if label else []) + shown), values))
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        twice = sorted({x for x in labels if labels.count(x) > 1})
        raise _fail(file, "factors", f"two variants print the same: {twice} (values that differ only in type?)")

    seeds = _int_list(file, "seeds", data.get("seeds"))
    score = _score(file, data.get("score"), base, root)
    scored = ("shard", "corrupt", "pretrain", "finetune") + (("refine",) if score.model == "refine" else ())
    stages = data.get("seed_stages", [s for s in TRAINING_STAGES if s in scored])
    if not isinstance(stages, list) or not stages or any(s not in scored for s in stages):
        ran = list(scored)
        raise _fail(file, "seed_stages", f"needs a non-empty list of the stages a cell runs before its score: {ran}")
    if score.model != "refine":
        varied = [f"factors.{k}" for k in factors]
        varied += [f"variants.{label}.{k}" for label, over in named.items() for k in flatten(over)]
        for k in varied:
            if k.split(".", 2)[-1].startswith("refine.") or k.startswith("factors.refine."):
                raise _fail(file, k, "the score is the fine-tuned model's (score.model: finetune): no cell runs refine")

    reference = _reference(file, data.get("reference"), variants, factors, named)
    engine = data.get("engine") or {}
    if not isinstance(engine, dict):
        raise _fail(file, "engine", f"a mapping with keys from {sorted(ENGINE_KEYS)}")
    for k in engine:
        if k not in ENGINE_KEYS:
            raise _fail(file, f"engine.{k}", f"unknown key; engine has {sorted(ENGINE_KEYS)}")
    workers = engine.get("workers", 1)
    threads = engine.get("threads", 0)
    for k, v, low in (("workers", workers, 1), ("threads", threads, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise _fail(file, f"engine.{k}", f"must be an integer >= {low}, got {v!r}")
    executor = engine.get("executor", "dask")
    if executor not in ("dask", "process", "serial"):
        raise _fail(file, "engine.executor", f"must be dask, process or serial, got {executor!r}")
    work = engine.get("work")
    if work is not None and (not isinstance(work, str) or not work.strip()):
        raise _fail(file, "engine.work", f"must be a folder (a path), got {work!r}")
    exp = Experiment(
        name=name,
        path=file,
        question=str(data.get("question") or "").strip(),
        params_file=pfile,
        base=base,
        factors={k: list(v) for k, v in factors.items()},
        variants=variants,
        reference=reference,
        seeds=seeds,
        seed_stages=tuple(stages),
        score=score,
        workers=workers,
        threads=threads,
        executor=executor,
        dask_address=engine.get("dask_address"),
        work=work,
        raw=data,
    )
    if score.prior_probe == "next":  # another image's g fits only a pooled prior, and needs another image
        if score.limit == 1:
            raise _fail(file, "score.limit", "the 'next' prior probe needs at least two images of the set")
        for v in variants:
            if (cell_params(exp, v, seeds[0]).get("refine") or {}).get("prior_spatial"):
                raise _fail(
                    file,
                    "score.prior_probe",
                    f"'next' gives each image another image's g, which only a pooled prior's fits; variant "
                    f"'{v.label}' sets refine.prior_spatial",
                )
    check_cells(exp)
    return exp


def _reference(
    file: Path, ref: Any, variants: list[Variant], factors: dict[str, list], named: dict[str, Any]
) -> Variant:
    if ref is None:
        raise _fail(
            file, "reference", "name the variant the others are paired against (a variant name or factor values)"
        )
    if isinstance(ref, str):
        hits = [v for v in variants if v.label == ref or v.label.split(", ")[0] == ref]
        if len(hits) != 1:
            raise _fail(
                file, "reference", f"'{ref}' names {len(hits)} variants; variants: {[v.label for v in variants]}"
            )
        return hits[0]
    if not isinstance(ref, dict) or not ref:
        raise _fail(file, "reference", "a variant name or a mapping of factor values")
    for k, v in ref.items():
        if k not in factors:
            raise _fail(file, f"reference.{k}", f"is not a factor; factors: {list(factors)}")
        if v not in factors[k]:
            raise _fail(file, f"reference.{k}", f"{v!r} is not one of the factor's values {factors[k]}")
    hits = [v for v in variants if all(v.as_dict().get(k) == x for k, x in ref.items())]
    if len(hits) != 1:
        raise _fail(file, "reference", f"matches {len(hits)} variants; give every factor's value (or a variant name)")
    return hits[0]


def _score(file: Path, score: Any, base: dict[str, Any], project: Path) -> Score:
    import os

    from ipt.data.testsets import BenchmarkDataError, resolve_datasets
    from ipt.tasks import TaskError

    if not isinstance(score, dict):
        raise _fail(file, "score", "needs {task, dataset, metric}: what answers the question")
    unknown = sorted(set(score) - SCORE_KEYS)
    if unknown:
        raise _fail(file, f"score.{unknown[0]}", f"unknown key; score has {sorted(SCORE_KEYS)}")
    for k in ("task", "dataset"):
        if not isinstance(score.get(k), str) or not score[k]:
            raise _fail(file, f"score.{k}", "is required (a name)")
    metric = score.get("metric", "psnr_y")
    if metric not in METRICS:
        raise _fail(file, "score.metric", f"{metric!r} is not one of {list(METRICS)}")
    model = score.get("model", "finetune")
    if model not in SCORED_MODELS:
        raise _fail(file, "score.model", f"{model!r} is not one of {list(SCORED_MODELS)}")
    tiling = score.get("tiling", "official")
    if tiling not in TILINGS:
        raise _fail(file, "score.tiling", f"{tiling!r} is not one of {list(TILINGS)}")
    limit = score.get("limit", 0)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise _fail(file, "score.limit", f"must be an integer >= 0 (0: every image), got {limit!r}")
    task = score["task"]
    tasks = (base.get("corrupt") or {}).get("tasks") or {}
    if task not in tasks:
        raise _fail(file, "score.task", f"'{task}' is not a task of corrupt.tasks {sorted(tasks)}: nothing trains it")
    root = str(
        score.get("root") or os.environ.get("IPT_BENCHMARK_ROOT") or (base.get("benchmark") or {}).get("root") or ""
    )
    root = str(Path(root) if Path(root).is_absolute() else project / root)
    try:
        resolve_datasets(Path(root), task, [score["dataset"]], tasks[task])
    except (BenchmarkDataError, TaskError) as e:
        raise _fail(file, "score.dataset", str(e)) from None
    seed = score.get("seed", base.get("seed", 0))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise _fail(file, "score.seed", f"must be an integer, got {seed!r}")
    precision = score.get("precision", "fp32")
    if precision not in ("fp32", "bf16", "auto"):
        raise _fail(file, "score.precision", f"{precision!r} is not fp32, bf16 or auto")
    inputs = _score_inputs(file, score.get("inputs"), task, tasks, Path(root), score["dataset"])
    probe = score.get("prior_probe", "own")
    if probe not in ("own", "zero", "next"):
        raise _fail(file, "score.prior_probe", f"{probe!r} is not own, zero or next")
    if probe != "own" and model != "refine":
        raise _fail(file, "score.prior_probe", "probes a PTG-RM refiner's prior: needs score.model refine")
    return Score(task, score["dataset"], metric, model, limit, tiling, precision, root, seed, inputs, probe)


def _score_inputs(file: Path, inputs: Any, task: str, tasks: dict[str, Any], root: Path, dataset: str) -> str | None:
    """``score.inputs``: a task whose test inputs the model is scored on instead of its own (a paper task name such
    as denoise_s10, or a corrupt.tasks entry), at the scale of ``task``; None when left out or the task itself."""
    from ipt.data.testsets import BenchmarkDataError, input_scale, resolve_datasets
    from ipt.tasks import TaskError, inputs_corruption, paper_kind

    if inputs is None or inputs == task:
        return None
    if not isinstance(inputs, str) or not (paper_kind(inputs) is not None or inputs in tasks):
        raise _fail(
            file, "score.inputs", f"{inputs!r} is neither a paper task (denoise_s10, sr_x3, ...) nor in corrupt.tasks"
        )
    try:
        theirs, ours = (input_scale(t, inputs_corruption(t, tasks, "corrupt.tasks")) for t in (inputs, task))
        if theirs != ours:
            raise _fail(
                file,
                "score.inputs",
                f"'{inputs}' inputs are at x{theirs}, the {task} model restores x{ours}",
            )
        resolve_datasets(root, inputs, [dataset], inputs_corruption(inputs, tasks, "corrupt.tasks"))
    except (BenchmarkDataError, TaskError) as e:
        raise _fail(file, "score.inputs", str(e)) from None
    return inputs


def cell_params(exp: Experiment, variant: Variant, seed: int) -> dict[str, Any]:
    """The full params of one cell: the base, the variant's values, the seed of each seed stage."""
    params = copy.deepcopy(exp.base)
    for dotted, value in variant.values:
        set_path(params, dotted, value)
    for stage in exp.seed_stages:
        set_path(params, f"{stage}.seed", seed)
    return params


def check_cells(exp: Experiment) -> None:
    """Every cell's sections through the subcommands' own value checks (types, choices) and every corruption entry
    through the registry's trial run: a bad value is refused here, naming the experiment file, not hours later."""
    import argparse
    import tempfile

    import yaml

    import corruptions
    from ipt.cli.commands import UserError
    from ipt.cli.params import check_param_values, params_section
    from ipt.cli.parsing import build_parser

    subs: dict[str, argparse.ArgumentParser | None] = {}
    seen: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        for cell in exp.cells():
            text = yaml.safe_dump(cell.params, sort_keys=True)
            if text in seen:
                continue
            seen.add(text)
            pfile = Path(tmp) / "params.yaml"
            pfile.write_text(text)
            for cmd in COMMAND_SECTIONS:
                if cmd not in cell.params:
                    continue
                if cmd not in subs:
                    subs[cmd] = build_parser(cmd)[1]
                try:
                    section = params_section(pfile, cmd)
                    check_param_values(pfile, cmd, section, subs[cmd])
                except UserError as e:
                    raise ExperimentError(
                        f"{exp.path}: {cell.variant.label}: {str(e).replace(str(pfile) + ': ', '')}"
                    ) from None
            for task, entry in ((cell.params.get("corrupt") or {}).get("tasks") or {}).items():
                try:
                    kw = {k: v for k, v in entry.items() if k != "name"}
                    corruptions.check_params(entry.get("name"), kw)
                except (KeyError, TypeError, ValueError) as e:
                    raise ExperimentError(f"{exp.path}: corrupt.tasks.{task}: {str(e).strip(chr(39))}") from None
            tasks = (cell.params.get("pretrain") or {}).get("tasks") or list(
                (cell.params.get("corrupt") or {}).get("tasks") or {}
            )
            known = (cell.params.get("corrupt") or {}).get("tasks") or {}
            missing = [t for t in tasks if t not in known]
            if missing:
                raise ExperimentError(
                    f"{exp.path}: pretrain.tasks: {missing} not in corrupt.tasks {sorted(known)} ({cell.variant.label})"
                )
