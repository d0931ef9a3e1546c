"""Atomic file writes (a temporary beside the target, then a rename, so a reader never sees half a file) and file
digests. Design notes: docs/storage.md#stages-with-s3-paths (atomic writes).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[IO[bytes]], object],
    *,
    fsync: bool = True,
    tmp_prefix: str | None = None,
) -> Path:
    """Create ``path``'s folder, call ``write(f)`` on a binary temporary beside it, then rename it over ``path``.

    The temporary is ``.<name>.<random>.tmp``, or ``<tmp_prefix><random>-<name>`` for a caller that finds (and
    removes) a killed writer's temporaries by their prefix (ipt.data.storage)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    tmp = p.parent / (f"{tmp_prefix}{token}-{p.name[:100]}" if tmp_prefix else f".{p.name[:100]}.{token}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (read in 1 MiB chunks): what registry tags and benchmark reports record."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: str | os.PathLike, obj: object, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """Write ``obj`` as JSON, atomically; strict (a NaN or infinity raises instead of writing a token JSON lacks)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))
