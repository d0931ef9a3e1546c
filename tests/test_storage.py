"""ipt.data.storage against local folders and against a real S3 endpoint (moto server mode, real s3fs)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from helpers_s3 import s3_bucket, s3_server  # noqa: F401
from ipt.data import storage
from ipt.data.storage import StorageError, StorageNotFoundError

FILES = {  # written in this (unsorted) order
    "b/z.PNG": b"z",
    "a.png": b"a",
    "b/a/deep.png": b"deep",
    "notes.txt": b"txt",
    "B/upper.png": b"upper",
}


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    """A folder URL: a local tmp dir, or a prefix in a fresh bucket on the moto server."""
    if request.param == "local":
        return str(tmp_path / "store")
    return f"s3://{request.getfixturevalue('s3_bucket')}/prefix/store"


def _fill(root: str) -> None:
    for rel, data in FILES.items():
        storage.atomic_write_bytes(storage.join(root, rel), data)


# ------------------------------------------------------------------------------------------ both backends


def test_list_files_is_sorted_relative_posix_and_recursive(root: str) -> None:
    _fill(root)
    assert storage.list_files(root) == ["B/upper.png", "a.png", "b/a/deep.png", "b/z.PNG", "notes.txt"]
    assert storage.list_files(root, [".png"]) == ["B/upper.png", "a.png", "b/a/deep.png", "b/z.PNG"]
    assert storage.list_files(root, ("txt",)) == ["notes.txt"]
    assert storage.list_files(storage.join(root, "b")) == ["a/deep.png", "z.PNG"]
    assert storage.list_names(root) == ["B", "a.png", "b", "notes.txt"]
    assert storage.list_names(storage.join(root, "missing")) == []


def test_read_exists_size_remove(root: str) -> None:
    _fill(root)
    url = storage.join(root, "b", "a", "deep.png")
    assert storage.exists(url) and storage.exists(storage.join(root, "b"))
    assert not storage.exists(storage.join(root, "nope.png"))
    assert storage.read_bytes(url) == b"deep" and storage.size(url) == 4
    with storage.open_read(url) as f:
        assert f.read() == b"deep"
    storage.remove(url)
    storage.remove(url)  # missing_ok by default
    assert not storage.exists(url)
    with pytest.raises(StorageNotFoundError, match="no such file"):
        storage.remove(url, missing_ok=False)
    storage.remove_tree(storage.join(root, "b"))
    storage.remove_tree(storage.join(root, "b"))
    assert storage.list_files(root) == ["B/upper.png", "a.png", "notes.txt"]


def test_atomic_write_replaces_whole_file(root: str) -> None:
    url = storage.join(root, "sub", "manifest.json")
    storage.makedirs(root)
    storage.atomic_write_bytes(url, b"first version, longer")
    storage.atomic_write_bytes(url, b"second")
    assert storage.read_bytes(url) == b"second"
    assert storage.list_files(root) == ["sub/manifest.json"]  # no temporaries left behind


def test_atomic_write_file_publishes_a_local_file(root: str, tmp_path) -> None:
    src = tmp_path / "work" / "shard.tar"
    src.parent.mkdir()
    src.write_bytes(b"x" * 1000)
    storage.atomic_write_file(src, storage.join(root, "shard-000000.tar"), keep=True)
    assert src.exists()
    storage.atomic_write_file(src, storage.join(root, "shard-000001.tar"))
    assert not src.exists()  # consumed: it was a temporary
    assert storage.list_files(root) == ["shard-000000.tar", "shard-000001.tar"]
    assert storage.read_bytes(storage.join(root, "shard-000001.tar")) == b"x" * 1000
    with pytest.raises(StorageNotFoundError, match="source file"):
        storage.atomic_write_file(src, storage.join(root, "shard-000002.tar"))


def test_errors_name_the_url(root: str) -> None:
    _fill(root)
    missing = storage.join(root, "missing.png")
    with pytest.raises(StorageNotFoundError, match="no such file") as e:
        storage.read_bytes(missing)
    assert str(e.value).startswith(missing + ":")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)
    with pytest.raises(StorageNotFoundError, match="no such file"):
        storage.list_files(storage.join(root, "missing"))
    with pytest.raises(StorageError, match="is a file, not a folder"):
        storage.list_files(storage.join(root, "a.png"))
    with pytest.raises(StorageError, match="is a folder, not a file"):
        storage.open_read(storage.join(root, "b"))


# ------------------------------------------------------------------------------------------------ URLs


def test_join_and_schemes() -> None:
    assert storage.join("s3://bkt/p/", "a", "b/c.tar") == "s3://bkt/p/a/b/c.tar"
    assert storage.join("s3://bkt", "x") == "s3://bkt/x"
    assert storage.join("/data/shards", "clean", "manifest.json") == "/data/shards/clean/manifest.json"
    assert storage.join("rel", "x/") == "rel/x"
    for bad in ("..", "", "a/../b"):
        with pytest.raises(StorageError, match="bad path part"):
            storage.join("s3://bkt/p", bad)
    assert storage.is_local("data/x") and storage.is_local("file:///tmp/x") and not storage.is_local("s3://b/x")
    assert storage.local_path("file:///tmp/x") == "/tmp/x"
    with pytest.raises(StorageError, match="unsupported URL scheme 'gs'"):
        storage.read_bytes("gs://bkt/x")
    with pytest.raises(StorageError, match="no bucket"):
        storage.filesystem("s3:///x")
    with pytest.raises(StorageError, match="not a local path"):
        storage.local_path("s3://bkt/x")


# ----------------------------------------------------------------------------------------------- local only


def test_local_atomic_write_keeps_old_file_when_interrupted(tmp_path, monkeypatch) -> None:
    url = str(tmp_path / "out" / "manifest.json")
    storage.atomic_write_bytes(url, b"old")
    mode = stat.S_IMODE(os.stat(url).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # not mkstemp's 0600

    def crash(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", crash)
    with pytest.raises(StorageError, match="No space left") as e:
        storage.atomic_write_bytes(url, b"new content")
    assert str(e.value).startswith(url)
    monkeypatch.undo()
    assert open(url, "rb").read() == b"old"
    assert sorted(os.listdir(tmp_path / "out")) == ["manifest.json"]


def test_local_temporaries_are_hidden_and_removable(tmp_path) -> None:
    folder = tmp_path / "shards"
    (folder / ".progress").mkdir(parents=True)
    (folder / "shard-000000.tar").write_bytes(b"t")
    (folder / f"{storage.TMP_PREFIX}abc-shard-000001.tar").write_bytes(b"partial")
    (folder / ".progress" / f"{storage.TMP_PREFIX}def-shard.json").write_bytes(b"{")
    assert storage.list_files(str(folder)) == ["shard-000000.tar"]
    assert storage.list_names(str(folder)) == [".progress", "shard-000000.tar"]
    (folder / "sub").mkdir()
    (folder / "sub" / f"{storage.TMP_PREFIX}a-user-file").write_bytes(b"not a temporary of this folder's writer")
    (folder / ".tmp-notes.txt").write_bytes(b"a user's file with a prefix like the old one")
    removed = storage.remove_temporaries(str(folder), subfolders=[".progress"])
    assert removed == sorted(
        [
            str(folder / ".progress" / f"{storage.TMP_PREFIX}def-shard.json"),
            str(folder / f"{storage.TMP_PREFIX}abc-shard-000001.tar"),
        ]
    )
    left = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert left == [".tmp-notes.txt", "shard-000000.tar", f"sub/{storage.TMP_PREFIX}a-user-file"]


def test_local_filesystem_paths_are_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    fs, path = storage.filesystem("data/x.tar")
    assert path == str(tmp_path / "data" / "x.tar") and fs.protocol[0] == "file"


# -------------------------------------------------------------------------------------------------- S3 only


def test_s3_writes_only_the_final_keys(s3_server, s3_bucket) -> None:  # noqa: F811
    root = f"s3://{s3_bucket}/run"
    _fill(root)
    storage.atomic_write_bytes(storage.join(root, "a.png"), b"again")
    assert s3_server.keys(s3_bucket) == sorted(f"run/{k}" for k in FILES)


def test_s3_listing_sees_writes_from_other_clients(s3_server, s3_bucket) -> None:  # noqa: F811
    root = f"s3://{s3_bucket}/shared"
    storage.atomic_write_bytes(storage.join(root, "one.tar"), b"1")
    assert storage.list_files(root) == ["one.tar"]
    s3_server.client().put_object(Bucket=s3_bucket, Key="shared/two.tar", Body=b"2")  # as another process would
    assert storage.list_files(root) == ["one.tar", "two.tar"]
    assert storage.exists(storage.join(root, "two.tar"))


def test_s3_missing_bucket_is_named(s3_server) -> None:  # noqa: F811
    url = "s3://no-such-bucket-4f1c/prefix/file.tar"
    calls = (storage.read_bytes, storage.makedirs, storage.list_files, lambda u: storage.atomic_write_bytes(u, b"x"))
    for call in calls:
        with pytest.raises(StorageNotFoundError) as e:
            call(url)
        assert str(e.value).startswith(url + ":")
        assert "bucket 'no-such-bucket-4f1c' does not exist" in str(e.value)
        assert s3_server.endpoint_url in str(e.value)
    assert storage.exists(url) is False


def test_s3_credentials_and_endpoint_come_from_the_environment_only(s3_server, s3_bucket, monkeypatch) -> None:  # noqa: F811
    url = f"s3://{s3_bucket}/x/data.bin"
    storage.atomic_write_bytes(url, b"payload")
    fs, path = storage.filesystem(url)
    assert path == f"{s3_bucket}/x/data.bin"
    assert fs.key is None and fs.secret is None and fs.token is None  # botocore's chain reads AWS_* itself
    assert fs.endpoint_url == s3_server.endpoint_url == os.environ["AWS_ENDPOINT_URL"]

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="no S3 credentials found: set AWS_ACCESS_KEY_ID") as e:
        storage.read_bytes(url)  # a new client: the cached one was built from the old environment
    assert str(e.value).startswith(url + ":")

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "another")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "key")
    assert storage.read_bytes(url) == b"payload"  # moto accepts any credentials

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    assert storage.filesystem(url)[0].endpoint_url == s3_server.endpoint_url
    assert storage.read_bytes(url) == b"payload"


_LOST_TASK = """
import asyncio, gc
import aiohttp
from ipt.data import storage

fs = storage._s3fs()

async def request():
    raise {exc}

async def start():
    asyncio.ensure_future(request())  # nobody awaits it, as when a connection dies under a gathered batch
    await asyncio.sleep(0.05)

asyncio.run_coroutine_threadsafe(start(), fs.loop).result()
gc.collect()
"""


@pytest.mark.parametrize(
    ("exc", "reported"),
    [("aiohttp.ClientConnectionResetError('Cannot write to closing transport')", False), ("ValueError('bug')", True)],
)
def test_s3_requests_lost_with_the_connection_are_not_reported_twice(exc: str, reported: bool) -> None:
    """The call that failed already raised one StorageError line; its sibling requests dying with the same
    connection must not add asyncio's 'Task exception was never retrieved' to stderr. Other errors still show."""
    pytest.importorskip("s3fs")
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
    }
    r = subprocess.run(
        [sys.executable, "-c", _LOST_TASK.format(exc=exc)], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert ("Task exception was never retrieved" in r.stderr) == reported, r.stderr
