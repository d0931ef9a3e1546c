"""Where clean images come from: an image folder or the ILSVRC2012 train tarball, on local disk or ``s3://``.

Listing, keys and the tar layout: docs/data_pipeline.md#ipt-shard.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ipt.errors import IPTError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".webp")
BUILTIN_SOURCES = ("skimage",)


class SourceError(IPTError):
    """The source cannot be listed; the message names it."""


@dataclass(frozen=True)
class SourceItem:
    """One source file: ``relpath`` names it (keys and seeds derive from it); the rest locates its bytes."""

    relpath: str
    url: str  # the file, or the outer tarball
    size: int
    inner: str | None = None  # member of the outer tar (a class tar, or the image itself)
    member: str | None = None  # member of the class tar


def resolve_source(source: str) -> str:
    """Map built-in names to their folder; pass URLs and paths through."""
    if source == "skimage":
        spec = importlib.util.find_spec("skimage")
        if spec is None or not spec.submodule_search_locations:
            raise SourceError("source 'skimage': scikit-image is not installed (pip install scikit-image)")
        return str(Path(next(iter(spec.submodule_search_locations))) / "data")
    return source


def _fs(url: str):
    from ipt.data import storage

    return storage.filesystem(url)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def list_source(source: str) -> list[SourceItem]:
    """Every image of ``source`` in sorted order of relative path (see the module docstring for the layouts)."""
    url = resolve_source(source)
    fs, path = _fs(url)
    from ipt.data.storage import errors

    with errors(url):  # an unreachable S3 endpoint, missing credentials: one line naming the URL
        found = fs.exists(path)
        is_dir = found and fs.isdir(path)
        listing = sorted(fs.find(path, detail=True).items()) if is_dir else []
    if not found:
        raise SourceError(f"{source}: no such file or folder")
    if is_dir:
        items = []
        for full, info in listing:
            rel = PurePosixPath(full).relative_to(PurePosixPath(path)).as_posix()
            if _is_image(rel):
                items.append(SourceItem(rel, _join(url, rel), int(info.get("size") or 0)))
        if not items:
            raise SourceError(f"{source}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
        return items
    if url.lower().endswith(".tar"):
        with errors(url):
            return _list_tarball(url, fs, path)
    raise SourceError(f"{source}: not a folder or a .tar file")


def _join(url: str, rel: str) -> str:
    return url.rstrip("/") + "/" + rel


def _list_tarball(url: str, fs, path: str) -> list[SourceItem]:
    items: list[SourceItem] = []
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as outer:
            for m in outer.getmembers():
                if not m.isfile():
                    continue
                if m.name.lower().endswith(".tar"):
                    cls = PurePosixPath(m.name).with_suffix("").as_posix()  # sub/n01.tar -> sub/n01
                    inner_f = outer.extractfile(m)
                    with tarfile.open(fileobj=inner_f, mode="r:") as inner:
                        for im in inner.getmembers():
                            if im.isfile() and _is_image(im.name):
                                rel = f"{cls}/{PurePosixPath(im.name).as_posix().lstrip('/')}"
                                items.append(SourceItem(rel, url, im.size, inner=m.name, member=im.name))
                elif _is_image(m.name):
                    items.append(SourceItem(PurePosixPath(m.name).as_posix(), url, m.size, inner=m.name))
    except tarfile.TarError as e:
        raise SourceError(f"{url}: not a readable tar ({e})") from None
    if not items:
        raise SourceError(f"{url}: no images found in the tarball")
    items.sort(key=lambda it: it.relpath)
    for a, b in zip(items, items[1:], strict=False):
        if a.relpath == b.relpath:
            raise SourceError(
                f"{url}: members {_where(a)} and {_where(b)} would both be sample {a.relpath!r} (keys and seeds "
                "come from it); rename one of them"
            )
    return items


def _where(it: SourceItem) -> str:
    return f"{it.inner}:{it.member}" if it.member else str(it.inner)


def read_items(items: list[SourceItem]) -> list[tuple[SourceItem, bytes | Exception]]:
    """The bytes of each item (or the exception that reading raised), opening each tarball once per call."""
    out: list[tuple[SourceItem, bytes | Exception]] = []
    by_tar: dict[str, list[int]] = {}
    results: list[bytes | Exception | None] = [None] * len(items)
    for i, it in enumerate(items):
        if it.inner is None:
            try:
                fs, path = _fs(it.url)
                with fs.open(path, "rb") as f:
                    results[i] = f.read()
            except Exception as e:  # noqa: BLE001 - reported per file, never fatal
                results[i] = e
        else:
            by_tar.setdefault(it.url, []).append(i)
    for url, idx in by_tar.items():
        fs, path = _fs(url)
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as outer:
            members = {m.name: m for m in outer.getmembers()}
            inner_cache: dict[str, tarfile.TarFile] = {}
            for i in idx:
                it = items[i]
                try:
                    if it.member is None:
                        results[i] = outer.extractfile(members[it.inner]).read()
                    else:
                        if it.inner not in inner_cache:
                            inner_cache[it.inner] = tarfile.open(
                                fileobj=outer.extractfile(members[it.inner]), mode="r:"
                            )
                        inner = inner_cache[it.inner]
                        results[i] = inner.extractfile(inner.getmember(it.member)).read()
                except Exception as e:  # noqa: BLE001
                    results[i] = e
    for it, r in zip(items, results, strict=True):
        out.append((it, r))
    return out


def listing_digest(items: list[SourceItem]) -> str:
    """sha256 over (relpath, size) of every item: a changed, added or removed file changes the plan."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([it.relpath, it.size]).encode())
    return h.hexdigest()


def decode_error_text(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


__all__ = [
    "BUILTIN_SOURCES",
    "IMAGE_SUFFIXES",
    "SourceError",
    "SourceItem",
    "decode_error_text",
    "list_source",
    "listing_digest",
    "read_items",
    "resolve_source",
]
