"""``ipt shard``: seeded clean crops of every usable source image into WebDataset shards (plan, then run)."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from corruptions import numpy_generator
from ipt.config import DEFAULT_SEED
from ipt.data import encoding, shards
from ipt.data.plan import Plan
from ipt.data.sources import SourceItem, list_source, listing_digest, read_items


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
    code: str = ""  # sha256 of the code the stage runs (ipt.codedeps.stage_code("shard")): part of the plan digest

    @property
    def crop_size(self) -> int:
        return self.patch_size * self.max_scale

    def __post_init__(self) -> None:
        for name in ("patch_size", "max_scale", "crops", "images_per_shard"):
            if int(getattr(self, name)) < 1:
                raise shards.ShardError(f"shard.{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0 <= int(self.png_level) <= 9:
            raise shards.ShardError(f"shard.png_level must be in 0..9, got {self.png_level!r}")


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

    def run(self) -> shards.ShardResult:
        return run_clean_job(self)


def plan_shard(cfg: ShardConfig) -> Plan:
    """Every shard's images and the digest of what decides the bytes (params, the source listing, the code)."""
    items = list_source(cfg.source)
    params = {k: v for k, v in asdict(cfg).items() if k not in ("source", "out", "code")}
    digest = shards.plan_digest([shards.FORMAT_CLEAN, params, listing_digest(items), cfg.code])
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
        rng = numpy_generator(job.seed, "crop", item.relpath)
        for k in range(job.crops):
            top, left = int(rng.integers(0, h - job.crop + 1)), int(rng.integers(0, w - job.crop + 1))
            meta = {"source": item.relpath, "crop": k, "box": [top, left, job.crop], "orig_size": [h, w]}
            png = encoding.png_encode(crop_at(top, left, job.crop), job.png_level)
            samples.append((encoding.sample_key(item.relpath, k), {"png": png, "json": encoding.json_bytes(meta)}))
        img.close()
    result = shards.write_shard(job.folder, job.name, encoding.tar_bytes(samples), skipped, len(samples))
    shards.record_progress(job.folder, job.digest, result)
    return result
