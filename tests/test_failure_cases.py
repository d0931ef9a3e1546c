"""The failure cases a careful user hits: nothing lost, nothing stale, one-line errors naming the file or URL.

Each test is one item of the reliability issue (it failed on the code before the fix); the fault suite with real
killed servers and a full disk is tests/test_faults.py.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import free_port
from helpers_images import PHOTOS, photo_folder
from helpers_pairs import make_pair_root
from ipt.checkpoint import save_checkpoint
from ipt.cli import main
from ipt.config import ModelSpec
from ipt.model import build_ipt


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ 1. foreign files


def test_shard_refuses_a_folder_holding_files_it_did_not_write_and_changes_nothing(tmp_path: Path, capsys) -> None:
    src = photo_folder(tmp_path / "src", PHOTOS[:2])
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "photo.jpg").write_bytes(b"a user's photo")
    (out / "manifest.json").write_text('{"my": "own manifest"}')
    (out / "shard-000099.tar").write_bytes(b"not ours")
    (out / "sub" / ".tmp-notes.txt").write_text("notes")
    before = _tree(out)
    assert main(["shard", "--source", str(src), "--out", str(out), "--quiet", "--workers", "1"]) == 2
    _one_line_error(capsys, str(out), "photo.jpg", "manifest.json", "shard-000099.tar", "sub", "did not write")
    assert _tree(out) == before and sorted(p.name for p in out.iterdir()) == sorted(
        ["photo.jpg", "manifest.json", "shard-000099.tar", "sub"]
    )


def test_shard_and_corrupt_rerun_into_their_own_folders_and_clean_only_their_own(tmp_path: Path, capsys) -> None:
    src = photo_folder(tmp_path / "src", PHOTOS[:2])
    out = tmp_path / "clean"
    argv = ["shard", "--source", str(src), "--out", str(out), "--quiet", "--workers", "1", "--images-per-shard", "1"]
    assert main(argv) == 0
    first = _tree(out)
    (out / ".ipt-tmp-0000-shard-000000.tar").write_bytes(b"a killed writer's temporary")  # ours: removed
    assert main([*argv, "--crops", "1"]) == 0  # another plan into the same folder: rewritten, nothing foreign
    assert not list(out.glob(".ipt-tmp-*")) and _tree(out) != first
    assert main([*argv, "--crops", "1"]) == 0  # the same plan again: reused as it is
    capsys.readouterr()
    (out / "notes.txt").write_text("mine")
    assert main([*argv, "--crops", "2"]) == 2
    _one_line_error(capsys, "notes.txt")
    pairs = tmp_path / "pairs" / "sr_x2"
    pairs.mkdir(parents=True)
    (pairs / "readme.md").write_text("mine")
    (tmp_path / "p.yaml").write_text(
        json.dumps({"corrupt": {"tasks": {"sr_x2": {"name": "bicubic_down", "scale": 2}}}})
    )
    c = ["corrupt", "--task", "sr_x2", "--clean", str(out), "--out", str(pairs), "--params", str(tmp_path / "p.yaml")]
    (out / "notes.txt").unlink()
    assert main([*c, "--quiet", "--workers", "1"]) == 2
    _one_line_error(capsys, "readme.md")
    assert (pairs / "readme.md").read_text() == "mine" and len(list(pairs.iterdir())) == 1


# ------------------------------------------------------------------------------------------------ 2. sample keys


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _jpeg(seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (200, 210, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_keys_of_an_ilsvrc_tarball_are_unique_and_every_sample_reads_back(tmp_path: Path, capsys) -> None:
    import webdataset as wds

    outer = {
        "n01.tar": _tar({"a/x.JPEG": _jpeg(0), "b/x.JPEG": _jpeg(1)}),
        "sub/n01.tar": _tar({"x.JPEG": _jpeg(2)}),
    }
    (tmp_path / "train.tar").write_bytes(_tar(outer))
    out = tmp_path / "clean"
    assert main(["shard", "--source", str(tmp_path / "train.tar"), "--out", str(out), "--quiet", "--workers", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"] == 6  # 3 images x 2 crops
    read = [
        s["__key__"] for name in manifest["shards"] for s in wds.WebDataset(str(out / name["name"]), shardshuffle=False)
    ]
    assert len(read) == len(set(read)) == manifest["samples"]
    sources = {
        json.loads(s["json"])["source"]
        for n in manifest["shards"]
        for s in wds.WebDataset(str(out / n["name"]), shardshuffle=False)
    }
    assert sources == {"n01/a/x.JPEG", "n01/b/x.JPEG", "sub/n01/x.JPEG"}

    clash = {"n01.tar": _tar({"x.JPEG": _jpeg(0)}), "n01/x.JPEG": _jpeg(1)}  # both would be n01/x.JPEG
    (tmp_path / "clash.tar").write_bytes(_tar(clash))
    assert main(["shard", "--source", str(tmp_path / "clash.tar"), "--out", str(tmp_path / "c"), "--quiet"]) == 2
    _one_line_error(capsys, "n01.tar:x.JPEG", "n01/x.JPEG", "would both be sample")


# ------------------------------------------------------------------------------------------------ 3. models:/ cache


def _tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_ipt(ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=2, patch_size=12))


@pytest.mark.slow
def test_a_recreated_store_never_gets_the_old_stores_cached_weights(tmp_path: Path) -> None:
    """Store A: register v1 of ipt-sr_x2, restore it through models:/ (the cache fills). Delete the store, make a
    new one at the same URI with other weights as its v1: the same models:/ URI restores the new weights. Each
    round runs in fresh processes, as a user's commands do (MLflow keeps a store's engine per process)."""
    pytest.importorskip("mlflow")
    import os
    import shutil
    import subprocess
    import sys

    from conftest import with_root_on_path

    store, cache = tmp_path / "store", tmp_path / "cache"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    env = with_root_on_path(dict(os.environ)) | {"IPT_MODEL_CACHE": str(cache), "IPT_PARAMS": "none"}
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "x.png")

    def ipt(*args: str) -> None:
        r = subprocess.run([sys.executable, "-m", "ipt.cli", *args], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr

    outs = []
    for seed in (1, 2):
        store.mkdir()
        ckpt = save_checkpoint(tmp_path / f"m{seed}.pt", _tiny(seed), meta={"task": "sr_x2"})
        ipt("register", "--task", "sr_x2", "--checkpoint", str(ckpt), "--tracking-uri", uri)
        x, out, direct = tmp_path / "x.png", tmp_path / f"y{seed}.png", tmp_path / f"d{seed}.png"
        ipt("restore", str(x), str(out), "--weights", "models:/ipt-sr_x2@champion", "--tracking-uri", uri, "--quiet")
        assert main(["restore", str(x), str(direct), "--weights", str(ckpt), "--quiet"]) == 0
        assert out.read_bytes() == direct.read_bytes()  # this store's version 1, not a cached copy of another's
        outs.append(out.read_bytes())
        shutil.rmtree(store)
    assert outs[0] != outs[1] and len(list(cache.rglob("model.pt"))) == 1  # the stale copy was replaced


# ------------------------------------------------------------------------------------------------ 4. one-line errors


@pytest.mark.parametrize(
    "obj, needle",
    [
        ({}, "an empty state dict"),
        ({"format_version": 1, "kind": "ipt", "model_spec": {}, "state_dict": [1, 2]}, "state_dict is not a mapping"),
        ({"format_version": 1, "kind": "ipt", "model_spec": "tiny", "state_dict": {}}, "model_spec is a str"),
    ],
)
def test_bad_weights_files_are_one_line_errors_naming_the_file(tmp_path: Path, capsys, obj, needle: str) -> None:
    w = tmp_path / "w.pt"
    torch.save(obj, w)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "x.png")
    assert (
        main(["restore", str(tmp_path / "x.png"), str(tmp_path / "y.png"), "--weights", str(w), "--task", "sr_x2"]) == 2
    )
    _one_line_error(capsys, str(w), needle)


def test_a_state_dict_missing_the_query_embedding_names_file_and_key(tmp_path: Path, capsys) -> None:
    sd = _tiny(0).state_dict()
    sd = {k: v for k, v in sd.items() if k not in ("body.query_embed.weight", "body.position_encoding.pe.weight")}
    torch.save(sd, tmp_path / "w.pt")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "x.png")
    argv = ["restore", str(tmp_path / "x.png"), str(tmp_path / "y.png"), "--weights", str(tmp_path / "w.pt")]
    assert main([*argv, "--task", "sr_x2"]) == 2
    _one_line_error(capsys, str(tmp_path / "w.pt"))


def test_an_unreachable_or_credential_less_s3_source_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    pytest.importorskip("s3fs")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    argv = ["shard", "--source", "s3://bucket/train", "--out", str(tmp_path / "c"), "--quiet"]
    assert main(argv) == 2
    _one_line_error(capsys, "s3://bucket/train", "cannot reach")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert main(argv) == 2
    _one_line_error(capsys, "s3://bucket/train", "no S3 credentials")


def test_main_reports_the_projects_errors_and_lets_a_bug_show_itself(monkeypatch, tmp_path: Path) -> None:
    import ipt.cli.restore

    def bug(args):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(ipt.cli.restore, "cmd_restore", bug)
    monkeypatch.setitem(ipt.cli.restore.PARSERS, "restore", lambda sub: _with_func(sub, bug))
    with pytest.raises(KeyError, match="a bug"):
        main(["restore", "a.png", "b.png", "--weights", "w.pt"])


def _with_func(sub, func):
    p = sub.add_parser("restore")
    for a in ("input", "output"):
        p.add_argument(a)
    p.add_argument("--weights")
    p.set_defaults(func=func)
    return p


# ------------------------------------------------------------------------------------------------ 5. silent nonsense


def test_nan_weights_are_an_error_naming_them_and_write_nothing(tmp_path: Path, capsys) -> None:
    model = _tiny(0)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    ckpt = save_checkpoint(tmp_path / "nan.pt", model)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "x.png")
    assert main(["restore", str(tmp_path / "x.png"), str(tmp_path / "y.png"), "--weights", str(ckpt)]) == 2
    _one_line_error(capsys, str(ckpt), "NaN or infinite")
    assert not (tmp_path / "y.png").exists()


def test_remote_shards_and_keeping_no_checkpoint_are_refused_for_training(tmp_path: Path, capsys) -> None:
    common = ["--out", str(tmp_path / "run"), "--tasks", "sr_x2", "--model-size", "tiny", "--steps", "1"]
    assert main(["pretrain", "--shards", "s3://bucket/pairs", *common]) == 2
    _one_line_error(capsys, "s3://bucket/pairs", "local folder")
    pairs = make_pair_root(tmp_path / "pairs", tasks=("sr_x2",), samples=2, shards=1)
    assert main(["pretrain", "--shards", str(pairs), "--keep-checkpoints", "0", *common]) == 2
    _one_line_error(capsys, "keep_checkpoints must be >= 1")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------ 6. late failure


def test_a_truncated_shard_stops_training_before_the_first_step(tmp_path: Path, capsys) -> None:
    pairs = make_pair_root(tmp_path / "pairs", tasks=("sr_x2",), samples=8, shards=2)
    bad = pairs / "sr_x2" / "shard-000001.tar"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    argv = ["pretrain", "--shards", str(pairs), "--out", str(tmp_path / "run"), "--tasks", "sr_x2"]
    assert main([*argv, "--model-size", "tiny", "--steps", "50", "--batch-size", "2", "--precision", "fp32"]) == 2
    _one_line_error(capsys, str(bad))
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not list((tmp_path / "run").glob("checkpoints/*"))
    # a manifest that records shard sizes (what the corrupt stage writes) is checked by size, without reading
    manifest = json.loads((pairs / "sr_x2" / "manifest.json").read_text())
    for s in manifest["shards"]:
        s["size"] = 123
    (pairs / "sr_x2" / "manifest.json").write_text(json.dumps(manifest))
    assert main([*argv, "--model-size", "tiny", "--steps", "1"]) == 2
    _one_line_error(capsys, "shard-000000.tar", "lists 123")


# ------------------------------------------------------------------------------------------------ 7. advice, leaks


def test_a_pickle_file_is_refused_without_advice_to_unpickle_it(tmp_path: Path, capsys) -> None:
    w = tmp_path / "pickled.pt"
    torch.save({"state_dict": _tiny(0).state_dict(), "extra": argparse.Namespace(a=1)}, w)  # a pickled object
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "x.png")
    assert main(["restore", str(tmp_path / "x.png"), str(tmp_path / "y.png"), "--weights", str(w)]) == 2
    err = _one_line_error(capsys, str(w), "refused")
    assert "weights_only=False" not in err and "weights_only" not in err.replace("tensors only", "")


@pytest.mark.slow
def test_an_unreachable_tracking_server_says_so_and_masks_its_password(tmp_path: Path, capsys) -> None:
    pytest.importorskip("mlflow")
    uri = f"http://admin:s3cret@127.0.0.1:{free_port()}"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "x.png")
    argv = ["restore", str(tmp_path / "x.png"), str(tmp_path / "y.png"), "--weights", "models:/ipt-sr_x2@champion"]
    assert main([*argv, "--tracking-uri", uri]) == 2
    err = _one_line_error(capsys, "cannot reach the MLflow tracking server", "admin:***@")
    assert "s3cret" not in err
    ckpt = save_checkpoint(tmp_path / "m.pt", _tiny(0), meta={"task": "sr_x2"})
    assert main(["register", "--task", "sr_x2", "--checkpoint", str(ckpt), "--tracking-uri", uri]) == 2
    err = _one_line_error(capsys, "cannot reach the MLflow tracking server")
    assert "s3cret" not in err


def test_mask_uri_hides_every_password() -> None:
    from ipt.tracking import mask_uri

    assert mask_uri("https://u:p%40ss@host:5000/x") == "https://u:***@host:5000/x"
    assert mask_uri("postgresql://me:secret@db/mlflow") == "postgresql://me:***@db/mlflow"
    assert mask_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert mask_uri("http://host:5000") == "http://host:5000"


# ------------------------------------------------------------------------------------------------ 8. runs end


@pytest.mark.slow
def test_register_and_refine_register_never_leave_their_run_running(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ckpt = save_checkpoint(tmp_path / "m.pt", _tiny(0), meta={"task": "sr_x2"})
    report = tmp_path / "r.json"
    report.write_text(
        json.dumps({"task": "denoise_s30", "model": str(ckpt), "datasets": {"Set5": {"psnr_y": 30.0, "images": 5}}})
    )
    argv = ["register", "--task", "sr_x2", "--checkpoint", str(ckpt), "--report", str(report), "--tracking-uri", uri]
    assert main(argv) == 2  # the report scores another task: refused after the run was opened
    refiner = tmp_path / "not-a-refiner.pt"
    refiner.write_bytes(ckpt.read_bytes())
    assert main(["refine-register", "--checkpoint", str(refiner), "--tracking-uri", uri]) == 2
    client = MlflowClient(uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert runs and {r.info.status for r in runs} == {"FAILED"}, [(r.info.run_name, r.info.status) for r in runs]
