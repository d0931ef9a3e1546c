"""``refine(cfg) -> metrics``: train PTG-RM on a task's pair shards behind a (frozen, or jointly tuned) base IPT.

Data, seeding and the run folder: docs/refine.md#refiner-checkpoints-and-the-run-folder.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ipt.data.shards import MANIFEST
from ipt.device import resolve_device
from ipt.fileio import atomic_write
from ipt.refine.checkpoint import BaseRef, resolve_base, save_refined
from ipt.refine.config import RefineConfig, RefineError
from ipt.refine.model import RefinedIPT
from ipt.refine.priors import Prior, PriorContext, PriorError, build_prior
from ipt.refine.ptgrm import PTGRM, PTGRMSpec, count_parameters
from ipt.tracking import NullTracker, Tracker
from ipt.train.data import Batch, StreamSpec, find_shards, pair_batches, seed_of
from ipt.train.errors import TrainingError
from ipt.train.state import write_json

LogFn = Callable[[dict[str, Any]], None]
FINAL = "model.pt"
METRICS = "metrics.jsonl"


def cosine_lr(step: int, total: int, lr: float, min_lr: float) -> float:
    """Cosine annealing from ``lr`` at step 0 to ``min_lr`` at the last step (no warm-up)."""
    if total <= 1:
        return lr
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * step / (total - 1)))


# ------------------------------------------------------------------------------------------------ data


def shard_patch(shards: str, task: str) -> int:
    """The LQ patch size the task's pair shards were cut with (their manifest's params)."""
    man = json.loads((Path(shards) / task / MANIFEST).read_text())
    patch = (man.get("params") or {}).get("patch_size")
    if not isinstance(patch, int):
        raise RefineError(f"{Path(shards) / task / MANIFEST}: no params.patch_size")
    return patch


def stream_spec(cfg: RefineConfig, scale: int, *, seed: int | None = None, batch: int | None = None) -> StreamSpec:
    try:
        urls = find_shards(cfg.shards, [cfg.task])
    except TrainingError as e:
        raise RefineError(str(e)) from None
    b = batch or cfg.batch_size
    return StreamSpec(
        urls=urls,
        tasks=(cfg.task,),
        weights=(1.0,),
        scales={cfg.task: scale},
        patch_size=shard_patch(cfg.shards, cfg.task),
        batch_size=b,
        lanes=b,
        seed=cfg.seed if seed is None else seed,
        shuffle_buffer=cfg.shuffle_buffer,
    )


def augment(lq: Tensor, hr: Tensor, *, scale: int, crop: int, flip: bool, generator: torch.Generator) -> tuple:
    """Per sample: a random ``crop`` x ``crop`` LQ window (and its HR), then random horizontal/vertical flips."""
    outs_l, outs_h = [], []
    size = lq.shape[-1]
    for i in range(lq.shape[0]):
        l, h = lq[i], hr[i]
        if crop and crop < size:
            top, left = (int(v) for v in torch.randint(0, size - crop + 1, (2,), generator=generator))
            l = l[:, top : top + crop, left : left + crop]
            h = h[:, top * scale : (top + crop) * scale, left * scale : (left + crop) * scale]
        if flip:
            hv = torch.rand(2, generator=generator)
            dims = [d for d, u in zip((-1, -2), hv.tolist(), strict=True) if u < 0.5]
            if dims:
                l, h = l.flip(dims), h.flip(dims)
        outs_l.append(l)
        outs_h.append(h)
    return torch.stack(outs_l), torch.stack(outs_h)


def calibration_images(cfg: RefineConfig, scale: int) -> Iterator[Tensor]:
    """``cfg.calibration`` LQ training patches in [0, 1], from a stream seeded apart from the training one."""
    n = max(1, cfg.calibration)
    batch = min(n, 16)
    spec = stream_spec(cfg, scale, seed=seed_of(cfg.seed, "calibration"), batch=batch)
    for b in pair_batches(spec, stop=math.ceil(n / batch)):
        yield b.lq / 255.0


# ------------------------------------------------------------------------------------------------ setup


def make_prior(cfg: RefineConfig, base: BaseRef, scale: int) -> Prior:
    ctx = PriorContext(cfg.task, layer=cfg.prior_layer, seed=cfg.seed, base=base.model, spatial=cfg.prior_spatial)
    if cfg.prior == "random":
        ctx.calibration = calibration_images(cfg, scale)
    try:
        return build_prior(cfg.prior, ctx)
    except PriorError as e:
        raise RefineError(str(e)) from None
    except KeyError as e:
        raise RefineError(e.args[0]) from None


def make_model(cfg: RefineConfig, base: BaseRef, prior: Prior) -> RefinedIPT:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_of(cfg.seed, "ptgrm-init") % 2**63)
        spec = PTGRMSpec(prior_dim=prior.dim, channels=cfg.channels, blocks=cfg.blocks, spatial_prior=prior.spatial)
        refiner = PTGRM(spec, zero_init=cfg.zero_init)  # zeroed after the default init: the same random draws
    model = RefinedIPT(copy.deepcopy(base.model), refiner, prior, cfg.task)
    if not cfg.joint:
        model.freeze_base()
    return model


def parameter_counts(model: RefinedIPT) -> dict[str, int]:
    return {
        "refiner": count_parameters(model.refiner),
        "base": count_parameters(model.base, trainable_only=False),
        "base_trainable": count_parameters(model.base),
        "prior": sum(p.numel() for p in model.prior.parameters()),
    }


# ------------------------------------------------------------------------------------------------ the loop


def train_refiner(
    model: RefinedIPT,
    batches: Iterator[Batch],
    optimizer: torch.optim.Optimizer,
    cfg: RefineConfig,
    *,
    device: torch.device,
    on_log: LogFn | None = None,
) -> dict[str, Any]:
    """One Adam update per batch; the loss is L1(refined) (+ L1(base) when joint), on [0, 1]. Returns the last row."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    model.train()
    scale, r = model.scale, model.rgb_range
    row: dict[str, Any] = {}
    tick = time.perf_counter()
    for batch in batches:
        lr = cosine_lr(batch.step, cfg.steps, cfg.lr, cfg.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        gen = torch.Generator().manual_seed(seed_of(cfg.seed, "augment", batch.step) % 2**63)
        lq, hr = augment(batch.lq, batch.hr, scale=scale, crop=cfg.crop, flip=cfg.flip, generator=gen)
        lq, hr = lq.to(device), hr.to(device) / r
        with torch.set_grad_enabled(cfg.joint):
            base_out = model.base_output(lq)
        refined = model.refine(base_out, lq) / r
        l1_ref = (refined - hr).abs().mean()
        l1_base = (base_out / r - hr).abs().mean()
        loss = l1_ref + l1_base if cfg.joint else l1_ref
        step = batch.step + 1
        if not math.isfinite(loss.item()):
            raise RefineError(f"non-finite loss {loss.item()} at step {step} ({cfg.task}, prior {cfg.prior})")
        loss.backward()
        norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        now = time.perf_counter()
        row = {"step": step, "loss": loss.item(), "l1_refined": l1_ref.item(), "l1_base": l1_base.item(), "lr": lr}
        row |= {"grad_norm": float(norm), "samples_per_s": lq.shape[0] / max(now - tick, 1e-9)}
        tick = now
        if on_log is not None:
            on_log(row)
    return row


def refine(
    cfg: RefineConfig,
    *,
    tracker: Tracker | None = None,
    progress: LogFn | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Train PTG-RM for ``cfg`` into ``cfg.out_dir``; returns the last step's metrics, the paths and the sizes."""
    tracker = tracker or NullTracker()
    done = Path(cfg.out_dir) / "model.pt"
    if done.exists():  # as pretrain/finetune: a finished run is never overwritten by accident
        raise RefineError(f"{cfg.out_dir}: holds a refine run ({done.name}); choose another out or remove it first")
    device = resolve_device(cfg.device)
    base = resolve_base(cfg.base, cfg.task, tracking_uri=tracking_uri)
    scale = base.model.scale(cfg.task)
    spec = stream_spec(cfg, scale)  # validates the shards before anything is written
    prior = make_prior(cfg, base, scale)
    model = make_model(cfg, base, prior).to(device)
    prior.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=cfg.lr, betas=cfg.betas, weight_decay=0.0)
    out = Path(cfg.out_dir)
    counts = parameter_counts(model)
    write_json(out / "config.json", {"stage": "refine", **cfg.to_dict()})
    tracker.log_params({f"refine.{k}": v for k, v in cfg.to_dict().items()})
    tracker.log_params({"refine.prior_dim": prior.dim, "refine.prior_sha256": prior.sha256} | _prefixed(counts))
    tracker.set_tags(
        {"ipt.stage": "refine", "refine.task": cfg.task, "refine.prior": cfg.prior, "refine.base_uri": base.uri}
        | {"refine.base_sha256": base.sha256}
    )
    rows: list[str] = []

    def on_log(row: dict[str, Any]) -> None:
        rows.append(json.dumps(row) + "\n")
        tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        if progress is not None:
            progress(row)

    t0 = time.perf_counter()
    try:
        last = train_refiner(model, pair_batches(spec, stop=cfg.steps), optimizer, cfg, device=device, on_log=on_log)
    finally:
        atomic_write(out / METRICS, lambda f: f.write("".join(rows).encode()))
    seconds = time.perf_counter() - t0
    meta = {
        "steps": cfg.steps,
        "zero_init": cfg.zero_init,
        "prior": prior.identity,
        "parameters": counts,
        "train_seconds": seconds,
    }
    path = save_refined(out / FINAL, model.cpu(), base, joint=cfg.joint, seed=cfg.seed, meta=meta)
    tracker.log_metrics({"train_seconds": seconds})
    return {
        "run_dir": str(out),
        "model": str(path),
        "steps": cfg.steps,
        "train_seconds": seconds,
        "parameters": counts,
        "prior": prior.identity,
        "base": {"uri": base.uri, "sha256": base.sha256, "registry": base.registry},
        "last": last,
    }


def _prefixed(counts: dict[str, int]) -> dict[str, int]:
    return {f"refine.params_{k}": v for k, v in counts.items()}
