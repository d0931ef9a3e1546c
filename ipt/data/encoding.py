"""A sample's bytes, identical on every machine: keys, PNG, JSON and ustar tar encoding (and reading them back)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import tarfile
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np


def sample_key(relpath: str, k: int) -> str:
    """``<stem>-<h8>-c<k>``: readable, stable across machines, free of dots (see docs/data_format.md); the stem
    keeps its last 64 characters, the hash of the whole path keeps keys unique."""
    stem = relpath.rsplit(".", 1)[0] if "." in relpath.rsplit("/", 1)[-1] else relpath
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", stem)[-MAX_STEM:]
    digest = hashlib.sha256(relpath.encode("utf-8")).hexdigest()[:8]
    return f"{safe}-{digest}-c{k:02d}"


def png_encode(arr: np.ndarray, level: int = 0) -> bytes:
    """A PNG of an (H, W, 3) or (H, W) uint8 array: filter type 0, zlib ``level``, no ancillary chunks.

    Level 0 stores the pixels (a 192x192 crop encodes in ~0.2 ms, against ~2.8 ms at level 1 for 18% fewer
    bytes on photographs; see docs/BENCHMARKS.md). Any PNG reader decodes it; the bytes depend only on the pixels.
    """
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"png_encode needs (H, W[, 3]) uint8, got {arr.shape} {arr.dtype}")
    h, w = arr.shape[:2]
    color = 2 if arr.ndim == 3 else 0
    raw = np.zeros((h, arr[0].size + 1), np.uint8)  # each row starts with its filter byte (0: none)
    raw[:, 1:] = arr.reshape(h, -1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
        + chunk(b"IEND", b"")
    )


def png_decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.array(img.convert("RGB"), dtype=np.uint8)


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


_BLOCK = 512
MAX_STEM = 64  # keeps every member name (stem + hash + crop + extension) inside ustar's 100 bytes


def _ustar_header(name: str, size: int) -> bytes:
    """A POSIX ustar header with fixed metadata: mode 0644, uid/gid 0, mtime 0, no user or group names."""
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name!r}")
    h = bytearray(_BLOCK)
    h[0 : len(raw)] = raw
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[148:156] = b"        "  # the checksum counts its own field as spaces
    h[156:157] = b"0"  # regular file
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def tar_bytes(samples: Iterable[tuple[str, dict[str, bytes]]]) -> bytes:
    """A ustar archive of ``key.ext`` members, samples in key order and members in extension order, fixed metadata
    (about 0.04 ms per member here; the standard library's tarfile took ~0.13 ms)."""
    parts: list[bytes] = []
    for key, members in sorted(samples, key=lambda s: s[0]):
        for ext in sorted(members):
            data = members[ext]
            parts.append(_ustar_header(f"{key}.{ext}", len(data)))
            parts.append(data)
            if len(data) % _BLOCK:
                parts.append(bytes(_BLOCK - len(data) % _BLOCK))
    parts.append(bytes(2 * _BLOCK))  # end-of-archive marker
    return b"".join(parts)


def iter_tar(data: bytes) -> list[tuple[str, dict[str, bytes]]]:
    """Samples of a shard as ``[(key, {ext: bytes})]`` in stored order (the inverse of :func:`tar_bytes`)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for m in tar.getmembers():
            if not m.isfile():
                continue
            base = m.name.rsplit("/", 1)[-1]
            key_stem, ext = base.split(".", 1)
            key = m.name[: len(m.name) - len(base)] + key_stem
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return list(samples.items())
