"""DVC remotes end to end in a temporary git + DVC repository: a local folder remote and an S3 remote on moto.

Each test tracks a small folder with ``dvc add``, pushes it, deletes the data and the cache, pulls it back and
compares bytes. The S3 test also lists the bucket on the server and checks that no credential reached
``.dvc/config`` (they come from the AWS_* environment variables that ``s3_server`` exports).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest

from helpers_s3 import s3_bucket, s3_server  # noqa: F401

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
DVC = [sys.executable, "-m", "dvc"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_") and k != "IPT_PARAMS"}
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def _run(cmd: list[str], cwd: Path) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env())
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def _png(width: int, height: int, seed: int) -> bytes:
    """A tiny valid RGB PNG, built by hand so the bytes are fixed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    rows = b"".join(b"\0" + bytes((seed + x * 7 + y * 13) % 256 for x in range(width * 3)) for y in range(height))
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git + DVC repository holding ``data/`` (two PNGs and a shard tar), tracked with ``dvc add``."""
    pytest.importorskip("dvc")
    repo = tmp_path / "repo"
    data = repo / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "a.png").write_bytes(_png(4, 3, seed=1))
    (data / "images" / "b.png").write_bytes(_png(3, 5, seed=2))
    (data / "shard-000000.tar").write_bytes(_tar({"k0.png": _png(2, 2, seed=3), "k0.json": b'{"source": "a"}'}))
    _run(["git", "init", "-q"], repo)
    _run(DVC + ["init", "-q"], repo)
    _run(DVC + ["add", "data"], repo)
    assert (repo / "data.dvc").is_file() and "/data" in (repo / ".gitignore").read_text()
    return repo


def _push_wipe_pull(repo: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    before = _snapshot(repo / "data")
    out = _run(DVC + ["push"], repo)
    assert f"{len(before) + 1} files pushed" in out  # the files + the folder's .dir listing
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    _run(DVC + ["pull"], repo)
    return before, _snapshot(repo / "data")


@pytest.mark.slow
def test_local_folder_remote_push_wipe_pull(repo: Path, tmp_path: Path) -> None:
    remote = tmp_path / "dvc-remote"
    _run(DVC + ["remote", "add", "-d", "localremote", str(remote)], repo)
    before, after = _push_wipe_pull(repo)
    assert after == before and len(before) == 3
    stored = [p for p in remote.rglob("*") if p.is_file()]
    assert len(stored) == 4 and all(p.relative_to(remote).parts[:2] == ("files", "md5") for p in stored)


@pytest.mark.slow
def test_s3_remote_on_moto_push_wipe_pull(repo: Path, s3_server, s3_bucket) -> None:  # noqa: F811
    _run(DVC + ["remote", "add", "-d", "s3remote", f"s3://{s3_bucket}/dvcstore"], repo)
    _run(DVC + ["remote", "modify", "s3remote", "endpointurl", s3_server.endpoint_url], repo)
    config = (repo / ".dvc" / "config").read_text()
    assert f"url = s3://{s3_bucket}/dvcstore" in config and f"endpointurl = {s3_server.endpoint_url}" in config
    for secret_key in ("access_key_id", "secret_access_key", "session_token", "credentialpath", "profile"):
        assert secret_key not in config
    assert s3_server.env["AWS_SECRET_ACCESS_KEY"] not in config.replace(s3_bucket, "")
    assert not (repo / ".dvc" / "config.local").exists()

    before, after = _push_wipe_pull(repo)
    assert after == before and len(before) == 3
    keys = s3_server.keys(s3_bucket)
    assert len(keys) == 4 and all(k.startswith("dvcstore/files/md5/") for k in keys), keys
    assert sum(k.endswith(".dir") for k in keys) == 1
