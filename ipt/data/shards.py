"""Shard folders: manifests, atomic shard writes, resume records, ownership and locking (encoding: ipt.data.encoding).

Byte identity, restartability and locking: docs/data_pipeline.md#ipt-shard.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipt.data import storage
from ipt.data.encoding import json_bytes
from ipt.data.storage import StorageError
from ipt.errors import IPTError

FORMAT_CLEAN = "ipt-clean-v1"
FORMAT_PAIRS = "ipt-pairs-v1"
MANIFEST = "manifest.json"
PROGRESS = ".progress"
CLAIM = "claim.json"  # in .progress/: the plan a run started here and the shard names it may write
SHARD_RE = re.compile(r"^shard-(\d{6})\.tar$")


class ShardError(IPTError):
    """A shard folder cannot be used or written; the message names it."""


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


# ------------------------------------------------------------------------------------------------ jobs and plans


@dataclass(frozen=True)
class ShardResult:
    name: str
    samples: int
    sha256: str
    size: int
    skipped: list[dict[str, str]] = field(default_factory=list)

    def record(self, digest: str) -> dict[str, Any]:
        return {
            "plan": digest,
            "name": self.name,
            "samples": self.samples,
            "sha256": self.sha256,
            "size": self.size,
            "skipped": self.skipped,
        }


def write_shard(out: str, name: str, data: bytes, skipped: list[dict[str, str]], samples: int) -> ShardResult:
    """Write one finished shard atomically and return what the manifest needs."""
    storage.atomic_write_bytes(storage.join(out, name), data)
    return ShardResult(name, samples, hashlib.sha256(data).hexdigest(), len(data), skipped)


def plan_digest(obj: Any) -> str:
    return hashlib.sha256(json_bytes(obj)).hexdigest()


def read_manifest(folder: str, expect_format: str | None = None) -> dict[str, Any]:
    url = storage.join(folder, MANIFEST)
    if not storage.exists(url):
        raise ShardError(f"{folder}: no {MANIFEST} (not a shard folder, or its stage did not finish)")
    try:
        manifest = json.loads(storage.read_bytes(url))
    except (ValueError, OSError) as e:
        raise ShardError(f"{url}: unreadable manifest ({e})") from None
    if expect_format and manifest.get("format") != expect_format:
        raise ShardError(f"{url}: format {manifest.get('format')!r}, expected {expect_format!r}")
    return manifest


class FolderLock:
    """An exclusive, non-blocking ``flock`` on ``<parent>/.<folder name>.lock`` (local) or on a per-URL file in the
    user's cache (S3: serialises runs on this machine only; runs on two machines into one bucket are not detected)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._fd: int | None = None
        if storage.is_local(folder):  # a sibling, so the folder (a DVC output) holds only data
            target = Path(storage.local_path(folder)).absolute()
            self.path = target.parent / f".{target.name}.lock"
        else:
            cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ipt" / "locks"
            self.path = cache / (hashlib.sha256(folder.encode()).hexdigest()[:16] + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._cannot(e) from None

    def _cannot(self, e: OSError) -> ShardError:
        """A one-line error naming the output folder and the path that could not be made (unwritable, not a folder)."""
        why = "not a folder" if isinstance(e, FileExistsError | NotADirectoryError) else e.strerror or type(e).__name__
        return ShardError(f"{self.folder}: cannot write here ({e.filename or self.path}: {why})")

    def __enter__(self) -> FolderLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise self._cannot(e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ShardError(f"{self.folder}: another run is writing here ({holder}); wait for it or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            # Emptied, not removed (a removed flock file can be locked twice): a released lock holds the same bytes on
            # every machine, so a folder that contains it (data/pairs, pretrain's input) hashes the same in dvc.lock.
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def completed(folder: str, digest: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """Progress records of this plan whose shard file exists with the recorded size (a resumed run skips them)."""
    done: dict[str, dict[str, Any]] = {}
    for name in names:
        rec_url = storage.join(folder, PROGRESS, name + ".json")
        if not storage.exists(rec_url):
            continue
        try:
            rec = json.loads(storage.read_bytes(rec_url))
        except ValueError:
            continue
        shard_url = storage.join(folder, name)
        if rec.get("plan") == digest and storage.exists(shard_url) and storage.size(shard_url) == rec.get("size"):
            done[name] = rec
    return done


def record_progress(folder: str, digest: str, result: ShardResult) -> None:
    storage.atomic_write_bytes(storage.join(folder, PROGRESS, result.name + ".json"), json_bytes(result.record(digest)))


def _json(url: str) -> Any:
    try:
        return json.loads(storage.read_bytes(url))
    except (ValueError, StorageError):
        return None


def _our_manifest(obj: Any) -> bool:
    return (
        isinstance(obj, dict) and obj.get("format") in (FORMAT_CLEAN, FORMAT_PAIRS) and isinstance(obj.get("plan"), str)
    )


def _owned(folder: str) -> tuple[dict[str, Any] | None, set[str], list[str]]:
    """(this stage's manifest in ``folder`` or None, the shard names a run of ours wrote or claimed there, the
    entries no run of ours wrote: anything else than the manifest, ``.progress/`` with its records and claim, our
    temporaries and claimed shards)."""
    entries = storage.list_names(folder, temporaries=True)
    manifest = _json(storage.join(folder, MANIFEST)) if MANIFEST in entries else None
    ours = manifest if _our_manifest(manifest) else None
    shards_: set[str] = {s.get("name") for s in (ours or {}).get("shards", []) if isinstance(s, dict)}
    foreign: list[str] = []
    progress = storage.join(folder, PROGRESS)
    if PROGRESS in entries:
        if not storage.is_folder(progress):
            foreign.append(PROGRESS)
        for name in storage.list_names(progress, temporaries=True) if storage.is_folder(progress) else []:
            if name.startswith(storage.TMP_PREFIX):
                continue
            record = _json(storage.join(progress, name)) if name.endswith(".json") else None
            if name == CLAIM and isinstance(record, dict) and isinstance(record.get("shards"), list):
                shards_ |= {str(n) for n in record["shards"]}
            elif isinstance(record, dict) and record.get("name") == name[: -len(".json")] and "plan" in record:
                shards_.add(record["name"])
            else:
                foreign.append(f"{PROGRESS}/{name}")
    for name in entries:
        if name == PROGRESS or name.startswith(storage.TMP_PREFIX):
            continue
        if name == MANIFEST and ours is not None:
            continue
        if SHARD_RE.match(name) and name in shards_:
            continue
        foreign.append(name)
    return ours, shards_, sorted(foreign)


def prepare_folder(folder: str, digest: str, fmt: str = FORMAT_CLEAN, names: list[str] | None = None):
    """Under the lock: the manifest if the folder already holds this plan; otherwise claim the folder for it (its
    names in ``.progress/claim.json``), remove a stale manifest of ours and our killed writers' temporaries, and
    return None. A folder holding anything a run of this stage did not write is refused, naming what (nothing is
    changed): the stages write only into an empty folder or one of their own, and delete only what they wrote."""
    storage.makedirs(folder)
    manifest, shards_, foreign = _owned(folder)
    if foreign:
        more = f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else ""
        raise ShardError(
            f"{folder}: holds {len(foreign)} file(s) or folder(s) this stage did not write: "
            f"{', '.join(foreign[:5])}{more}; it writes only into an empty folder or one of its own (move them, or "
            "choose another output folder; nothing was changed)"
        )
    if manifest is not None and manifest.get("plan") == digest:
        return manifest
    claim = {"format": fmt, "plan": digest, "shards": sorted(shards_ | set(names or []))}
    storage.atomic_write_bytes(storage.join(folder, PROGRESS, CLAIM), json_bytes(claim))
    if manifest is not None:
        storage.remove(storage.join(folder, MANIFEST))
    storage.remove_temporaries(folder, [PROGRESS])
    return None


def finalize(
    folder: str, digest: str, fmt: str, names: list[str], params: dict[str, Any], extra_skipped: list | None = None
) -> dict[str, Any]:
    """Write ``manifest.json`` from the progress records, drop shards of older plans, remove ``.progress``."""
    records = completed(folder, digest, names)
    missing = [n for n in names if n not in records]
    if missing:
        raise ShardError(f"{folder}: shards not written: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for existing in storage.list_names(folder):
        if SHARD_RE.match(existing) and existing not in records:
            storage.remove(storage.join(folder, existing))
    skipped = list(extra_skipped or [])
    for n in names:
        skipped.extend(records[n]["skipped"])
    manifest = {
        "format": fmt,
        "plan": digest,
        "samples": sum(records[n]["samples"] for n in names),
        "shards": [{k: records[n][k] for k in ("name", "samples", "sha256", "size")} for n in names],
        "skipped": skipped,
        "params": params,
    }
    storage.atomic_write_bytes(storage.join(folder, MANIFEST), json.dumps(manifest, indent=1).encode() + b"\n")
    storage.remove_tree(storage.join(folder, PROGRESS))
    return manifest


def shard_urls(folder: str, manifest: dict[str, Any] | None = None) -> list[str]:
    manifest = manifest or read_manifest(folder)
    return [storage.join(folder, s["name"]) for s in manifest["shards"]]


def first_line(e: BaseException) -> str:
    text = str(e)
    return text.splitlines()[0] if text else type(e).__name__
