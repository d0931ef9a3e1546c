"""Validation while training: held-out pairs per task, scored with the project's protocol (ipt.metrics, Y-PSNR and
SSIM on the official shave), never the test benchmarks. docs/training.md#validation-ema-best-checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import webdataset as wds
from torch import Tensor, nn

from ipt.device import autocast
from ipt.metrics import crop_border_for, score
from ipt.train.data import decode_pair, held_out, read_shards
from ipt.train.errors import TrainingError


class ValSet(NamedTuple):
    """One task's validation pairs (uint8 CHW, stacked) and where they came from."""

    lq: Tensor
    hr: Tensor
    keys: tuple[str, ...]
    scale: int


def _samples(urls: Sequence[str]):
    return iter(wds.DataPipeline(wds.SimpleShardList(list(urls)), wds.tarfile_to_samples()))


def _stack(task: str, found: list[dict[str, Any]], patch: int, scale: int) -> ValSet:
    pairs = [decode_pair(x, task, patch, scale) for x in found]
    keys = tuple(str(x["__key__"]) for x in found)
    return ValSet(torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]), keys, scale)


def held_out_sets(
    urls: dict[str, tuple[str, ...]],
    scales: dict[str, int],
    *,
    seed: int,
    fraction: float,
    samples: int,
    patch: int,
) -> dict[str, ValSet]:
    """The first ``samples`` held-out pairs of each task, in shard order (held out: :func:`ipt.train.data.held_out`).

    Reads shards only until it has them and has seen one pair left for training, so at scale it stops after a few
    shards. A task whose pairs are all held out or none is refused: training or validation would have no data.
    """
    sets = {}
    for task, task_urls in urls.items():
        found: list[dict[str, Any]] = []
        trained = False
        for sample in _samples(task_urls):
            if held_out(seed, fraction, str(sample["__key__"])):
                if len(found) < samples:
                    found.append(sample)
            else:
                trained = True
            if trained and len(found) >= samples:
                break
        where = Path(task_urls[0]).parent
        if not found:
            raise TrainingError(
                f"val_fraction {fraction}: no source image of {where} falls in the validation split; raise "
                "val_fraction or name a val_dir"
            )
        if not trained:
            raise TrainingError(f"val_fraction {fraction}: every pair of {where} is held out; lower val_fraction")
        sets[task] = _stack(task, found, patch, scales[task])
    return sets


def folder_sets(root: str, tasks: Sequence[str], scales: dict[str, int], *, samples: int, patch: int) -> dict:
    """The first ``samples`` pairs of each task from the pair shards under ``root`` (``val_dir``), made like the
    training shards (`ipt shard` of a validation image folder, then `ipt corrupt`)."""
    try:
        shards = read_shards(root, tasks)
    except TrainingError as e:
        raise TrainingError(f"val_dir: {e}") from None
    sets = {}
    for task in tasks:
        if shards.scales[task] != scales[task]:
            raise TrainingError(
                f"val_dir: {Path(root) / task} holds x{shards.scales[task]} pairs, the model's {task} is "
                f"x{scales[task]}"
            )
        found = []
        for sample in _samples(shards.urls[task]):
            found.append(sample)
            if len(found) >= samples:
                break
        try:
            sets[task] = _stack(task, found, patch, scales[task])
        except TrainingError as e:
            raise TrainingError(f"val_dir: {e}") from None
    return sets


@torch.no_grad()
def evaluate(
    model: nn.Module, sets: dict[str, ValSet], device: torch.device, precision: str = "fp32", batch: int = 16
) -> dict[str, float]:
    """Mean per-image Y-PSNR and SSIM (``ipt`` protocol, shave = scale) per task (``psnr_y_<task>``,
    ``ssim_y_<task>``) and their means over the tasks (``psnr_y``, ``ssim_y``). The model is put back in the
    mode it was in; no random number generator is drawn from."""
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    try:
        for task, vs in sets.items():
            psnr, ssim = [], []
            for i in range(0, vs.lq.shape[0], batch):
                lq = vs.lq[i : i + batch].to(device).float()
                with autocast(device, precision):
                    sr = model(lq, task)
                for s, h in zip(sr.float().cpu(), vs.hr[i : i + batch], strict=True):
                    got = score(s, h, crop_border=crop_border_for(vs.scale))
                    psnr.append(got["psnr_y"])
                    ssim.append(got["ssim_y"])
            out[f"psnr_y_{task}"], out[f"ssim_y_{task}"] = sum(psnr) / len(psnr), sum(ssim) / len(ssim)
    finally:
        model.train(was_training)
    out["psnr_y"] = sum(out[f"psnr_y_{t}"] for t in sets) / len(sets)
    out["ssim_y"] = sum(out[f"ssim_y_{t}"] for t in sets) / len(sets)
    return out
