"""``pretrain(cfg)`` and ``finetune(cfg)``: the IPT recipe (IPT_REFERENCE section 4) as functions returning metrics.

Logging is injected (no mlflow import); DDP: docs/training.md#distributed.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ipt.checkpoint import (
    CheckpointError,
    extract_task,
    load_model,
    official_state_dict,
    read_state,
    save_checkpoint,
)
from ipt.config import ModelSpec
from ipt.device import autocast, resolve_precision
from ipt.model import IPT, build_ipt
from ipt.tracking import NullTracker, Tracker
from ipt.train import distributed as D
from ipt.train import state as S
from ipt.train.config import FinetuneConfig, PretrainConfig, TrainConfig
from ipt.train.data import (
    Batch,
    ShardSet,
    StreamSpec,
    find_shards,
    first_trained_key,
    pair_batches,
    read_shards,
    seed_of,
)
from ipt.train.ema import WeightEMA
from ipt.train.errors import TrainingError
from ipt.train.losses import ipt_objective
from ipt.train.schedule import CosineDecay, StepDecay, schedule_from_state
from ipt.train.validate import ValSet, evaluate, folder_sets, held_out_sets

LogFn = Callable[[dict[str, Any]], None]


def pretrain(
    cfg: PretrainConfig,
    *,
    tracker: Tracker | None = None,
    progress: LogFn | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Multi-task pre-training from scratch into ``cfg.out``; returns the last step's metrics and the output paths.
    ``tags``: provenance the caller knows (e.g. DVC's version of each shard folder), set on the run."""
    if not isinstance(cfg, PretrainConfig):
        raise TrainingError(f"pretrain needs a PretrainConfig, got {type(cfg).__name__}")
    return _stage(cfg, tracker, progress, tags)


def finetune(
    cfg: FinetuneConfig,
    *,
    tracker: Tracker | None = None,
    progress: LogFn | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``cfg.init`` on ``cfg.task`` (body + that task's head/tail); writes a single-task ``model.pt`` and
    the official single-task layout ``official.pt``. ``tags`` as :func:`pretrain`."""
    if not isinstance(cfg, FinetuneConfig):
        raise TrainingError(f"finetune needs a FinetuneConfig, got {type(cfg).__name__}")
    return _stage(cfg, tracker, progress, tags)


# ------------------------------------------------------------------------------------------------ the inner loop


def train_steps(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    scheduler: StepDecay,
    *,
    total_steps: int,
    objective: Callable[..., dict[str, torch.Tensor]],
    device: torch.device,
    precision: str = "fp32",
    grad_clip: float = 0.0,
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda v: v,
    world: int = 1,
    on_log: LogFn | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """One optimizer update per batch; ``on_log(row)`` after each, ``on_step(steps_done)`` last. Returns the last row.

    A non-finite loss or gradient norm (checked on the rank-averaged values, so every rank stops together) raises
    TrainingError naming the step (1-based) and the task.
    """
    row: dict[str, Any] = {}
    tick = time.perf_counter()
    for batch in batches:
        if batch.step >= total_steps:
            break
        lr = scheduler.apply(optimizer, batch.step)
        lq, hr = batch.lq.to(device, non_blocking=True), batch.hr.to(device, non_blocking=True)
        with autocast(device, precision):
            out, tokens = model(lq, batch.task, return_tokens=True)
        terms = objective(out, hr, tokens)
        loss, l1, con = reduce(torch.stack([terms["loss"].detach(), terms["l1"], terms["contrastive"]])).tolist()
        step = batch.step + 1
        if not math.isfinite(loss):
            raise TrainingError(
                f"non-finite loss {loss} at step {step} (task {batch.task}): l1 {l1}, contrastive {con}"
            )
        terms["loss"].backward()
        norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
        if not math.isfinite(float(norm)):
            raise TrainingError(f"non-finite gradient norm at step {step} (task {batch.task}), loss {loss}")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        now = time.perf_counter()
        rows = lq.shape[0] * world
        row = {"step": step, "task": batch.task, "loss": loss, "l1": l1, "contrastive": con, "lr": lr}
        row |= {"grad_norm": float(norm), "samples_per_s": rows / max(now - tick, 1e-9)}
        tick = now
        if on_log is not None:
            on_log(row)
        if on_step is not None:
            on_step(step)
    return row


# ------------------------------------------------------------------------------------------------ one stage


def _stage(
    cfg: TrainConfig, tracker: Tracker | None, progress: LogFn | None, tags: dict[str, str] | None
) -> dict[str, Any]:
    env = D.setup(cfg.device)
    try:
        return _run(cfg, env, tracker or NullTracker(), progress, dict(tags or {}))
    finally:
        D.teardown(env)


def _init_path(cfg: FinetuneConfig) -> Path:
    p = Path(cfg.init)
    return p / S.FINAL if p.is_dir() else p


def _fresh_model(cfg: TrainConfig, scales: dict[str, int]) -> IPT:
    if isinstance(cfg, PretrainConfig):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_of(cfg.seed, "init") % 2**63)
            return build_ipt(cfg.model_spec(scales))
    assert isinstance(cfg, FinetuneConfig)
    try:
        full = load_model(_init_path(cfg), cfg.task, num_heads=cfg.init_num_heads)
    except CheckpointError as e:
        raise TrainingError(f"finetune init: {e}") from None
    if cfg.task not in full.spec.task_names:
        raise TrainingError(f"{cfg.init}: has no task {cfg.task!r}; it has {list(full.spec.task_names)}")
    return extract_task(full, cfg.task)


def _seed_globals(seed: int) -> None:
    """The process's global RNGs (dropout, anything third-party) start from (seed, rank); checkpoints carry them."""
    torch.manual_seed(seed % 2**63)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _resume_point(cfg: TrainConfig, env: D.DistEnv) -> Path | None:
    """The checkpoint to continue from (None: fresh start). Refuses to overwrite a run that was not asked to resume."""
    run = Path(cfg.out)
    latest = S.latest_checkpoint(run) if env.is_main else None
    latest = D.broadcast_object(env, str(latest) if latest else None)
    if latest and not cfg.resume:
        raise _overwrite_error(run, latest)
    return Path(latest) if latest else None


def _overwrite_error(run: Path, latest: str | Path) -> TrainingError:
    return TrainingError(f"{run}: holds checkpoints ({Path(latest).name}); pass resume to continue or use a new out")


def preflight(cfg: TrainConfig) -> None:
    """The checks every rank makes before its first step, made once: `ipt launch` runs them before it starts
    torchrun, so a user error prints one line instead of one per rank and torchrun's failure report."""
    find_shards(cfg.shards, cfg.train_tasks)
    if cfg.validates and cfg.val_dir:
        find_shards_named(cfg.val_dir, cfg.train_tasks)
    latest = S.latest_checkpoint(Path(cfg.out))
    if latest and not cfg.resume:
        raise _overwrite_error(Path(cfg.out), latest)


def find_shards_named(root: str, tasks: tuple[str, ...]) -> None:
    try:
        find_shards(root, tasks)
    except TrainingError as e:
        raise TrainingError(f"val_dir: {e}") from None


def _restore(ckpt: dict[str, Any], cfg: TrainConfig, env: D.DistEnv, path: Path) -> None:
    diffs = cfg.differences(ckpt["train"]["config"])
    if diffs:
        raise TrainingError(f"{path}: cannot resume with a different configuration: {'; '.join(diffs)}")
    if int(ckpt["train"]["step"]) > cfg.steps:
        raise TrainingError(
            f"{path}: the run is already at step {ckpt['train']['step']}, past steps {cfg.steps}; "
            f"resume with steps >= {ckpt['train']['step']} (nothing was changed)"
        )
    states = ckpt["train"]["rng"]
    if len(states) == env.world:
        S.set_rng_state(states[env.rank], env.device)
    elif env.is_main:
        print(f"warning: {path} was written by {len(states)} rank(s), now {env.world}: global RNG states not restored")


def _stream(cfg: TrainConfig, spec: ModelSpec, shards: ShardSet) -> tuple[StreamSpec, dict[str, str]]:
    """The run's data stream and each task's data version (:func:`read_shards`); the model must have each task at
    the scale its shards were made at."""
    tasks = cfg.train_tasks
    for t in tasks:
        if t not in spec.task_names:
            raise TrainingError(f"task {t!r} is not in the model; it has {list(spec.task_names)}")
        if spec.scale_of(t) != shards.scales[t]:
            raise TrainingError(
                f"{Path(cfg.shards) / t}: pairs made at x{shards.scales[t]}, but the model's {t} tail is "
                f"x{spec.scale_of(t)}"
            )
    if cfg.data_fraction < 1:
        for t in tasks:
            if first_trained_key(shards.urls[t], cfg.seed, cfg.holdout, cfg.data_fraction) is None:
                raise TrainingError(
                    f"{Path(cfg.shards) / t}: data_fraction {cfg.data_fraction} (after the validation hold-out) keeps "
                    "no source image of these pairs; raise it or use more images"
                )
    stream = StreamSpec(
        urls=shards.urls,
        tasks=tasks,
        weights=cfg.weights,
        scales={t: spec.scale_of(t) for t in tasks},
        patch_size=spec.patch_size,
        batch_size=cfg.batch_size,
        lanes=cfg.num_lanes,
        seed=cfg.seed,
        shuffle_buffer=cfg.shuffle_buffer,
        segment=cfg.stream_segment,
        holdout=cfg.holdout,
        augment=cfg.augment,
        subset=cfg.data_fraction,
    )
    return stream, shards.versions


def _schedule(cfg: TrainConfig) -> StepDecay:
    if cfg.schedule == "cosine":
        return CosineDecay(cfg.lr, cfg.steps, cfg.warmup_steps, cfg.min_lr)
    return StepDecay(cfg.lr, cfg.resolved_milestones(), cfg.gamma, cfg.warmup_steps)


def _build(
    cfg: TrainConfig, env: D.DistEnv, scales: dict[str, int]
) -> tuple[IPT, torch.optim.Optimizer, StepDecay, int, dict | None]:
    """Model, optimizer and schedule: fresh, or exactly as the newest checkpoint left them (then its step and its
    ``train`` entry)."""
    resume_from = _resume_point(cfg, env)
    ckpt = S.load_training_checkpoint(resume_from) if resume_from else None
    if ckpt is not None:
        _restore(ckpt, cfg, env, resume_from)
        model = build_ipt(ModelSpec.from_dict(ckpt["model_spec"]))
        model.load_state_dict(ckpt["state_dict"], strict=True)
    else:
        model = _fresh_model(cfg, scales)
        _seed_globals(seed_of(cfg.seed, "globals", env.rank))
    model.to(env.device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if ckpt is None:
        return model, optimizer, _schedule(cfg), 0, None
    optimizer.load_state_dict(ckpt["train"]["optimizer"])
    scheduler = schedule_from_state(ckpt["train"]["scheduler"])
    return model, optimizer, scheduler, int(ckpt["train"]["step"]), ckpt["train"]


def _check_same_data(cfg: TrainConfig, resumed: dict | None, versions: dict[str, str]) -> None:
    """A resumed run must read the shards its checkpoint was trained on (checkpoints before data versions: no check)."""
    before = ((resumed or {}).get("data") or {}).get("versions")
    if not before:
        return
    changed = [t for t in versions if before.get(t) != versions[t]]
    if changed:
        what = ", ".join(f"{t} ({str(before.get(t))[:12]} -> {versions[t][:12]})" for t in changed)
        raise TrainingError(
            f"{cfg.out}: the pair shards under {cfg.shards} changed since the checkpoint: {what}; resuming would "
            "continue the loss curve on other data. Put those shards back (e.g. `dvc checkout`) or train into a "
            "new out (nothing was changed)"
        )


def _announce(cfg: TrainConfig, tracker: Tracker, start: int, versions: dict[str, str], extra: dict[str, str]) -> None:
    """Rank 0, before the first step: clean a killed run's temporaries, write config.json, log params and tags
    (the recipe hash, each task's data version from the shard manifests, and the caller's provenance tags)."""
    S.remove_temporaries(Path(cfg.out))
    if start == 0:
        (Path(cfg.out) / S.BEST).unlink(missing_ok=True)  # a fresh run's best is its own
    S.write_json(Path(cfg.out) / S.CONFIG, {"stage": cfg.stage, **cfg.to_dict(), "data_versions": versions})
    if start == 0:
        tracker.log_params({f"{cfg.stage}.{k}": v for k, v in cfg.to_dict().items()})
    tags = {"ipt.stage": cfg.stage, "ipt.resumed_from": str(start), "ipt.params_hash": cfg.recipe_hash()}
    tracker.set_tags(tags | {f"ipt.data.{t}": v[:16] for t, v in versions.items()} | extra)


def _logger(log: S.MetricsLog | None, tracker: Tracker, progress: LogFn | None) -> LogFn:
    def on_log(row: dict[str, Any]) -> None:
        if log is None:  # not rank 0
            return
        log.append(row)
        scalars = {k: v for k, v in row.items() if k not in ("step", "task")}
        tracker.log_metrics(scalars | {f"l1_{row['task']}": row["l1"]}, step=row["step"])
        if progress is not None:
            progress(row)

    return on_log


class _Watch:
    """What happens after each update besides the checkpoint: the EMA of the weights, validation every
    ``val_every`` steps and at the end (rank 0 only; the other ranks go on to their next all-reduce), and the best
    validated weights in ``best.pt``. ``weights`` is what is validated and exported: the EMA when it is on."""

    def __init__(
        self,
        cfg: TrainConfig,
        env: D.DistEnv,
        model: IPT,
        sets: dict[str, ValSet],
        start: int,
        resumed: dict | None,
        precision: str,
        tracker: Tracker,
        progress: LogFn | None,
    ) -> None:
        self.cfg, self.env, self.model, self.sets, self.precision = cfg, env, model, sets, precision
        self.tracker, self.progress = tracker, progress
        self.run = Path(cfg.out)
        self.ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 and env.is_main else None
        if self.ema is not None and resumed is not None:
            self.ema.load_state_dict(resumed["ema"])
        self.best = _best_on_disk(self.run) if start > 0 and env.is_main else None
        self.log = None
        if sets and env.is_main:
            columns = ("step", "psnr_y", "ssim_y", *(f"{m}_{t}" for t in sets for m in ("psnr_y", "ssim_y")))
            files = (S.VALIDATION_JSONL, S.VALIDATION_CSV)
            self.log = S.MetricsLog(self.run, start, files=files, columns=(*columns, "seconds"))
        self.val_seconds = 0.0

    @property
    def weights(self) -> IPT:
        return self.ema.model if self.ema is not None else self.model

    def after_update(self, step: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model)
        if self.log is not None and (step % int(self.cfg.val_every or 1) == 0 or step == self.cfg.steps):
            self.validate(step)

    def validate(self, step: int) -> None:
        tick = time.perf_counter()
        scores = evaluate(self.weights, self.sets, self.env.device, self.precision, batch=self.cfg.batch_size)
        if self.best is None or scores["psnr_y"] > self.best["psnr_y"]:
            self.best = {"step": step, "psnr_y": scores["psnr_y"], "ssim_y": scores["ssim_y"]}
            meta = {"stage": self.cfg.stage, "step": step, "tasks": list(self.cfg.train_tasks), "val": scores}
            save_checkpoint(self.run / S.BEST, self.weights, meta=meta | {"weights": self.kind})
        seconds = time.perf_counter() - tick
        self.val_seconds += seconds
        row = {"step": step, **scores, "seconds": seconds}
        assert self.log is not None
        self.log.append(row)
        self.tracker.log_metrics({f"val_{k}": v for k, v in scores.items()} | {"val_seconds": seconds}, step=step)
        if self.progress is not None:
            self.progress(row | {"validation": True, "best_step": self.best["step"]})

    @property
    def kind(self) -> str:
        return "ema" if self.ema is not None else "raw"

    def train_state(self) -> dict[str, Any]:
        """What a checkpoint keeps of it: the EMA weights and the best validated step so far."""
        return ({"ema": self.ema.state_dict()} if self.ema is not None else {}) | {"best": self.best}

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


def _best_on_disk(run: Path) -> dict[str, Any] | None:
    """The best validated step so far, from ``best.pt`` (after a kill it may be from steps past the checkpoint the
    run resumes from: those steps are retrained identically, so it stands)."""
    path = run / S.BEST
    if not path.is_file():
        return None
    try:
        meta = read_state(path).get("meta") or {}
    except CheckpointError as e:
        raise TrainingError(str(e)) from None
    val = meta.get("val") or {}
    if "step" not in meta or "psnr_y" not in val:
        return None
    return {"step": int(meta["step"]), "psnr_y": float(val["psnr_y"]), "ssim_y": float(val["ssim_y"])}


def _validation_sets(cfg: TrainConfig, spec: ModelSpec, shards: ShardSet) -> dict[str, ValSet]:
    """The validation pairs (none when validation is off): ``val_dir``'s, else the held-out split of the shards."""
    if not cfg.validates:
        return {}
    scales = {t: spec.scale_of(t) for t in cfg.train_tasks}
    if cfg.val_dir:
        return folder_sets(cfg.val_dir, cfg.train_tasks, scales, samples=cfg.val_samples, patch=spec.patch_size)
    return held_out_sets(
        shards.urls,
        scales,
        seed=cfg.seed,
        fraction=cfg.val_fraction,
        samples=cfg.val_samples,
        patch=spec.patch_size,
    )


def _run(
    cfg: TrainConfig, env: D.DistEnv, tracker: Tracker, progress: LogFn | None, tags: dict[str, str]
) -> dict[str, Any]:
    if cfg.batch_size % env.world:
        raise TrainingError(f"global batch_size {cfg.batch_size} is not divisible by {env.world} ranks")
    # The shards are checked before any file is written; a fresh pretrain model takes its scales from them (each
    # task's corruption made its pairs), a fine-tune starts from its init (checked first, that error first).
    if isinstance(cfg, PretrainConfig):
        shards = read_shards(cfg.shards, cfg.train_tasks)
        model, optimizer, scheduler, start, resumed = _build(cfg, env, shards.scales)
    else:
        model, optimizer, scheduler, start, resumed = _build(cfg, env, {})
        shards = read_shards(cfg.shards, cfg.train_tasks)
    stream, versions = _stream(cfg, model.spec, shards)
    _check_same_data(cfg, resumed, versions)
    if cfg.steps == 0:  # a pre-training of 0 steps (the config allows it there only): the seeded initial weights
        if env.is_main:
            _announce(cfg, tracker, start, versions, tags)
        return _initial(cfg, env, model)
    sets = _validation_sets(cfg, model.spec, shards) if env.is_main else {}
    if env.is_main:
        _announce(cfg, tracker, start, versions, tags)
    precision = resolve_precision(cfg.precision, env.device, training=True)  # the one rule (ipt.device)
    net: nn.Module = model
    if env.distributed:
        ids = [env.device.index] if env.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=len(model.spec.tasks) > 1)
    gather = functools.partial(D.gather_with_grad, env) if env.distributed else None
    objective = functools.partial(
        ipt_objective,
        weight=cfg.contrastive_weight,
        temperature=cfg.temperature,
        gather=gather,
        pixel=cfg.pixel_loss,
        eps=cfg.charbonnier_eps,
    )
    watch = _Watch(cfg, env, model, sets, start, resumed, precision, tracker, progress)

    def on_step(step: int) -> None:
        watch.after_update(step)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _checkpoint(cfg, env, model, optimizer, scheduler, step, versions, watch.train_state())

    batches = pair_batches(
        stream,
        rank=env.rank,
        world=env.world,
        start=start,
        stop=cfg.steps,
        num_workers=cfg.num_workers,
        pin_memory=env.device.type == "cuda",
    )
    log = S.MetricsLog(Path(cfg.out), start) if env.is_main else None
    tick = time.perf_counter()
    try:
        last = train_steps(
            net,
            batches,
            optimizer,
            scheduler,
            total_steps=cfg.steps,
            objective=objective,
            device=env.device,
            precision=precision,
            grad_clip=cfg.grad_clip,
            reduce=functools.partial(D.mean_over_ranks, env),
            world=env.world,
            on_log=_logger(log, tracker, progress),
            on_step=on_step,
        )
    finally:
        if log is not None:
            log.close()
        watch.close()
    out = _finish(cfg, env, watch, last, start, precision)
    return out | {"seconds": time.perf_counter() - tick, "validation_seconds": watch.val_seconds}


def _initial(cfg: TrainConfig, env: D.DistEnv, model: IPT) -> dict[str, Any]:
    """model.pt of a 0-step pre-training: the weights ``seed`` initialises, the start of a from-scratch fine-tune
    whose model is the pretrained one's in every other respect (docs/training.md)."""
    run = Path(cfg.out)
    if env.is_main:
        meta = {"stage": cfg.stage, "steps": 0, "tasks": list(cfg.train_tasks), "seed": cfg.seed}
        save_checkpoint(run / S.FINAL, model, meta=meta | {"weights": "init", "export": cfg.export, "step": 0})
    D.barrier(env)
    out = {
        "run_dir": str(run),
        "steps": 0,
        "resumed_from": 0,
        "precision": "none",
        "last": {},
        "model": str(run / S.FINAL),
    }
    return out | {
        "world_size": env.world,
        "backend": D.backend(env),
        "best": None,
        "export": cfg.export,
        "seconds": 0.0,
    }


def _checkpoint(
    cfg: TrainConfig,
    env: D.DistEnv,
    model: IPT,
    optimizer: torch.optim.Optimizer,
    scheduler: StepDecay,
    step: int,
    versions: dict[str, str],
    extra: dict[str, Any],
) -> None:
    rng = D.gather_objects(env, S.rng_state(env.device))
    if env.is_main:
        train = {
            "step": step,
            "stage": cfg.stage,
            "config": cfg.to_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng,
            "world_size": env.world,
            "data": {
                "position": step,
                "seed": cfg.seed,
                "lanes": cfg.num_lanes,
                "segment": cfg.stream_segment,
                "tasks": list(cfg.train_tasks),
                "weights": list(cfg.weights),
                "versions": versions,  # shard_versions: a resume must find the same data
            },
            **extra,  # the EMA weights and the best validated step
        }
        meta = {"stage": cfg.stage, "step": step, "tasks": list(cfg.train_tasks)}
        S.save_training_checkpoint(S.checkpoint_path(Path(cfg.out), step), model, train, meta)
        S.prune_checkpoints(Path(cfg.out), cfg.keep_checkpoints)


def _finish(
    cfg: TrainConfig, env: D.DistEnv, watch: _Watch, last: dict[str, Any], start: int, precision: str
) -> dict[str, Any]:
    """model.pt (and a fine-tune's official.pt): the ``export`` weights, the last step's (the EMA when on) or the
    best validated step's."""
    run = Path(cfg.out)
    out = {"run_dir": str(run), "steps": cfg.steps, "resumed_from": start, "precision": precision, "last": last}
    out["world_size"], out["backend"] = env.world, D.backend(env)
    out["model"] = str(run / S.FINAL)
    out["best"], out["export"] = watch.best, cfg.export
    if env.is_main:
        meta = {"stage": cfg.stage, "steps": cfg.steps, "tasks": list(cfg.train_tasks), "seed": cfg.seed}
        final, meta = watch.weights, meta | {"weights": watch.kind, "export": cfg.export, "step": cfg.steps}
        if cfg.export == "best":
            if watch.best is None:
                raise TrainingError(f"{run}: export best, but no step was validated")
            final = load_model(run / S.BEST)
            meta["step"] = watch.best["step"]
        save_checkpoint(run / S.FINAL, final, meta=meta)
        if isinstance(cfg, FinetuneConfig) and not final.spec.image_residual:
            S.save_tensors(run / S.OFFICIAL, official_state_dict(final, cfg.task))
    # The released layout only when the official code could run it: image_residual models have another forward.
    if isinstance(cfg, FinetuneConfig) and not watch.model.spec.image_residual:
        out["official"] = str(run / S.OFFICIAL)
    D.barrier(env)
    return out
