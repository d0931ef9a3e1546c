"""``ipt corrupt --task T``: (LQ, HR) pairs of one task from the clean shards, with its corruption (plan, then run)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from corruptions import numpy_generator
from ipt.config import DEFAULT_SEED
from ipt.data import encoding, shards, storage
from ipt.data.plan import Plan
from ipt.tasks import TaskError, TaskSpec, check_task_name, from_entry, where


@dataclass(frozen=True)
class CorruptConfig:
    """``ipt corrupt --task T`` / params.yaml ``corrupt`` (the task's entry in ``corrupt.tasks``)."""

    task: str
    corruption: str
    params: dict[str, Any]
    clean: str = "data/clean"
    out: str = "data/pairs/{task}"
    patch_size: int = 48
    png_level: int = 0
    seed: int = DEFAULT_SEED
    params_file: str | None = None  # only for messages: which file the task came from
    code: str = ""  # sha256 of the code the stage runs (ipt.codedeps.stage_code("corrupt", corruption))

    def __post_init__(self) -> None:
        check_task_name(self.task, self.params_file)

    @property
    def where(self) -> str:
        """``<params file>: corrupt.tasks.<task>``, the prefix of every message about this task."""
        return where(self.task, self.params_file)

    @property
    def folder(self) -> str:
        return self.out.format(task=self.task)

    def spec(self) -> TaskSpec:
        """The checked task (:func:`ipt.tasks.from_entry`: params, trial run, the scale from ``out_size``)."""
        if not isinstance(self.params, Mapping):
            raise TaskError(f"{self.where}: params must be a mapping, got {self.params!r}")
        return from_entry(self.task, {"name": self.corruption, **self.params}, self.params_file)


@dataclass(frozen=True)
class PairJob:
    name: str
    folder: str
    digest: str
    clean_url: str
    task: str
    corruption: str
    params: tuple[tuple[str, Any], ...]
    scale: int
    patch: int
    seed: int
    png_level: int

    def run(self) -> shards.ShardResult:
        return run_pair_job(self)


def plan_corrupt(cfg: CorruptConfig) -> Plan:
    """Every clean shard's pair job and the digest of what decides the bytes; the task is checked before anything
    is read or written (:class:`TaskError` naming the params file, the task and the problem)."""
    spec = cfg.spec()
    hr = cfg.patch_size * spec.scale
    clean = shards.read_manifest(cfg.clean, shards.FORMAT_CLEAN)
    crop = int(clean["params"]["crop_size"])
    if hr > crop:
        raise TaskError(
            f"{cfg.where}: needs {hr}x{hr} HR patches (x{spec.scale}) but {cfg.clean} holds {crop}x{crop} crops "
            f"(raise shard.max_scale to {-(-hr // cfg.patch_size)} and rerun the shard stage)"
        )
    if not clean.get("samples"):
        raise shards.ShardError(
            f"{cfg.clean}: holds no clean samples (every source file was skipped; see its {shards.MANIFEST})"
        )
    params = {
        "task": cfg.task,
        "corruption": cfg.corruption,
        "params": cfg.params,
        "patch_size": cfg.patch_size,
        "scale": spec.scale,
        "png_level": cfg.png_level,
        "seed": cfg.seed,
    }
    digest = shards.plan_digest([shards.FORMAT_PAIRS, params, [s["sha256"] for s in clean["shards"]], cfg.code])
    jobs = tuple(
        PairJob(
            s["name"],
            cfg.folder,
            digest,
            storage.join(cfg.clean, s["name"]),
            cfg.task,
            cfg.corruption,
            tuple(sorted(cfg.params.items())),
            spec.scale,
            cfg.patch_size,
            cfg.seed,
            cfg.png_level,
        )
        for s in clean["shards"]
    )
    return Plan(
        cfg.folder, digest, shards.FORMAT_PAIRS, jobs, {**params, "clean": cfg.clean, "clean_plan": clean["plan"]}
    )


def run_pair_job(job: PairJob) -> shards.ShardResult:
    """Corrupt every clean crop of one shard: a seeded HR patch, its LQ, and their provenance."""
    from ipt.device import torch_threads

    with torch_threads(1):  # one shard per worker: parallelism comes from the executor
        return _corrupt_shard(job)


def _corrupt_shard(job: PairJob) -> shards.ShardResult:
    import torch

    import corruptions

    params = dict(job.params)
    hr_size = job.patch * job.scale
    samples: list[tuple[str, dict[str, bytes]]] = []
    skipped: list[dict[str, str]] = []
    for key, members in encoding.iter_tar(storage.read_bytes(job.clean_url)):
        try:
            full = encoding.png_decode(members["png"])
            source = json.loads(members["json"])["source"]
        except (KeyError, ValueError, OSError) as e:
            skipped.append({"path": key, "reason": f"bad clean sample: {shards.first_line(e)}"})
            continue
        rng = numpy_generator(job.seed, job.task, key, "hr-crop")
        top = int(rng.integers(0, full.shape[0] - hr_size + 1))
        left = int(rng.integers(0, full.shape[1] - hr_size + 1))
        hr = np.ascontiguousarray(full[top : top + hr_size, left : left + hr_size])
        x = torch.from_numpy(hr).permute(2, 0, 1)[None].float() / 255.0
        seed = corruptions.seed_from(job.seed, job.task, key)
        gen = torch.Generator().manual_seed(seed)
        lq = corruptions.quantize_uint8(corruptions.apply(job.corruption, x, generator=gen, **params))
        lq = np.ascontiguousarray(lq[0].permute(1, 2, 0).numpy())
        meta = {
            "task": job.task,
            "corruption": job.corruption,
            "params": params,
            "scale": job.scale,
            "seed": seed,
            "source": source,
            "hr_box": [top, left, hr_size],
        }
        samples.append(
            (
                key,
                {
                    "hr.png": encoding.png_encode(hr, job.png_level),
                    "lq.png": encoding.png_encode(lq, job.png_level),
                    "meta.json": encoding.json_bytes(meta),
                },
            )
        )
    result = shards.write_shard(job.folder, job.name, encoding.tar_bytes(samples), skipped, len(samples))
    shards.record_progress(job.folder, job.digest, result)
    return result
