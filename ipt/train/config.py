"""Frozen, strict configurations of the two training stages (unknown keys and wrong types are errors).

Defaults (IPT_REFERENCE section 4): docs/training.md#the-recipe-ipt_reference-section-4.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ipt.config import DEFAULT_SEED, OFFICIAL_PRETRAIN_TASKS, ModelSpec, strict_from_dict
from ipt.device import TRAIN_PRECISIONS
from ipt.train.errors import TrainingError
from ipt.train.losses import PIXEL_LOSSES
from ipt.train.schedule import SCHEDULES

# Named model sizes (ModelSpec keyword arguments; the tasks come from the stage's config).
MODEL_SIZES: dict[str, dict[str, Any]] = {
    "paper": {},  # ModelSpec defaults: n_feats 64, 48 px windows, 3x3 tokens, 12 heads, 12+12 layers (115.5 M)
    "small": {"n_feats": 16, "num_layers": 2, "num_heads": 4},  # 48 px windows, 144-dim tokens: CPU-trainable
    "tiny": {"n_feats": 8, "num_layers": 1, "num_heads": 2, "patch_size": 12},  # tests and smoke runs
}
_TUPLES = ("tasks", "task_weights", "milestones", "betas")
# Fields a resumed run may change; every other field must equal the checkpoint's (they change the numbers).
RESUMABLE_CHANGES = frozenset(
    {"steps", "resume", "num_workers", "checkpoint_every", "keep_checkpoints", "device", "export"}
)
EXPORTS = ("last", "best")
# What a checkpoint written before a field existed ran with: a resume compares its config with these filled in, so
# an old run is continued only with the behaviour it had (e.g. no augmentation) or refused, naming the field.
LEGACY_VALUES: dict[str, Any] = {
    "schedule": "step",
    "warmup_steps": 0,
    "min_lr": 0.0,
    "augment": False,
    "ema_decay": 0.0,
    "val_every": None,
    "val_dir": "",
    "val_fraction": 0.1,
    "val_samples": 32,
    "data_fraction": 1.0,
}


@dataclass(frozen=True)
class TrainConfig:
    """Fields shared by pre-training and fine-tuning.

    Data: ``shards`` is a root with one pair-shard folder per task (``<shards>/<task>/manifest.json``). Each of
    ``lanes`` independent WebDataset streams per task (0: one per row of the global batch) restarts from a seed of
    (seed, task, lane, segment) every ``stream_segment`` steps; see docs/training.md for why that makes runs
    resumable and identical for any number of ranks or DataLoader workers.
    """

    shards: str = "data/pairs"
    out: str = "runs/train"
    steps: int = 1000
    batch_size: int = 16
    lr: float = 5e-5
    schedule: str = "step"  # step (milestones x gamma: the paper's) | cosine (to min_lr at `steps`)
    milestones: tuple[int, ...] | None = None  # steps at which lr *= gamma; None: the stage's default
    gamma: float = 0.5
    warmup_steps: int = 0  # linear warm-up of either schedule over the first updates (0: none, the paper's)
    min_lr: float = 0.0  # where cosine ends
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max global grad norm; 0 = off (the reference does not clip)
    contrastive_weight: float = 0.1
    temperature: float = 0.07
    pixel_loss: str = "l1"  # l1 (the paper's) | charbonnier (sqrt(d^2 + eps^2) - eps, eps in grey levels)
    charbonnier_eps: float = 1.0
    seed: int = DEFAULT_SEED
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # step checkpoints kept besides the final model.pt
    lanes: int = 0
    shuffle_buffer: int = 64
    stream_segment: int = 1000
    num_workers: int = 0  # DataLoader workers per rank
    augment: bool = True  # random flips and 90-degree rotations of each (LQ, HR) pair, seeded per row and step
    # The share of the source images trained on: a draw per source image seeded by `seed`, nested (at one seed the
    # images of 0.25 are among those of 0.5), taken after the validation hold-out. 1: all (docs/training.md).
    data_fraction: float = 1.0
    ema_decay: float = 0.0  # EMA of the weights (0: off, the paper's); when on, the EMA is validated and exported
    # Validation every val_every steps (None: none) on val_dir's pair shards, or else on the source images
    # a seeded val_fraction of which is held out of training; val_samples pairs per task.
    val_every: int | None = None
    val_dir: str = ""
    val_fraction: float = 0.1
    val_samples: int = 32
    export: str = "last"  # which weights become model.pt: the last step's, or the best validated step's
    precision: str = "auto"  # auto: bf16 autocast where the device runs it natively (ipt.device), else fp32
    device: str = "auto"
    resume: bool = False

    stage: ClassVar[str] = "train"

    def __post_init__(self) -> None:
        for name in _TUPLES:
            value = getattr(self, name, None)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        # a pre-training of 0 steps writes the seeded initial weights: a fine-tune from scratch starts from them
        least = 0 if self.stage == "pretrain" else 1
        if self.steps < least:
            raise TrainingError(
                f"{type(self).__name__}.steps must be >= {least}, got {self.steps}"
                + (" (0 writes the seeded initial weights, the init of a from-scratch fine-tune)" if least == 0 else "")
            )
        positive = ("batch_size", "checkpoint_every", "stream_segment")
        for name in positive:
            if getattr(self, name) < 1:
                raise TrainingError(f"{type(self).__name__}.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lanes", "num_workers", "shuffle_buffer"):
            if getattr(self, name) < 0:
                raise TrainingError(f"{type(self).__name__}.{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            raise TrainingError(
                f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}: the newest step checkpoint is what "
                "--resume continues from after a crash (the final model.pt is always kept besides them)"
            )
        if "://" in str(self.shards) and not str(self.shards).startswith("file://"):
            raise TrainingError(
                f"shards {self.shards}: training reads pair shards from a local folder (remote URLs are not supported "
                "yet); fetch them first (`dvc pull`, or `aws s3 sync`) and pass that folder"
            )
        numbers = ("lr", "temperature", "gamma", "contrastive_weight", "grad_clip", "charbonnier_eps", "min_lr")
        numbers += ("ema_decay", "val_fraction", "data_fraction")
        for name in numbers:
            if not math.isfinite(getattr(self, name)):
                raise TrainingError(f"{type(self).__name__}.{name} must be a finite number, got {getattr(self, name)}")
        if self.lr <= 0 or self.temperature <= 0 or not 0 < self.gamma <= 1:
            raise TrainingError(f"{type(self).__name__}: need lr > 0, temperature > 0 and 0 < gamma <= 1")
        if self.contrastive_weight < 0 or self.grad_clip < 0:
            raise TrainingError(f"{type(self).__name__}: contrastive_weight and grad_clip must be >= 0")
        if self.pixel_loss not in PIXEL_LOSSES:
            raise TrainingError(f"unknown pixel_loss {self.pixel_loss!r}; known: {list(PIXEL_LOSSES)}")
        if self.charbonnier_eps <= 0:
            raise TrainingError(f"charbonnier_eps must be > 0, got {self.charbonnier_eps}")
        if self.precision not in TRAIN_PRECISIONS:
            raise TrainingError(f"unknown precision {self.precision!r}; known: {list(TRAIN_PRECISIONS)}")
        lanes = self.lanes or self.batch_size
        if self.batch_size % lanes:
            raise TrainingError(f"batch_size {self.batch_size} is not a multiple of lanes {lanes}")
        if self.milestones is not None and any(m < 1 for m in self.milestones):
            raise TrainingError(f"milestones must be steps >= 1, got {list(self.milestones)}")
        self._check_recipe_extras()

    def _check_recipe_extras(self) -> None:
        """Schedule, EMA, validation and export values: each refused in one line naming the param."""
        name = type(self).__name__
        if self.schedule not in SCHEDULES:
            raise TrainingError(f"{name}.schedule: unknown schedule {self.schedule!r}; known: {list(SCHEDULES)}")
        if self.schedule != "step" and self.milestones:
            raise TrainingError(f"{name}.milestones apply to schedule step, not {self.schedule!r}")
        if self.warmup_steps < 0 or not 0 <= self.min_lr < self.lr:
            raise TrainingError(
                f"{name}: need warmup_steps >= 0 and 0 <= min_lr < lr, got {self.warmup_steps}, {self.min_lr}"
            )
        if not 0 <= self.ema_decay < 1:
            raise TrainingError(f"{name}.ema_decay must be in [0, 1) (0: no EMA), got {self.ema_decay}")
        if self.val_every is not None and (
            not isinstance(self.val_every, int) or isinstance(self.val_every, bool) or self.val_every < 1
        ):
            raise TrainingError(
                f"{name}.val_every must be a number of steps >= 1 (leave it out for no validation), got "
                f"{self.val_every!r}"
            )
        if not 0 < self.val_fraction < 1:
            raise TrainingError(f"{name}.val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 < self.data_fraction <= 1:
            raise TrainingError(
                f"{name}.data_fraction must be in (0, 1] (1: every source image), got {self.data_fraction}"
            )
        if self.val_samples < 1:
            raise TrainingError(f"{name}.val_samples must be >= 1, got {self.val_samples}")
        if self.export not in EXPORTS:
            raise TrainingError(f"{name}.export: unknown {self.export!r}; known: {list(EXPORTS)}")
        if self.export == "best" and self.val_every is None:
            raise TrainingError(f"{name}.export best needs validation: set val_every (steps between validations)")

    # -------------------------------------------------------------------------------------------- derived values

    @property
    def train_tasks(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(1.0 for _ in self.train_tasks)

    @property
    def num_lanes(self) -> int:
        return self.lanes or self.batch_size

    def default_milestones(self) -> tuple[int, ...]:
        return ()

    def resolved_milestones(self) -> tuple[int, ...]:
        return tuple(sorted(self.milestones)) if self.milestones is not None else self.default_milestones()

    @property
    def validates(self) -> bool:
        return self.val_every is not None

    @property
    def holdout(self) -> float:
        """The share of source images held out of the training stream for validation (0: none)."""
        return self.val_fraction if self.validates and not self.val_dir else 0.0

    # -------------------------------------------------------------------------------------------- (de)serialising

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a mapping (e.g. a params.yaml section); unknown keys and wrong scalar types raise."""
        try:
            return strict_from_dict(cls, dict(data))
        except TrainingError:
            raise
        except (ValueError, TypeError) as e:
            raise TrainingError(str(e)) from None

    def recipe_hash(self) -> str:
        """sha256 (16 hex digits) of the recipe: every field but RESUMABLE_CHANGES, ``out`` and ``shards`` (where the
        data lies; what it is, is the run's data version). Two runs with the same hash followed the same recipe; a
        resumed run keeps its hash."""
        recipe = {k: v for k, v in self.to_dict().items() if k not in RESUMABLE_CHANGES | {"out", "shards"}}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def differences(self, other: dict[str, Any]) -> list[str]:
        """Fields (outside RESUMABLE_CHANGES) whose value differs from ``other`` (a stored ``to_dict()``)."""
        mine, other = self.to_dict(), LEGACY_VALUES | dict(other)
        keys = sorted((set(mine) | set(other)) - RESUMABLE_CHANGES)
        return [f"{k}: checkpoint {other.get(k)!r}, now {mine.get(k)!r}" for k in keys if mine.get(k) != other.get(k)]


@dataclass(frozen=True)
class PretrainConfig(TrainConfig):
    """Multi-task pre-training from scratch. ``model`` holds ModelSpec keys (not ``tasks``): {} is the paper's size;
    see MODEL_SIZES for the small CPU sizes. ``task_weights`` () draws tasks uniformly, as the paper does."""

    out: str = "runs/pretrain"
    lr: float = 5e-5
    tasks: tuple[str, ...] = OFFICIAL_PRETRAIN_TASKS
    task_weights: tuple[float, ...] = ()
    model: dict[str, Any] = field(default_factory=dict)

    stage: ClassVar[str] = "pretrain"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise TrainingError(f"tasks must be non-empty and distinct, got {list(self.tasks)}")
        if self.task_weights:
            w = self.task_weights
            if len(w) != len(self.tasks) or any(x < 0 for x in w) or sum(w) <= 0:
                raise TrainingError(
                    f"task_weights {list(w)} must be one non-negative weight per task {list(self.tasks)}, not all 0"
                )
        if not isinstance(self.model, dict) or "tasks" in self.model:
            raise TrainingError("model must be a mapping of ModelSpec keys without 'tasks' (tasks come from `tasks`)")
        self.model_spec({t: 1 for t in self.tasks})  # validates the model keys

    @property
    def train_tasks(self) -> tuple[str, ...]:
        return self.tasks

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(float(w) for w in self.task_weights) or super().weights

    def default_milestones(self) -> tuple[int, ...]:
        return (max(1, round(self.steps * 2 / 3)),)  # 5e-5 -> 2.5e-5 at epoch 200 of 300 in the reference

    def model_spec(self, scales: dict[str, int]) -> ModelSpec:
        """The model for these tasks at ``scales`` (each task's, from its pair shards: its corruption's scale)."""
        try:
            return ModelSpec.from_dict({**self.model, "tasks": [(t, scales[t]) for t in self.tasks]})
        except (ValueError, TypeError) as e:
            raise TrainingError(f"model: {e}") from None


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    """Single-task fine-tuning of ``init`` (a project checkpoint, a run folder holding model.pt, or an official
    ``IPT_*.pt``). The contrastive term defaults to off: the reference states it for pre-training only."""

    out: str = "runs/finetune"
    lr: float = 2e-5
    contrastive_weight: float = 0.0
    task: str = "sr_x2"
    init: str = ""
    init_num_heads: int = 12  # attention heads of an official-layout init (not stored in those files)

    stage: ClassVar[str] = "finetune"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.init:
            raise TrainingError("finetune needs `init`: a checkpoint to start from (project or official IPT_*.pt)")

    @property
    def train_tasks(self) -> tuple[str, ...]:
        return (self.task,)


def model_size(name: str) -> dict[str, Any]:
    try:
        return dict(MODEL_SIZES[name])
    except KeyError:
        raise TrainingError(f"unknown model size {name!r}; known: {sorted(MODEL_SIZES)}") from None


def config_for(stage: str, data: dict[str, Any]) -> TrainConfig:
    """``PretrainConfig`` or ``FinetuneConfig`` from a mapping (strict)."""
    classes: dict[str, type[TrainConfig]] = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}
    if stage not in classes:
        raise TrainingError(f"unknown stage {stage!r}; known: {sorted(classes)}")
    return classes[stage].from_dict(data)
