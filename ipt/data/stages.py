"""The two data stages: clean crops from a source (``ipt shard``) and (LQ, HR) pairs per task (``ipt corrupt``).

Each stage is ``plan_*`` (pure: lists the source, fixes every shard's inputs and a digest of everything that
determines the bytes) then :func:`execute` (lock, skip what a previous run of the same plan finished, fan the rest
out, write the manifest). The CLI and the Prefect flows call these same functions; see docs/data_format.md for
the shard layout and docs/data_pipeline.md for the stages.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ipt.data import shards, storage
from ipt.data.executors import map_unordered
from ipt.data.sources import SourceItem, list_source, listing_digest, read_items
from ipt.errors import IPTError

DEFAULT_SEED = 20210507


def code_digest(*extra_files: str) -> str:
    """sha256 of the modules that decide the shard bytes (the same files dvc.yaml lists as the stage's deps), so a
    code change that makes DVC rerun a stage also makes the stage rewrite its shards instead of reusing them."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in [*(here / m for m in ("shards.py", "stages.py", "sources.py", "images.py")), *map(Path, extra_files)]:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _np_rng(*parts: Any) -> np.random.Generator:
    """A numpy generator seeded from sha256 over a JSON encoding of ``parts`` (never Python's salted hash)."""
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "big")))


# ------------------------------------------------------------------------------------------------ clean shards


@dataclass(frozen=True)
class ShardConfig:
    """``ipt shard`` / params.yaml ``shard`` (plus the top-level ``seed`` and ``patch_size``)."""

    source: str = "skimage"
    out: str = "data/clean"
    patch_size: int = 48
    max_scale: int = 4
    crops: int = 2
    images_per_shard: int = 256
    png_level: int = 0
    seed: int = DEFAULT_SEED

    @property
    def crop_size(self) -> int:
        return self.patch_size * self.max_scale

    def __post_init__(self) -> None:
        for name in ("patch_size", "max_scale", "crops", "images_per_shard"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"shard.{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0 <= int(self.png_level) <= 9:
            raise ValueError(f"shard.png_level must be in 0..9, got {self.png_level!r}")


@dataclass(frozen=True)
class CleanJob:
    name: str
    folder: str
    digest: str
    items: tuple[SourceItem, ...]
    crop: int
    crops: int
    seed: int
    png_level: int


@dataclass(frozen=True)
class Plan:
    folder: str
    digest: str
    format: str
    jobs: tuple[Any, ...]
    params: dict[str, Any]
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [j.name for j in self.jobs]


def plan_shard(cfg: ShardConfig) -> Plan:
    items = list_source(cfg.source)
    params = {k: v for k, v in asdict(cfg).items() if k not in ("source", "out")}
    digest = shards.plan_digest([shards.FORMAT_CLEAN, params, listing_digest(items), code_digest()])
    n = cfg.images_per_shard
    jobs = tuple(
        CleanJob(
            shards.shard_name(i // n),
            cfg.out,
            digest,
            tuple(items[i : i + n]),
            cfg.crop_size,
            cfg.crops,
            cfg.seed,
            cfg.png_level,
        )
        for i in range(0, len(items), n)
    )
    params = {"source": cfg.source, "images": len(items), "crop_size": cfg.crop_size, **params}
    return Plan(cfg.out, digest, shards.FORMAT_CLEAN, jobs, params)


def _open_checked(data: bytes, crop: int):
    """(PIL image, None) for a usable file, (None, reason) otherwise. The size check needs only the header, so a
    too-small file is never decoded; a usable one is fully decoded here (truncation fails here, not later)."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if min(w, h) < crop:
            return None, f"too small: {w}x{h} < {crop}x{crop}"
        img.load()
    except UnidentifiedImageError:  # its message embeds an object address: not reproducible bytes
        return None, "cannot decode image (not a recognised image format)"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return None, f"cannot decode image ({shards.first_line(e)})"
    return img, None


def _cropper(img, name: str) -> Callable[[int, int, int], np.ndarray]:
    """A function (top, left, size) -> (size, size, 3) uint8 RGB crop. RGB images crop in PIL (no full-image
    copy); other modes convert once with the same rules as ``ipt restore`` (ipt.data.images)."""
    if img.mode == "RGB":
        return lambda t, l, n: np.asarray(img.crop((l, t, l + n, t + n)))
    from ipt.data.images import _to_rgb8

    arr, _notes = _to_rgb8(img)
    return lambda t, l, n: np.ascontiguousarray(arr[t : t + n, l : l + n])


def run_clean_job(job: CleanJob) -> shards.ShardResult:
    """Decode, convert and crop every readable image of one shard; unusable files are listed, never fatal."""
    from ipt.data.images import ImageReadError

    samples: list[tuple[str, dict[str, bytes]]] = []
    skipped: list[dict[str, str]] = []
    for item, data in read_items(list(job.items)):
        if isinstance(data, Exception):
            skipped.append({"path": item.relpath, "reason": f"unreadable: {shards.first_line(data)}"})
            continue
        img, reason = _open_checked(data, job.crop)
        if img is None:
            skipped.append({"path": item.relpath, "reason": reason})
            continue
        try:
            crop_at = _cropper(img, item.relpath)
        except ImageReadError as e:
            skipped.append({"path": item.relpath, "reason": str(e)})
            continue
        w, h = img.size
        rng = _np_rng(job.seed, "crop", item.relpath)
        for k in range(job.crops):
            top, left = int(rng.integers(0, h - job.crop + 1)), int(rng.integers(0, w - job.crop + 1))
            meta = {"source": item.relpath, "crop": k, "box": [top, left, job.crop], "orig_size": [h, w]}
            png = shards.png_encode(crop_at(top, left, job.crop), job.png_level)
            samples.append((shards.sample_key(item.relpath, k), {"png": png, "json": shards.json_bytes(meta)}))
        img.close()
    result = shards.write_shard(job.folder, job.name, shards.tar_bytes(samples), skipped, len(samples))
    shards.record_progress(job.folder, job.digest, result)
    return result


# ------------------------------------------------------------------------------------------------ pair shards

# A task name becomes a folder name (``out``'s ``{task}``), an MLflow and DVC key: no separators, no "..", no
# leading dot or dash.
TASK_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class TaskError(IPTError):
    """A ``corrupt.tasks`` entry that cannot be used; the message names the params file, the task and the problem."""


def _where(task: str, params_file: str | None) -> str:
    return f"{params_file}: corrupt.tasks.{task}" if params_file else f"corrupt.tasks.{task}"


def check_task_name(task: Any, params_file: str | None = None) -> str:
    """``task`` if it is a safe name (letters, digits, ``_``, ``-``, ``.``; no ``..``; not starting with ``.`` or
    ``-``), else :class:`TaskError`: the name is substituted into output paths."""
    if not isinstance(task, str) or not TASK_NAME_RE.match(task) or ".." in task:
        where = f"{params_file}: " if params_file else ""
        raise TaskError(
            f"{where}bad task name {task!r}: use letters, digits, '_', '-' and '.' (no '/', no '..', "
            "not starting with '.' or '-')"
        )
    return task


def task_spec(tasks: Any, task: str, params_file: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(corruption name, params)`` of ``task`` in a params file's ``corrupt.tasks`` mapping; :class:`TaskError`
    naming the file and the task for a missing task or an entry that is not ``{name: <corruption>, <param>: ...}``.
    The name is checked by :class:`CorruptConfig`, the params by :func:`plan_corrupt`."""
    src = params_file or "the params file"
    if not isinstance(tasks, Mapping) or not tasks:
        got = "no corrupt.tasks found" if not tasks else f"corrupt.tasks is a {type(tasks).__name__}, not a mapping"
        raise TaskError(f"task {task!r} is not in {src} ({got})")
    if task not in tasks:
        raise TaskError(f"task {task!r} is not in {src} corrupt.tasks; known: {sorted(map(str, tasks))}")
    where, spec = _where(task, params_file), tasks[task]
    if not isinstance(spec, Mapping):
        raise TaskError(f"{where} must be a mapping like {{name: <corruption>, <param>: <value>}}, got {spec!r}")
    params = dict(spec)
    name = params.pop("name", None)
    if not isinstance(name, str) or not name:
        got = "none" if name is None else repr(name)
        raise TaskError(f"{where}: needs a 'name' (the corruption's registry name), got {got}")
    bad_keys = [k for k in params if not isinstance(k, str)]
    if bad_keys:
        raise TaskError(f"{where}: parameter names must be strings, got {bad_keys}")
    return name, params


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

    def __post_init__(self) -> None:
        check_task_name(self.task, self.params_file)

    @property
    def where(self) -> str:
        """``<params file>: corrupt.tasks.<task>``, the prefix of every message about this task."""
        return _where(self.task, self.params_file)

    @property
    def folder(self) -> str:
        return self.out.format(task=self.task)

    @property
    def scale(self) -> int:
        return int(self.params.get("scale", 1))


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


def check_corruption(cfg: CorruptConfig) -> Any:
    """The corruption's registry entry once ``cfg.params`` passed ``corruptions.check_params`` (names, finite plain
    values, the entry's check hook, a trial run) and give the LQ patch size; :class:`TaskError` naming the params
    file, the task and the bad parameter otherwise. Runs before anything is written."""
    import corruptions

    if not isinstance(cfg.params, Mapping):
        raise TaskError(f"{cfg.where}: params must be a mapping, got {cfg.params!r}")
    try:
        entry = corruptions.get(cfg.corruption)
    except KeyError as e:
        raise TaskError(f"{cfg.where}: {e.args[0]}") from None
    try:
        corruptions.check_params(cfg.corruption, cfg.params)
        scale = cfg.scale
    except corruptions.ParamsError as e:
        raise TaskError(f"{cfg.where}: {e}") from None
    except (TypeError, ValueError):
        raise TaskError(f"{cfg.where}: scale must be a positive integer, got {cfg.params.get('scale')!r}") from None
    if scale < 1:
        raise TaskError(f"{cfg.where}: scale must be a positive integer, got {cfg.params.get('scale')!r}")
    hr = cfg.patch_size * scale
    size = tuple(entry.out_size(hr, hr, **cfg.params))
    if size != (cfg.patch_size, cfg.patch_size):
        raise TaskError(
            f"{cfg.where}: {cfg.corruption} maps {hr}x{hr} to {size}, "
            f"not the {cfg.patch_size}x{cfg.patch_size} LQ patch (is its scale param {scale}?)"
        )
    return entry


def plan_corrupt(cfg: CorruptConfig) -> Plan:
    entry = check_corruption(cfg)
    hr = cfg.patch_size * cfg.scale
    clean = shards.read_manifest(cfg.clean, shards.FORMAT_CLEAN)
    crop = int(clean["params"]["crop_size"])
    if hr > crop:
        raise ValueError(
            f"task {cfg.task} needs {hr}x{hr} HR patches but {cfg.clean} holds {crop}x{crop} crops "
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
        "scale": cfg.scale,
        "png_level": cfg.png_level,
        "seed": cfg.seed,
    }
    module = inspect.getsourcefile(entry.fn)
    digest = shards.plan_digest(
        [shards.FORMAT_PAIRS, params, [s["sha256"] for s in clean["shards"]], code_digest(module)]
    )
    jobs = tuple(
        PairJob(
            s["name"],
            cfg.folder,
            digest,
            storage.join(cfg.clean, s["name"]),
            cfg.task,
            cfg.corruption,
            tuple(sorted(cfg.params.items())),
            cfg.scale,
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
    from corruptions.bicubic_down import quantize_uint8

    params = dict(job.params)
    hr_size = job.patch * job.scale
    samples: list[tuple[str, dict[str, bytes]]] = []
    skipped: list[dict[str, str]] = []
    for key, members in shards.iter_tar(storage.read_bytes(job.clean_url)):
        try:
            full = shards.png_decode(members["png"])
            source = json.loads(members["json"])["source"]
        except (KeyError, ValueError, OSError) as e:
            skipped.append({"path": key, "reason": f"bad clean sample: {shards.first_line(e)}"})
            continue
        rng = _np_rng(job.seed, job.task, key, "hr-crop")
        top = int(rng.integers(0, full.shape[0] - hr_size + 1))
        left = int(rng.integers(0, full.shape[1] - hr_size + 1))
        hr = np.ascontiguousarray(full[top : top + hr_size, left : left + hr_size])
        x = torch.from_numpy(hr).permute(2, 0, 1)[None].float() / 255.0
        seed = corruptions.seed_from(job.seed, job.task, key)
        gen = torch.Generator().manual_seed(seed)
        lq = quantize_uint8(corruptions.apply(job.corruption, x, generator=gen, **params))[0].permute(1, 2, 0)
        lq = np.ascontiguousarray(lq.numpy())
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
                    "hr.png": shards.png_encode(hr, job.png_level),
                    "lq.png": shards.png_encode(lq, job.png_level),
                    "meta.json": shards.json_bytes(meta),
                },
            )
        )
    result = shards.write_shard(job.folder, job.name, shards.tar_bytes(samples), skipped, len(samples))
    shards.record_progress(job.folder, job.digest, result)
    return result


# ------------------------------------------------------------------------------------------------ running a plan


def run_job(job: CleanJob | PairJob) -> shards.ShardResult:
    return run_clean_job(job) if isinstance(job, CleanJob) else run_pair_job(job)


ProgressFn = Callable[[int, int, shards.ShardResult | None], None]


def check_not_empty(plan: Plan, manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` if it has samples; else :class:`~ipt.data.shards.ShardError` naming the source and how many
    files were skipped (the manifest, with every skip reason, stays for diagnosis)."""
    if manifest.get("samples"):
        return manifest
    skipped = manifest.get("skipped") or []
    first = f"; first: {skipped[0]['path']}: {skipped[0]['reason']}" if skipped else ""
    where = f"reasons in {storage.join(plan.folder, shards.MANIFEST)}"
    if plan.format == shards.FORMAT_CLEAN:
        n = plan.params.get("images", len(skipped))
        raise shards.ShardError(
            f"{plan.params.get('source', plan.folder)}: all {n} file(s) were skipped, no samples ({where}{first})"
        )
    raise shards.ShardError(
        f"{plan.params.get('clean', plan.folder)}: all {len(skipped)} clean sample(s) were skipped, no pairs "
        f"({where}{first})"
    )


def start(plan: Plan) -> tuple[dict[str, Any] | None, list[Any]]:
    """Under the caller's lock: (the manifest if already complete, else None; the jobs still to run). A complete
    folder without a single sample is an error (:func:`check_not_empty`)."""
    manifest = shards.prepare_folder(plan.folder, plan.digest)
    if manifest is not None:
        return check_not_empty(plan, manifest), []
    done = shards.completed(plan.folder, plan.digest, plan.names)
    return None, [j for j in plan.jobs if j.name not in done]


def finish(plan: Plan) -> dict[str, Any]:
    """Write the manifest; an error (after writing it) if no sample was made (:func:`check_not_empty`)."""
    manifest = shards.finalize(plan.folder, plan.digest, plan.format, plan.names, plan.params, plan.skipped)
    return check_not_empty(plan, manifest)


def execute(
    plan: Plan,
    executor: str = "process",
    workers: int = 2,
    address: str | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Run ``plan`` into its folder (resuming a killed run of the same plan) and return its manifest."""
    with shards.FolderLock(plan.folder):
        manifest, todo = start(plan)
        if manifest is not None:
            return manifest
        total, done = len(plan.jobs), len(plan.jobs) - len(todo)
        if progress:
            progress(done, total, None)
        for result in map_unordered(run_job, todo, executor=executor, workers=workers, address=address):
            done += 1
            if progress:
                progress(done, total, result)
        return finish(plan)
