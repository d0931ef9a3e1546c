"""Faults beside the kill -9 tests: the S3 server killed in the middle of `ipt shard --out s3://...` and of `dvc
push`, the MLflow store failing during `ipt register`, a disk that fills up during a shard write. Each ends in a
one-line error, leaves no partial file under a final name, and a rerun completes with the bytes an undisturbed run
makes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import free_port, with_root_on_path
from ipt.cli import main

BIN = Path(sys.executable).parent


class Moto:
    """moto's S3 server as a process of its own, so a test can kill it (-9) and start a new one on the same port."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.url,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(home / "aws-config-absent"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials-absent"),
            "AWS_MAX_ATTEMPTS": "2",
        }
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = BIN / "moto_server"
        self.proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                self.client().list_buckets()
                return
            time.sleep(0.1)
        raise RuntimeError("moto_server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id="testing", aws_secret_access_key="testing",
            region_name="us-east-1",
        )  # fmt: skip

    def keys(self, bucket: str) -> list[str]:
        with contextlib.suppress(Exception):
            return [o["Key"] for o in self.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
        return []


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[Moto]:
    pytest.importorskip("moto")
    if not (BIN / "moto_server").exists():
        pytest.skip("moto_server (moto[server]) is not installed")
    m = Moto(tmp_path)
    m.start()
    yield m
    m.kill()


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return with_root_on_path(env) | {"IPT_PARAMS": "none", "DVC_NO_ANALYTICS": "1"} | extra


def _kill_when(moto: Moto, proc: subprocess.Popen, bucket: str, at_least: int, timeout: float = 120) -> int:
    """Kill the S3 server once ``at_least`` objects are in ``bucket`` (the operation is under way); the number seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        n = len(moto.keys(bucket))
        if n >= at_least:
            moto.kill()
            return n
        time.sleep(0.02)
    raise AssertionError(f"the operation ended before {at_least} objects were written (rc {proc.poll()})")


def _photos(root: Path, n: int) -> Path:
    """``n`` distinct JPEGs (scikit-image's photos, cycled and flipped) in two class folders."""
    from helpers_images import PHOTOS, SKIMAGE

    for i in range(n):
        img = Image.open(SKIMAGE / PHOTOS[i % len(PHOTOS)]).convert("RGB")
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if (i // len(PHOTOS)) % 2 else img
        cls = root / f"n0000000{i % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        img.rotate(90 * (i // (2 * len(PHOTOS))), expand=True).save(cls / f"img{i:03d}.JPEG", quality=90)
    return root


def _manifest_shards(manifest: dict) -> list[tuple[str, str]]:
    return [(s["name"], s["sha256"]) for s in manifest["shards"]]


@pytest.mark.slow
def test_s3_server_killed_during_ipt_shard_then_a_rerun_gives_identical_bytes(moto: Moto, tmp_path: Path) -> None:
    src = _photos(tmp_path / "src", 18)  # one shard each
    args = ["--source", str(src), "--images-per-shard", "1", "--executor", "serial", "--workers", "1", "--quiet"]
    assert main(["shard", "--out", str(tmp_path / "local"), *args]) == 0
    reference = json.loads((tmp_path / "local" / "manifest.json").read_text())

    moto.client().create_bucket(Bucket="data")
    cmd = [sys.executable, "-m", "ipt.cli", "shard", "--out", "s3://data/clean", *args]
    proc = subprocess.Popen(cmd, env=_env(moto.env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _kill_when(moto, proc, "data", at_least=3)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: s3://data/clean") and "cannot reach the S3" in lines[0], err

    moto.start()  # a new, empty server on the same port (moto keeps objects in memory)
    moto.client().create_bucket(Bucket="data")
    r = subprocess.run(cmd, env=_env(moto.env), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    manifest = json.loads(moto.client().get_object(Bucket="data", Key="clean/manifest.json")["Body"].read())
    assert _manifest_shards(manifest) == _manifest_shards(reference) and manifest["samples"] == reference["samples"]
    keys = moto.keys("data")
    assert not [k for k in keys if ".ipt-tmp-" in k] and not [k for k in keys if "/.progress/" in k]


@pytest.mark.slow
def test_s3_server_killed_during_dvc_push_then_push_and_pull_complete(moto: Moto, tmp_path: Path) -> None:
    pytest.importorskip("dvc")
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(200):
        (repo / "data" / f"f{i:03d}.bin").write_bytes(rng.bytes(32 * 1024))
    env = _env(moto.env)

    def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert not check or r.returncode == 0, f"{cmd}: {r.stdout}\n{r.stderr}"
        return r

    dvc = (sys.executable, "-m", "dvc")
    run("git", "init", "-q")
    run(*dvc, "init", "-q")
    run(*dvc, "remote", "add", "-d", "s3", "s3://dvc/store")
    run(*dvc, "remote", "modify", "s3", "endpointurl", moto.url)
    run(*dvc, "add", "-q", "data")
    before = {p.name: p.read_bytes() for p in (repo / "data").iterdir()}
    moto.client().create_bucket(Bucket="dvc")
    proc = subprocess.Popen(
        [*dvc, "push"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _kill_when(moto, proc, "dvc", at_least=10)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "ERROR" in out + err and "Traceback" not in out + err  # DVC's own one-line failure report

    moto.start()
    moto.client().create_bucket(Bucket="dvc")
    run(*dvc, "push")
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    run(*dvc, "pull")
    assert {p.name: p.read_bytes() for p in (repo / "data").iterdir()} == before


@pytest.mark.slow
def test_the_mlflow_store_failing_during_register_leaves_nothing_registered(tmp_path: Path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    import torch
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ipt.checkpoint import save_checkpoint
    from ipt.config import ModelSpec
    from ipt.model import build_ipt

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    torch.manual_seed(0)
    model = build_ipt(ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=2, patch_size=12))
    ckpt = save_checkpoint(tmp_path / "m.pt", model, meta={"task": "sr_x2"})
    argv = ["register", "--task", "sr_x2", "--checkpoint", str(ckpt), "--tracking-uri", uri]
    down = ConnectionError("Max retries exceeded with url: /api/2.0/mlflow/model-versions/create (Connection refused)")
    for method in ("create_model_version", "set_registered_model_alias"):  # before and after the version exists
        with monkeypatch.context() as m:

            def fail(self, *a, _down=down, **k):
                raise MlflowException(f"API request failed: {_down}") from _down

            m.setattr(MlflowClient, method, fail)
            assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "cannot reach the MLflow tracking server" in err, err
        client = MlflowClient(uri)
        assert client.search_model_versions("name = 'ipt-sr_x2'") == [], method
        assert [r.name for r in client.search_registered_models()] == [], method
        runs = client.search_runs([client.get_experiment_by_name("ipt-register").experiment_id])
        assert {r.info.status for r in runs} == {"FAILED"}
    assert main(argv) == 0  # the store is back: the same command registers version 1, champion
    assert str(MlflowClient(uri).get_model_version_by_alias("ipt-sr_x2", "champion").version) == "1"


@contextlib.contextmanager
def _small_disk(path: Path, size: str) -> Iterator[bool]:
    """A tmpfs of ``size`` mounted at ``path`` when this process may mount one (root on Linux), else nothing."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        mounted = (
            not os.environ.get("IPT_TEST_NO_MOUNT")
            and subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
            ).returncode
            == 0
        )
    except OSError:  # no mount command
        mounted = False
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=False)


def test_a_disk_filling_up_during_a_shard_write_leaves_no_partial_file(tmp_path: Path, monkeypatch, capsys) -> None:
    """A real 1 MB tmpfs where the test may mount one, else ENOSPC raised by the atomic writer's fsync: a one-line
    error naming the file, every shard under its final name whole, no temporaries; with room, a rerun finishes
    with the bytes of an undisturbed run."""
    src = _photos(tmp_path / "src", 8)
    args = ["--source", str(src), "--images-per-shard", "1", "--executor", "serial", "--workers", "1", "--quiet"]
    assert main(["shard", "--out", str(tmp_path / "reference"), *args]) == 0
    reference = json.loads((tmp_path / "reference" / "manifest.json").read_text())
    disk = tmp_path / "disk"
    with _small_disk(disk, "1m") as real:
        if not real:
            import ipt.fileio

            calls = {"n": 0}
            real_fsync = os.fsync

            def fsync(fd: int) -> None:
                calls["n"] += 1
                if calls["n"] > 4:
                    raise OSError(28, "No space left on device")
                real_fsync(fd)

            monkeypatch.setattr(ipt.fileio.os, "fsync", fsync)
        out = disk / "clean"
        assert main(["shard", "--out", str(out), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(out) in err and "No space left" in err, err
        assert not list(out.rglob(".ipt-tmp-*")) and not (out / "manifest.json").exists()
        for shard in out.glob("shard-*.tar"):  # whatever is under a final name is whole: the undisturbed run's bytes
            assert shard.read_bytes() == (tmp_path / "reference" / shard.name).read_bytes()
        if real:
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        else:
            monkeypatch.undo()
        assert main(["shard", "--out", str(out), *args]) == 0  # room again: it finishes what was left
        manifest = json.loads((out / "manifest.json").read_text())
        assert _manifest_shards(manifest) == _manifest_shards(reference)
