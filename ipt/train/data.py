"""Training batches from pair shards (docs/data_format.md): one task per batch, resampled WebDataset streams.

Seeding, lanes, ranks, workers and segments: docs/training.md#data-one-stream-per-lane-seeded-resampled.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import webdataset as wds
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from corruptions import seed_of
from ipt.data.encoding import png_decode
from ipt.data.shards import FORMAT_PAIRS, MANIFEST
from ipt.train.errors import TrainingError


def task_for_step(seed: int, step: int, tasks: Sequence[str], weights: Sequence[float]) -> str:
    """The task of global step ``step`` (0-based): one weighted draw seeded by (seed, step)."""
    if len(tasks) == 1:
        return tasks[0]
    return random.Random(seed_of(seed, "task", step)).choices(list(tasks), weights=list(weights))[0]


# ------------------------------------------------------------------------------------------------ shard discovery


def _manifest(root: str | Path, task: str) -> tuple[Path, list[dict[str, Any]], dict[str, Any]]:
    """``(folder, its shard entries, its params)`` from ``<root>/<task>/manifest.json``, checked to list a non-empty
    shard; errors name the folder or file at fault."""
    folder = Path(root) / task
    if not folder.is_dir():
        raise TrainingError(f"{folder}: no pair shards for task {task!r} (run `ipt corrupt --task {task}`)")
    man_path = folder / MANIFEST
    if not man_path.is_file():
        raise TrainingError(f"{folder}: no {MANIFEST} (not a pair-shard folder, or its corrupt stage did not finish)")
    try:
        manifest = json.loads(man_path.read_text())
    except (OSError, ValueError) as e:
        raise TrainingError(f"{man_path}: unreadable manifest ({e})") from None
    if manifest.get("format") != FORMAT_PAIRS:
        raise TrainingError(f"{man_path}: format {manifest.get('format')!r}, expected {FORMAT_PAIRS!r}")
    shards = manifest.get("shards", [])
    if not any(s.get("samples", 1) > 0 for s in shards):
        raise TrainingError(f"{man_path}: lists no non-empty shards for task {task!r}")
    params = manifest.get("params") if isinstance(manifest.get("params"), dict) else {}
    return folder, shards, params


class ShardSet(NamedTuple):
    """What a run trains on, from one read of each task's manifest."""

    urls: dict[str, tuple[str, ...]]  # task -> its non-empty shard files
    versions: dict[str, str]  # task -> sha256 of its manifest's shard names, sample counts and content hashes
    scales: dict[str, int]  # task -> the LQ/HR scale the corrupt stage made (from the task's corruption)


def read_shards(root: str | Path, tasks: Sequence[str]) -> ShardSet:
    """Each task's shard paths and data version from ``<root>/<task>/manifest.json`` (no shard is read; the same
    data gives the same version on any machine or path); errors name the folder or file at fault."""
    urls: dict[str, tuple[str, ...]] = {}
    versions: dict[str, str] = {}
    scales: dict[str, int] = {}
    for task in tasks:
        folder, shards, params = _manifest(root, task)
        scales[task] = _scale(folder, task, params)
        names = [s["name"] for s in shards if s.get("samples", 1) > 0]
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise TrainingError(f"{folder}: {len(missing)} shard(s) listed in {MANIFEST} are missing: {missing[:5]}")
        for entry in shards:
            if entry.get("samples", 1) > 0:
                check_shard(folder / entry["name"], entry, task)
        urls[task] = tuple(str(folder / n) for n in names)
        listed = sorted((s["name"], s.get("samples"), s.get("sha256")) for s in shards)
        versions[task] = hashlib.sha256(json.dumps(listed, separators=(",", ":")).encode()).hexdigest()
    return ShardSet(urls, versions, scales)


def _scale(folder: Path, task: str, params: dict[str, Any]) -> int:
    """The scale a pair-shard folder was made at (its manifest's ``params.scale``; a paper task's name for a
    folder whose manifest predates it)."""
    scale = params.get("scale")
    if isinstance(scale, int) and not isinstance(scale, bool) and scale >= 1:
        return scale
    from ipt.tasks import TaskError, task_scale

    try:
        return task_scale(task)
    except TaskError:
        raise TrainingError(f"{folder / MANIFEST}: records no scale for task {task!r}; rerun `ipt corrupt`") from None


def check_shard(path: Path, entry: dict[str, Any], task: str) -> None:
    """Before the first step: the shard is the one its manifest lists (its size, when the manifest records it, else
    a walk of its tar headers finding the listed sample count), so a truncated file fails now, naming itself, not
    steps into the run."""
    fix = f"rebuild it (`ipt corrupt --task {task}`) or restore it (`dvc checkout`)"
    size = entry.get("size")
    if isinstance(size, int):
        actual = path.stat().st_size
        if actual != size:
            raise TrainingError(f"{path}: {actual} bytes, but {MANIFEST} lists {size} (truncated or changed); {fix}")
        return
    try:
        with tarfile.open(path, mode="r:") as tar:
            keys = {m.name.rsplit(".", 1)[0].split(".")[0] for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError) as e:
        raise TrainingError(
            f"{path}: unreadable pair shard ({(str(e).splitlines() or [type(e).__name__])[0]}); {fix}"
        ) from None
    if "samples" in entry and len(keys) != entry["samples"]:
        raise TrainingError(f"{path}: holds {len(keys)} samples, {MANIFEST} lists {entry['samples']}; {fix}")


def find_shards(root: str | Path, tasks: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``{task: shard paths}`` (:func:`read_shards`)."""
    return read_shards(root, tasks).urls


def shard_versions(root: str | Path, tasks: Sequence[str]) -> dict[str, str]:
    """``{task: data version}`` (:func:`read_shards`)."""
    return read_shards(root, tasks).versions


# ------------------------------------------------------------------------------------------------ streams


@dataclass(frozen=True)
class StreamSpec:
    """Everything a batch depends on (picklable, so DataLoader workers get a copy)."""

    urls: dict[str, tuple[str, ...]]
    tasks: tuple[str, ...]
    weights: tuple[float, ...]
    scales: dict[str, int]
    patch_size: int
    batch_size: int  # global
    lanes: int
    seed: int
    shuffle_buffer: int = 64
    segment: int = 1000
    holdout: float = 0.0  # share of source images held out for validation (never trained on)
    augment: bool = False  # a seeded flip / 90-degree rotation of each (lq, hr) row
    subset: float = 1.0  # share of the (not held-out) source images trained on, a seeded draw per image

    def __post_init__(self) -> None:
        if self.batch_size % self.lanes:
            raise TrainingError(f"batch_size {self.batch_size} is not a multiple of lanes {self.lanes}")

    @property
    def rows_per_lane(self) -> int:
        return self.batch_size // self.lanes

    def task(self, step: int) -> str:
        return task_for_step(self.seed, step, self.tasks, self.weights)

    def rank_lanes(self, rank: int, world: int) -> list[int]:
        if self.lanes % world:
            raise TrainingError(f"{self.lanes} lanes (batch {self.batch_size}) cannot be split over {world} ranks")
        return list(range(rank, self.lanes, world))


def _zero() -> int:
    return 0


class _Lane:
    """One lane's per-task streams for the current segment (rebuilt at every segment start)."""

    def __init__(self, spec: StreamSpec, lane: int) -> None:
        self.spec, self.lane = spec, lane
        self.segment = -1
        self.iters: dict[str, Iterator[dict[str, Any]]] = {}

    def next(self, task: str, step: int) -> dict[str, Any]:
        segment = step // self.spec.segment
        if segment != self.segment:
            self.segment, self.iters = segment, {}
        if task not in self.iters:
            self.iters[task] = iter(self._pipeline(task, segment))
        try:
            return next(self.iters[task])
        except (tarfile.TarError, OSError, EOFError) as e:  # a truncated or corrupt tar: name it, not a traceback
            url = next((a for a in reversed(e.args) if isinstance(a, str) and a.endswith(".tar")), "a pair shard")
            why = str(e.args[0]).split(" @ ")[0] if e.args else type(e).__name__
            raise TrainingError(
                f"{url}: unreadable pair shard ({why}); rebuild it (ipt corrupt --task {task})"
            ) from None

    def _pipeline(self, task: str, segment: int) -> wds.DataPipeline:
        s = self.spec
        stages: list[Any] = [
            wds.ResampledShards(
                list(s.urls[task]),
                seed=seed_of(s.seed, "shards", task, self.lane, segment),
                worker_seed=_zero,  # the lane, not the process, owns the stream
                deterministic=True,
            ),
            wds.tarfile_to_samples(handler=wds.reraise_exception),
        ]
        if s.holdout > 0 or s.subset < 1:
            stages.append(wds.select(functools.partial(is_trained, s.seed, s.holdout, s.subset)))
        if s.shuffle_buffer > 1:
            seed = seed_of(s.seed, "shuffle", task, self.lane, segment)
            stages.append(wds.shuffle(s.shuffle_buffer, initial=s.shuffle_buffer, seed=seed))
        return wds.DataPipeline(*stages)


def source_of(key: str) -> str:
    """The source image of a sample key (``<stem>-<h8>-c<k>``, docs/data_format.md): the key without its crop
    index, the same in every task's pair shards."""
    return key.rsplit("-c", 1)[0]


def held_out(seed: int, fraction: float, key: str) -> bool:
    """Whether the source image of ``key`` is in the validation split: a seeded draw per source image (not per
    crop or task), so all crops of a held-out image, in every task, stay out of training."""
    return fraction > 0 and seed_of(seed, "val", source_of(key)) < fraction * 2**63


def in_subset(seed: int, fraction: float, key: str) -> bool:
    """Whether the source image of ``key`` is among the ``fraction`` trained on: a seeded draw per source image
    independent of the hold-out's, so the images of a smaller fraction are among those of a larger one."""
    return fraction >= 1 or seed_of(seed, "subset", source_of(key)) < fraction * 2**63


def is_trained(seed: int, fraction: float, subset: float, sample: dict[str, Any]) -> bool:
    key = str(sample.get("__key__", ""))
    return not held_out(seed, fraction, key) and in_subset(seed, subset, key)


def first_trained_key(urls: Sequence[str], seed: int, fraction: float, subset: float) -> str | None:
    """The first sample key of ``urls`` that the stream trains on (tar headers only, stopping at the first), or None:
    a hold-out and ``data_fraction`` that leave a task nothing would leave its stream looping without a sample."""
    for url in urls:
        with tarfile.open(url) as tf:
            for member in tf:
                key = member.name.rsplit("/", 1)[-1].split(".", 1)[0]
                if member.isfile() and is_trained(seed, fraction, subset, {"__key__": key}):
                    return key
    return None


# The eight symmetries of the square: bit 0 flips left-right, bit 1 flips top-bottom, bit 2 transposes.
def dihedral(x: Tensor, code: int) -> Tensor:
    """``x`` (..., H, W) under symmetry ``code`` (0..7) of the square; 0 is the identity."""
    if code & 1:
        x = x.flip(-1)
    if code & 2:
        x = x.flip(-2)
    if code & 4:
        x = x.transpose(-1, -2)
    return x.contiguous()


def augment_code(seed: int, step: int, lane: int, row: int) -> int:
    """The symmetry of row ``row`` of lane ``lane`` at global step ``step``: a function of those and the seed
    only, so any rank, worker count or resume point applies the same one."""
    return seed_of(seed, "augment", step, lane, row) % 8


def decode_pair(sample: dict[str, Any], task: str, patch: int, scale: int) -> tuple[Tensor, Tensor]:
    """Raw tar sample -> (lq, hr) uint8 CHW tensors, checked against the task and the model's window size."""
    where = f"{sample.get('__url__', '?')}: sample {sample.get('__key__', '?')!r}"
    try:
        lq, hr = png_decode(sample["lq.png"]), png_decode(sample["hr.png"])
        meta = json.loads(sample["meta.json"]) if "meta.json" in sample else {}
    except KeyError as e:
        raise TrainingError(f"{where}: no {e.args[0]} member (not a pair shard)") from None
    except (OSError, ValueError) as e:
        raise TrainingError(f"{where}: undecodable ({e})") from None
    if meta.get("task", task) != task:
        raise TrainingError(f"{where}: made for task {meta['task']!r}, found under task {task!r}")
    if lq.shape[:2] != (patch, patch) or hr.shape[:2] != (patch * scale, patch * scale):
        raise TrainingError(
            f"{where}: lq {lq.shape[:2]} / hr {hr.shape[:2]}, but the model needs {patch}x{patch} / "
            f"{patch * scale}x{patch * scale} for {task} (were the shards made with another patch size?)"
        )
    return torch.from_numpy(lq).permute(2, 0, 1), torch.from_numpy(hr).permute(2, 0, 1)


class Part(NamedTuple):
    step: int
    task: str
    lanes: tuple[int, ...]
    lq: Tensor  # (len(lanes) * rows_per_lane, 3, P, P) uint8
    hr: Tensor


class PairStream(IterableDataset):
    """Per step in [start, stop): the rows of the lanes this rank/worker owns, as one uint8 ``Part``."""

    def __init__(self, spec: StreamSpec, *, rank: int, world: int, start: int, stop: int, workers: int) -> None:
        super().__init__()
        self.spec, self.start, self.stop = spec, start, stop
        self.lanes = spec.rank_lanes(rank, world)
        self.workers = max(1, workers)

    def __iter__(self) -> Iterator[Part]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        mine = self.lanes[worker :: self.workers]
        lanes = [_Lane(self.spec, j) for j in mine]
        s = self.spec
        first = self.start - self.start % s.segment  # replay the current segment up to `start` without decoding
        for step in range(first, self.stop):
            task = s.task(step)
            raw = [lane.next(task, step) for lane in lanes for _ in range(s.rows_per_lane)]
            if step < self.start:
                continue
            pairs = [decode_pair(x, task, s.patch_size, s.scales[task]) for x in raw]
            if s.augment:
                r = s.rows_per_lane
                codes = [augment_code(s.seed, step, mine[i // r], i % r) for i in range(len(pairs))]
                pairs = [(dihedral(lq, c), dihedral(hr, c)) for (lq, hr), c in zip(pairs, codes, strict=True)]
            lq = torch.stack([p[0] for p in pairs]) if pairs else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
            hr = torch.stack([p[1] for p in pairs]) if pairs else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
            yield Part(step, task, tuple(mine), lq, hr)


class Batch(NamedTuple):
    """One rank's share of a global batch: float32 CHW in [0, 255] (IPT's rgb_range)."""

    lq: Tensor
    hr: Tensor
    task: str
    step: int  # 0-based global step this batch is for


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _assemble(parts: list[Part], rows_per_lane: int) -> tuple[Tensor, Tensor]:
    """Concatenate worker parts and put their rows back in lane order."""
    lanes = [j for p in parts for j in p.lanes]
    lq, hr = torch.cat([p.lq for p in parts]), torch.cat([p.hr for p in parts])
    order = sorted(range(len(lanes)), key=lanes.__getitem__)
    rows = [i * rows_per_lane + k for i in order for k in range(rows_per_lane)]
    return lq[rows], hr[rows]


def pair_batches(
    spec: StreamSpec,
    *,
    rank: int = 0,
    world: int = 1,
    start: int = 0,
    stop: int,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """This rank's batches for global steps ``start .. stop-1`` (``num_workers`` DataLoader workers; 0 = inline).

    Workers beyond this rank's lane count would have nothing to read, so at most that many are started.
    """
    workers = min(num_workers, len(spec.rank_lanes(rank, world)))
    ds = PairStream(spec, rank=rank, world=world, start=start, stop=stop, workers=workers)
    if workers == 0:
        parts: Iterator[Part] = iter(ds)
    else:
        loader = DataLoader(
            ds, batch_size=None, num_workers=workers, worker_init_fn=_worker_init, pin_memory=pin_memory
        )
        parts = iter(loader)  # in-order: worker 0, 1, ..., workers-1 for step start, then the next step, ...
    for step in range(start, stop):
        try:
            got = [next(parts) for _ in range(max(1, workers))]
        except TrainingError as e:  # from a worker, wrapped in its traceback: keep the one-line diagnosis
            raise TrainingError(str(e).strip().splitlines()[-1].split("TrainingError: ", 1)[-1]) from None
        if any(p.step != step for p in got):
            raise RuntimeError(f"data stream out of order: expected step {step}, got {[p.step for p in got]}")
        lq, hr = _assemble(got, spec.rows_per_lane)
        yield Batch(lq.float(), hr.float(), got[0].task, step)
