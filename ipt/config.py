"""Typed, frozen configuration objects with strict ``from_dict`` (unknown keys and wrong types are errors)."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from ipt.errors import IPTError

# The tasks of the paper, in the order of the official six-task pretraining checkpoint (IPT_pretrain.pt).
# This order is inferred from the MindSpore training code (`--scale 2+3+4+1+1+1`); it is used only by
# `ipt.checkpoint` when it reads an official multi-task file. Everything else addresses tasks by name.
OFFICIAL_PRETRAIN_TASKS: tuple[str, ...] = ("sr_x2", "sr_x3", "sr_x4", "derain", "denoise_s30", "denoise_s50")

# The project's seed (params.yaml `seed`): shard crops, corruptions, training, benchmark noise. One value, one home.
DEFAULT_SEED = 20210507


class ConfigError(IPTError):
    """A configuration value is unknown, missing or of the wrong type."""


class UnknownTaskError(ConfigError, KeyError):
    """A task the model does not have (also a ``KeyError``, as a lookup by name)."""


def _check_type(cls_name: str, name: str, value: Any, expected: Any) -> None:
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
    }.get(str(expected), True)
    if not ok:
        raise ConfigError(f"{cls_name}.{name}: expected {expected}, got {type(value).__name__} ({value!r})")


def strict_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a dataclass from a mapping, refusing unknown keys and scalar values of the wrong type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown key(s) {unknown}; known: {sorted(fields)}")
    for name, value in data.items():
        _check_type(cls.__name__, name, value, fields[name].type)
    return cls(**data)


@dataclass(frozen=True)
class ModelSpec:
    """Hyper-parameters of an IPT network. Defaults are the paper's (and the released checkpoints') size.

    ``tasks`` is an ordered tuple of ``(task_name, scale)`` pairs: task i owns ``head.i``, ``tail.i`` and row i of
    the query embedding, exactly as the official state dict lays them out. ``mlp`` is the official ``not no_mlp``
    (the body then has ``linear_encoding``, ``mlp_head`` and the per-task ``query_embed``). ``image_residual`` (not
    in the paper, off for every released file): output = the task's baseline + the tail's correction, same keys;
    docs/training.md#the-image-residual-switch-cpu-sized-runs.
    """

    n_feats: int = 64
    patch_size: int = 48
    patch_dim: int = 3
    num_heads: int = 12
    num_layers: int = 12
    num_queries: int = 0  # 0 = one query per task
    dropout: float = 0.0
    mlp: bool = True
    pos_every: bool = False
    no_pos: bool = False
    no_norm: bool = False
    image_residual: bool = False
    out_proj_bias: bool = False  # some torch 1.5-1.8 builds saved `out_proj.bias`; honoured if a file has it
    n_colors: int = 3
    rgb_range: int = 255
    tasks: tuple[tuple[str, int], ...] = field(default=(("sr_x2", 2),))

    def __post_init__(self) -> None:
        tasks = tuple((str(t), int(s)) for t, s in self.tasks)
        object.__setattr__(self, "tasks", tasks)
        if not tasks:
            raise ConfigError("ModelSpec.tasks: at least one task is required")
        names = [t for t, _ in tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"ModelSpec.tasks: duplicate task names in {names}")
        for t, s in tasks:
            if s not in (1, 2, 3, 4, 8):
                raise ConfigError(f"ModelSpec.tasks: task {t!r} has unsupported scale {s} (1, 2, 3, 4 or 8)")
        for name in ("n_feats", "num_layers", "num_heads", "patch_dim", "patch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ModelSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.patch_size % self.patch_dim:
            raise ConfigError(
                f"ModelSpec: patch_size {self.patch_size} is not a multiple of patch_dim {self.patch_dim}"
            )
        if self.embedding_dim % self.num_heads:
            raise ConfigError(
                f"ModelSpec: token dim {self.embedding_dim} is not divisible by num_heads {self.num_heads}"
            )
        if self.mlp and 0 < self.num_queries < len(tasks):
            raise ConfigError(f"ModelSpec: num_queries {self.num_queries} < number of tasks {len(tasks)}")

    @property
    def embedding_dim(self) -> int:
        return self.n_feats * self.patch_dim * self.patch_dim

    @property
    def hidden_dim(self) -> int:
        return 4 * self.embedding_dim

    @property
    def seq_length(self) -> int:
        return (self.patch_size // self.patch_dim) ** 2

    @property
    def queries(self) -> int:
        return self.num_queries or len(self.tasks)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t for t, _ in self.tasks)

    def scale_of(self, task: str) -> int:
        return self.tasks[self.index_of(task)][1]

    def index_of(self, task: str) -> int:
        try:
            return self.task_names.index(task)
        except ValueError:
            raise UnknownTaskError(f"task {task!r} is not in this model; it has {list(self.task_names)}") from None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tasks"] = [list(t) for t in self.tasks]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        data = dict(data)
        if "tasks" in data:
            data["tasks"] = _task_scales(data["tasks"])
        return strict_from_dict(cls, data)

    @classmethod
    def for_tasks(cls, tasks: Any, **kwargs: Any) -> ModelSpec:
        """A spec for ``tasks``: ``{name: scale}``, ``(name, scale)`` pairs, or the names of paper tasks (whose scale
        the name says: ``sr_x3`` -> 3; any other task needs its scale, from its corruption: ipt.tasks)."""
        return cls(tasks=_task_scales(tasks), **kwargs)


def _task_scales(tasks: Any) -> tuple[tuple[str, int], ...]:
    from ipt.tasks import TaskError, task_scale

    if isinstance(tasks, dict):
        tasks = list(tasks.items())
    out = []
    for t in tasks:
        if isinstance(t, str):
            try:
                out.append((t, task_scale(t)))
            except TaskError as e:
                raise ConfigError(f"ModelSpec.tasks: {e}; give it as (name, scale)") from None
        else:
            name, scale = t
            out.append((str(name), int(scale)))
    return tuple(out)
