"""One small API over local paths and ``s3://bucket/prefix`` URLs (fsspec + s3fs), for the data stages.

Credentials (environment only): docs/storage.md#environment-variables; URLs, errors, atomicity: #stages-with-s3-paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import PurePosixPath
from typing import IO, Any

from ipt.errors import IPTError
from ipt.fileio import atomic_write

TMP_PREFIX = ".ipt-tmp-"  # atomic-write temporaries (local only): a prefix no user file has; skipped by listings
_ENV_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
)
_S3_CACHE: dict[tuple[int, str], Any] = {}
_S3_LOCK = threading.Lock()


class StorageError(IPTError):
    """A storage operation failed; the message starts with the URL."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The URL (or its bucket) does not exist."""


# ---------------------------------------------------------------------------------------------------------- URLs


def is_local(url: str) -> bool:
    """True for local paths and ``file://`` URLs; False for ``s3://``; StorageError for any other scheme."""
    scheme = _scheme(url)
    return scheme in ("", "file")


def local_path(url: str) -> str:
    """The absolute local path of a local URL."""
    if not is_local(url):
        raise StorageError(f"{url}: not a local path")
    return os.path.abspath(url[len("file://") :] if url.startswith("file://") else url)


def join(url: str, *parts: str) -> str:
    """``url`` + ``/part/...`` (POSIX separators). Parts are relative; empty parts, '.' and '..' are refused."""
    out = url.rstrip("/")
    for part in parts:
        for piece in str(part).strip("/").split("/"):
            if piece in ("", ".", ".."):
                raise StorageError(f"{url}: bad path part {part!r} (relative names without '.' or '..' only)")
            out = f"{out}/{piece}"
    return out


def endpoint_url() -> str | None:
    """The S3 endpoint from the environment (``AWS_ENDPOINT_URL_S3``, then ``AWS_ENDPOINT_URL``), or None for AWS."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the path to pass to it (absolute local path, or ``bucket/key``)."""
    if is_local(url):
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), local_path(url)
    bucket, key = _split_s3(url)
    return _s3fs(), f"{bucket}/{key}" if key else bucket


# ------------------------------------------------------------------------------------------------------- reading


def exists(url: str) -> bool:
    """Whether a file or a non-empty folder exists at ``url`` (False, not an error, for a missing S3 bucket)."""
    if is_local(url):
        return os.path.exists(local_path(url))
    fs, path = filesystem(url)
    with errors(url):
        return bool(fs.exists(path))


def size(url: str) -> int:
    """Size in bytes of the file at ``url``."""
    fs, path = filesystem(url)
    with errors(url):
        return int(fs.size(path))


def open_read(url: str) -> IO[bytes]:
    """A binary file object for reading (close it, or use it as a context manager)."""
    fs, path = filesystem(url)
    with errors(url):
        if fs.isdir(path):
            raise IsADirectoryError(path)
        return fs.open(path, "rb")


def read_bytes(url: str) -> bytes:
    """The whole content of the file at ``url``."""
    if is_local(url):
        with errors(url), open(local_path(url), "rb") as f:
            return f.read()
    fs, path = filesystem(url)
    with errors(url):
        return fs.cat_file(path)


def list_files(root: str, suffixes: Sequence[str] | None = None) -> list[str]:
    """Every file under ``root`` (recursively) as sorted relative POSIX paths.

    Args:
        root: a folder URL; an error if it is missing or is a file.
        suffixes: keep only names ending in one of these (case-insensitive; ``"png"`` means ``".png"``).
    """
    fs, path = filesystem(root)
    with errors(root):
        if not fs.isdir(path):
            raise (NotADirectoryError if fs.exists(path) else FileNotFoundError)(path)
        found = fs.find(path, withdirs=False, detail=False)
    base = PurePosixPath(path)
    ends = tuple(s.lower() if s.startswith(".") else "." + s.lower() for s in suffixes) if suffixes else None
    rels = []
    for full in found:
        if full.endswith("/"):  # S3 "folder marker" objects
            continue
        rel = PurePosixPath(full).relative_to(base)
        if any(p.startswith(TMP_PREFIX) for p in rel.parts):
            continue
        if ends is None or rel.name.lower().endswith(ends):
            rels.append(rel.as_posix())
    return sorted(rels)


def list_names(folder: str, *, temporaries: bool = False) -> list[str]:
    """Sorted names of the files and folders directly in ``folder`` (our atomic-write temporaries only with
    ``temporaries``); [] if it does not exist."""
    fs, path = filesystem(folder)
    with errors(folder):
        if not fs.isdir(path):
            return []
        entries = fs.ls(path, detail=False)
    names = {PurePosixPath(e.rstrip("/")).name for e in entries if e.rstrip("/") != path.rstrip("/")}
    return sorted(n for n in names if n and (temporaries or not n.startswith(TMP_PREFIX)))


def is_folder(url: str) -> bool:
    fs, path = filesystem(url)
    with errors(url):
        return bool(fs.isdir(path))


# ------------------------------------------------------------------------------------------------------- writing


def makedirs(url: str) -> None:
    """Create a local folder (and parents). On S3 folders are implicit: only check that the bucket exists."""
    if is_local(url):
        with errors(url):
            os.makedirs(local_path(url), exist_ok=True)
        return
    fs, _ = filesystem(url)
    bucket, _ = _split_s3(url)
    with errors(url):
        fs.call_s3("head_bucket", Bucket=bucket)


def atomic_write_bytes(url: str, data: bytes) -> None:
    """Replace the file at ``url`` with ``data`` atomically (see the module docstring); creates local parents."""
    if is_local(url):
        with errors(url):
            _write_local(local_path(url), lambda f: f.write(data))
        return
    fs, path = filesystem(url)
    with errors(url):
        fs.pipe_file(path, bytes(data))


def atomic_write_file(local_tmp_path: str | os.PathLike[str], url: str, *, keep: bool = False) -> None:
    """Publish a finished local file at ``url`` atomically (for files too large to hold in memory).

    Local destination: renamed into place when on the same filesystem, else copied to a temporary beside the
    destination, fsynced and renamed. S3: uploaded with one put (multipart for large files, visible only once
    complete). The source is removed afterwards unless ``keep``.
    """
    src = os.fspath(local_tmp_path)
    if not os.path.isfile(src):
        raise StorageNotFoundError(f"{url}: source file {src} does not exist")
    if is_local(url):
        dest = local_path(url)
        with errors(url):
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if not keep and os.stat(src).st_dev == os.stat(os.path.dirname(dest)).st_dev:
                fd = os.open(src, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                _publish(src, dest)
                return
            with open(src, "rb") as f:
                _write_local(dest, lambda out: shutil.copyfileobj(f, out, 16 * 2**20))
    else:
        fs, path = filesystem(url)
        with errors(url):
            fs.put_file(src, path)
    if not keep:
        _unlink_quietly(src)


def remove(url: str, *, missing_ok: bool = True) -> None:
    """Delete one file."""
    fs, path = filesystem(url)
    with errors(url):
        if is_local(url):
            if os.path.isdir(path):
                raise IsADirectoryError(path)
            try:
                os.unlink(path)
            except FileNotFoundError:
                if not missing_ok:
                    raise
            return
        if not missing_ok and not fs.exists(path):
            raise FileNotFoundError(path)
        fs.rm_file(path)


def remove_tree(url: str) -> None:
    """Delete a folder and everything under it; nothing to do if it does not exist."""
    fs, path = filesystem(url)
    with errors(url):
        if is_local(url):
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                _unlink_quietly(path)
            return
        if fs.find(path, withdirs=False):
            fs.rm(path, recursive=True)


def remove_temporaries(folder: str, subfolders: Sequence[str] = ()) -> list[str]:
    """Remove the atomic-write temporaries (``.ipt-tmp-*``) a killed writer left directly in a local ``folder`` and
    in its ``subfolders`` (not recursively: only where the caller writes); returns their paths. S3 writes leave no
    temporaries (an aborted multipart upload is invisible; a bucket lifecycle rule ``AbortIncompleteMultipartUpload``
    reclaims its parts)."""
    if not is_local(folder):
        return []
    removed = []
    for d in [local_path(folder), *(os.path.join(local_path(folder), s) for s in subfolders)]:
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            full = os.path.join(d, name)
            if name.startswith(TMP_PREFIX) and os.path.isfile(full) and not os.path.islink(full):
                _unlink_quietly(full)
                removed.append(full)
    return sorted(removed)


# ----------------------------------------------------------------------------------------------------- internals


def _scheme(url: str) -> str:
    head, sep, _ = str(url).partition("://")
    if not sep:
        return ""
    if head not in ("file", "s3"):
        raise StorageError(f"{url}: unsupported URL scheme {head!r} (local paths, file:// and s3:// only)")
    return head


def _split_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket:
        raise StorageError(f"{url}: no bucket in the URL (expected s3://bucket/prefix)")
    return bucket, key.strip("/")


def _s3fs() -> Any:
    """One S3FileSystem per process and per environment (a changed credential or endpoint gets a new client).

    fsspec's own instance cache is keyed by constructor arguments only, so it would keep a client built from old
    environment variables; listings are not cached because other processes write the same prefixes.
    """
    fingerprint = hashlib.sha256(repr([os.environ.get(k) for k in _ENV_KEYS]).encode()).hexdigest()
    key = (os.getpid(), fingerprint)
    with _S3_LOCK:
        fs = _S3_CACHE.get(key)
        if fs is None:
            try:
                import s3fs
            except ImportError as e:
                raise StorageError(f"s3:// URLs need s3fs (pip install s3fs): {e}") from None
            kwargs: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
            if endpoint_url():
                kwargs["endpoint_url"] = endpoint_url()
            fs = s3fs.S3FileSystem(**kwargs)
            fs.loop.set_exception_handler(_quiet_lost_requests)
            _S3_CACHE.clear()  # stale clients of an older environment or a parent process
            _S3_CACHE[key] = fs
    return fs


def _quiet_lost_requests(loop: Any, context: dict[str, Any]) -> None:
    """s3fs's IO loop: a request that died with its connection after the call awaiting the batch already failed
    (and was reported as one StorageError line) is not printed again as an unretrieved task; all else is."""
    exc = context.get("exception")
    lost = isinstance(exc, OSError) or type(exc).__module__.startswith("aiohttp")
    if context.get("message") == "Task exception was never retrieved" and lost:
        return
    loop.default_exception_handler(context)


def _where() -> str:
    ep = endpoint_url()
    return f"endpoint {ep}" if ep else "AWS (no AWS_ENDPOINT_URL set)"


@contextlib.contextmanager
def errors(url: str) -> Iterator[None]:
    """Re-raise backend errors as StorageError naming the URL (and the endpoint for S3)."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as e:
        if not is_local(url) and _bucket_missing(url, str(e)):
            bucket, _ = _split_s3(url)
            raise StorageNotFoundError(f"{url}: bucket {bucket!r} does not exist at {_where()}") from None
        raise StorageNotFoundError(f"{url}: no such file or folder") from None
    except IsADirectoryError:
        raise StorageError(f"{url}: is a folder, not a file") from None
    except NotADirectoryError:
        raise StorageError(f"{url}: is a file, not a folder") from None
    except PermissionError as e:
        raise StorageError(f"{url}: access denied ({_first_line(e)})") from None
    except Exception as e:
        kind = _botocore_kind(e)
        if kind == "credentials":
            raise StorageError(
                f"{url}: no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                f"(or AWS_PROFILE) in the environment"
            ) from None
        if kind == "connection":
            raise StorageError(f"{url}: cannot reach the S3 {_where()} ({_first_line(e)})") from None
        if isinstance(e, OSError | ValueError) or kind == "other":
            raise StorageError(f"{url}: {type(e).__name__}: {_first_line(e)}") from e
        raise


def _bucket_missing(url: str, text: str) -> bool:
    """Whether a not-found error on ``url`` is really a missing bucket (asks the server when the text is unclear)."""
    text = text.lower()
    if "specified bucket does not exist" in text or "nosuchbucket" in text:
        return True
    bucket, _ = _split_s3(url)
    try:
        _s3fs().call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        return True
    except Exception:  # noqa: BLE001 - only a hint for the message; the original error is reported anyway
        return False
    return False


def _botocore_kind(e: BaseException) -> str | None:
    if not type(e).__module__.startswith("botocore"):
        return None
    from botocore import exceptions as bx

    if isinstance(e, bx.NoCredentialsError | bx.PartialCredentialsError):
        return "credentials"
    if isinstance(e, bx.EndpointConnectionError | bx.ConnectTimeoutError):
        return "connection"
    return "other"


def _first_line(e: BaseException) -> str:
    text = str(e)
    return text.splitlines()[0] if text else type(e).__name__


def _write_local(dest: str, write: Callable[[IO[bytes]], object]) -> None:
    """Write a temporary beside ``dest`` with ``write(f)``, fsync it, rename it over ``dest`` and sync the folder."""
    atomic_write(dest, write, tmp_prefix=TMP_PREFIX)
    _sync_dir(os.path.dirname(dest))


def _publish(tmp: str, dest: str) -> None:
    os.replace(tmp, dest)
    _sync_dir(os.path.dirname(dest))


def _sync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):  # make a rename itself durable; not every filesystem allows it
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


__all__ = [
    "TMP_PREFIX",
    "StorageError",
    "StorageNotFoundError",
    "atomic_write_bytes",
    "atomic_write_file",
    "endpoint_url",
    "errors",
    "exists",
    "filesystem",
    "is_folder",
    "is_local",
    "join",
    "list_files",
    "list_names",
    "local_path",
    "makedirs",
    "open_read",
    "read_bytes",
    "remove",
    "remove_temporaries",
    "remove_tree",
    "size",
]
