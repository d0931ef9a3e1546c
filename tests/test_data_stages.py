"""`ipt shard` and `ipt corrupt` on real photos: formats, bad files, byte identity, resume after kill -9, locking."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

import corruptions
from helpers_images import PHOTOS, SKIMAGE, bad_files, folder_bytes, imagenet_tarball, photo_folder
from ipt.cli import main
from ipt.data import pairs, shards
from ipt.data.encoding import png_encode, sample_key, tar_bytes
from ipt.tasks import TaskError, check_task_name, task_entry

ROOT = Path(__file__).resolve().parents[1]


def _shard(src: Path | str, out: Path, *extra: str) -> int:
    argv = ["shard", "--source", str(src), "--out", str(out), "--quiet", "--executor", "serial", *extra]
    return main(argv + ["--max-scale", "2", "--crops", "2", "--images-per-shard", "2"])


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


# ------------------------------------------------------------------------------------------------ encoding


def test_keys_are_stable_dotless_and_collision_free() -> None:
    assert sample_key("n01440764/n01440764_10026.JPEG", 3) == sample_key("n01440764/n01440764_10026.JPEG", 3)
    a, b = sample_key("x/a.png", 0), sample_key("x/a.jpg", 0)
    assert a != b and "." not in a and a.startswith("x_a-") and a.endswith("-c00")
    deep = "/".join(["a_very_long_folder_name"] * 10) + "/img.jpg"
    k1, k2 = sample_key(deep, 0), sample_key(deep.replace("very", "VERY", 1), 0)
    assert k1 != k2 and k1.endswith("img-" + k1.split("-")[-2] + "-c00") and len(k1 + ".meta.json") <= 100


def test_png_encoder_round_trips_and_is_a_function_of_the_pixels() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for level in (0, 1, 6):
        data = png_encode(arr, level)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), arr)
        assert data == png_encode(arr.copy(), level)
    gray = arr[..., 0]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png_encode(gray)))), gray)


def test_tar_is_sorted_with_fixed_metadata() -> None:
    data = tar_bytes([("b", {"png": b"2", "json": b"{}"}), ("a", {"png": b"1"})])
    assert data == tar_bytes([("a", {"png": b"1"}), ("b", {"json": b"{}", "png": b"2"})])
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        members = t.getmembers()
    assert [m.name for m in members] == ["a.png", "b.json", "b.png"]
    assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" and m.mode == 0o644 for m in members)
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        assert t.extractfile("b.png").read() == b"2"


# ------------------------------------------------------------------------------------------------ shard stage


def test_shard_folder_of_photos_format_and_webdataset_readable(tmp_path: Path) -> None:
    src = photo_folder(tmp_path / "train")
    out = tmp_path / "clean"
    assert _shard(src, out) == 0
    m = _manifest(out)
    assert m["format"] == "ipt-clean-v1" and m["samples"] == 2 * len(PHOTOS) and m["skipped"] == []
    assert [s["name"] for s in m["shards"]] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    for s in m["shards"]:
        assert shards.hashlib.sha256((out / s["name"]).read_bytes()).hexdigest() == s["sha256"]
    assert sorted(p.name for p in out.iterdir()) == sorted([s["name"] for s in m["shards"]] + ["manifest.json"])
    urls = [str(out / s["name"]) for s in m["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8"))
    assert len(samples) == m["samples"]
    first = samples[0]
    assert first["png"].shape == (96, 96, 3) and first["png"].dtype == np.uint8
    meta = first["json"]
    assert first["__key__"] == sample_key(meta["source"], meta["crop"])
    top, left, size = meta["box"]
    src_img = np.asarray(Image.open(src / meta["source"]).convert("RGB"))
    assert np.array_equal(first["png"], src_img[top : top + size, left : left + size])


def test_bad_and_unusual_files_are_converted_or_listed(tmp_path: Path) -> None:
    expect = bad_files(tmp_path / "src")
    out = tmp_path / "clean"
    assert _shard(tmp_path / "src", out) == 0
    m = _manifest(out)
    skipped = {s["path"]: s["reason"] for s in m["skipped"]}
    for path, outcome in expect.items():
        if outcome == "ok":
            assert path not in skipped
        else:
            assert outcome in skipped[path], (path, skipped.get(path))
    assert _shard(tmp_path / "src", tmp_path / "again") == 0  # skip reasons are reproducible bytes too
    assert folder_bytes(tmp_path / "again") == folder_bytes(out)
    ok = [p for p, o in expect.items() if o == "ok"]
    assert m["samples"] == 2 * len(ok) and "readme.txt" not in skipped
    samples = list(wds.WebDataset([str(out / s["name"]) for s in m["shards"]], shardshuffle=False).decode("rgb8"))
    sources = {s["json"]["source"] for s in samples}
    assert sources == set(ok) and all(s["png"].shape == (96, 96, 3) for s in samples)
    gray = next(s["png"] for s in samples if s["json"]["source"] == "gray.png")
    assert np.array_equal(gray[..., 0], gray[..., 2])  # replicated, not tinted
    sixteen = next(s for s in samples if s["json"]["source"] == "sixteen.png")
    top, left, n = sixteen["json"]["box"]
    red = np.asarray(Image.open(SKIMAGE / "chelsea.png").convert("RGB"))[:256, :256, 0]
    assert np.array_equal(sixteen["png"][..., 1], red[top : top + n, left : left + n])  # x257 scaled back exactly


def test_bad_cli_input_is_one_clear_line(tmp_path: Path, capsys) -> None:
    assert _shard(tmp_path / "nope", tmp_path / "o") == 2
    assert "nope: no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _shard(tmp_path / "empty", tmp_path / "o") == 2
    assert "no images found" in capsys.readouterr().err
    assert not (tmp_path / "o" / "manifest.json").exists()


@pytest.mark.slow
def test_same_input_same_bytes_folder_tarball_and_executors(tmp_path: Path) -> None:
    src = photo_folder(tmp_path / "train")
    assert _shard(src, tmp_path / "a") == 0
    assert _shard(src, tmp_path / "b", "--executor", "process", "--workers", "2") == 0
    tarball = imagenet_tarball(src, tmp_path / "ILSVRC2012_img_train.tar")
    assert _shard(tarball, tmp_path / "c") == 0
    a = folder_bytes(tmp_path / "a")
    assert a == folder_bytes(tmp_path / "b")
    c = folder_bytes(tmp_path / "c")
    assert {k: v for k, v in a.items() if k != "manifest.json"} == {k: v for k, v in c.items() if k != "manifest.json"}
    assert _manifest(tmp_path / "a")["plan"] == _manifest(tmp_path / "c")["plan"]


def test_rerun_is_a_no_op_and_a_changed_plan_rewrites(tmp_path: Path) -> None:
    src = photo_folder(tmp_path / "train")
    out = tmp_path / "clean"
    assert _shard(src, out) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert _shard(src, out) == 0
    assert before == {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert (
        main(
            ["shard", "--source", str(src), "--out", str(out), "--quiet", "--executor", "serial"]
            + ["--max-scale", "2", "--crops", "1", "--images-per-shard", "4"]
        )
        == 0
    )
    m = _manifest(out)
    assert m["samples"] == len(PHOTOS) and len(m["shards"]) == 2
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]


def test_second_run_into_the_same_folder_is_refused(tmp_path: Path, capsys) -> None:
    src = photo_folder(tmp_path / "train", PHOTOS[:2])
    lock = tmp_path / ".clean.lock"
    with shards.FolderLock(str(tmp_path / "clean")):
        assert _shard(src, tmp_path / "clean") == 2
        assert lock.read_text().startswith(f"pid {os.getpid()} on ")  # who holds it, while held
    assert "another run is writing here" in capsys.readouterr().err
    assert lock.read_bytes() == b""  # released: the same bytes on every machine (data/pairs' hash in dvc.lock)
    assert _shard(src, tmp_path / "clean") == 0  # released
    assert lock.read_bytes() == b""


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ipt.cli", *args]


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [1, 4])
def test_kill_9_then_rerun_gives_the_uninterrupted_bytes(tmp_path: Path, kill_after: int) -> None:
    src = photo_folder(tmp_path / "train", PHOTOS + ["brick.png", "grass.png", "gravel.png", "ihc.png"], as_jpeg=False)
    args = ["--source", str(src), "--max-scale", "4", "--crops", "3", "--images-per-shard", "1", "--quiet"]
    args += ["--executor", "serial", "--params", "none"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    subprocess.run(_cli("shard", "--out", str(ref), *args), check=True, cwd=ROOT)
    proc = subprocess.Popen(_cli("shard", "--out", str(out), *args), cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((out / ".progress").glob("*.json"))) >= kill_after:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed; use more shards"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    subprocess.run(_cli("shard", "--out", str(out), *args), check=True, cwd=ROOT)
    assert folder_bytes(out) == folder_bytes(ref)


# ------------------------------------------------------------------------------------------------ corrupt stage


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    src = photo_folder(tmp_path / "train", PHOTOS[:4])
    out = tmp_path / "clean"
    assert _shard(src, out) == 0
    return out


def _params(tmp_path: Path, tasks: dict) -> Path:
    import yaml

    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"seed": 7, "patch_size": 24, "corrupt": {"tasks": tasks}}))
    return p


def _corrupt(tmp_path: Path, clean: Path, task: str, params: Path, out: str | None = None) -> int:
    out = out or str(tmp_path / "pairs" / "{task}")
    return main(
        ["corrupt", "--task", task, "--clean", str(clean), "--out", out, "--params", str(params), "--quiet"]
        + ["--executor", "serial"]
    )


def test_an_in_process_run_leaves_the_callers_torch_thread_count(tmp_path: Path, clean: Path) -> None:
    """The serial executor runs jobs in the caller's thread; their one-thread setting must not outlive them (it
    once left a whole pytest worker on one thread, so a resumed run no longer matched a two-thread child's)."""
    from ipt.device import torch_threads

    params = _params(tmp_path, {"sr_x2": {"name": "bicubic_down", "scale": 2}})
    with torch_threads(3):
        assert _corrupt(tmp_path, clean, "sr_x2", params) == 0
        assert torch.get_num_threads() == 3


def test_pairs_for_sr_and_noise_are_exact_and_deterministic(tmp_path: Path, clean: Path) -> None:
    tasks = {"sr_x2": {"name": "bicubic_down", "scale": 2}, "denoise_s30": {"name": "gaussian_noise", "sigma": 30}}
    params = _params(tmp_path, tasks)
    for t in tasks:
        assert _corrupt(tmp_path, clean, t, params) == 0
    clean_m = _manifest(clean)
    for t, scale in (("sr_x2", 2), ("denoise_s30", 1)):
        folder = tmp_path / "pairs" / t
        m = _manifest(folder)
        assert m["format"] == "ipt-pairs-v1" and m["samples"] == clean_m["samples"]
        assert [s["name"] for s in m["shards"]] == [s["name"] for s in clean_m["shards"]]
        samples = list(
            wds.WebDataset([str(folder / s["name"]) for s in m["shards"]], shardshuffle=False).decode("rgb8")
        )
        for s in samples:
            assert s["hr.png"].shape == (24 * scale, 24 * scale, 3) and s["lq.png"].shape == (24, 24, 3)
            meta = s["meta.json"]
            assert meta["task"] == t and meta["seed"] == corruptions.seed_from(7, t, s["__key__"])
        s = samples[0]
        x = torch.from_numpy(s["hr.png"].copy()).permute(2, 0, 1)[None].float() / 255
        gen = torch.Generator().manual_seed(s["meta.json"]["seed"])
        spec = dict(tasks[t])
        lq = corruptions.apply(spec.pop("name"), x, generator=gen, **spec)
        expected = torch.floor(lq * 255 + 0.5).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
        assert np.array_equal(s["lq.png"], expected)
    again = tmp_path / "again"
    assert _corrupt(tmp_path, clean, "denoise_s30", params, out=str(again / "{task}")) == 0
    assert folder_bytes(again / "denoise_s30") == folder_bytes(tmp_path / "pairs" / "denoise_s30")


def test_corrupt_errors_name_the_problem(tmp_path: Path, clean: Path, capsys) -> None:
    params = _params(tmp_path, {"sr_x8": {"name": "bicubic_down", "scale": 8}, "bad": {"name": "nope"}})
    assert _corrupt(tmp_path, clean, "sr_x8", params) == 2
    err = capsys.readouterr().err  # clean crops are 96 (48 x max scale 2); x8 of 24-px patches needs 192
    assert "needs 192x192 HR patches" in err and "shard.max_scale to 8" in err
    assert _corrupt(tmp_path, clean, "bad", params) == 2
    assert "unknown corruption 'nope'" in capsys.readouterr().err
    assert _corrupt(tmp_path, clean, "sr_x9", params) == 2
    assert "'sr_x9' is not in" in capsys.readouterr().err
    assert _corrupt(tmp_path, tmp_path / "missing", "sr_x8", params) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_plan_digest_depends_on_the_task_params_only(tmp_path: Path, clean: Path) -> None:
    def digest(**params) -> str:
        cfg = pairs.CorruptConfig("denoise", "gaussian_noise", params, clean=str(clean), out=str(tmp_path / "x"))
        return pairs.plan_corrupt(cfg).digest

    assert digest(sigma=30) == digest(sigma=30) != digest(sigma=50)


# ------------------------------------------------------------------------------------------------ bad input


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "gaussian_noise", "sigma": float("nan")}, "sigma must be a finite number, got nan"),
        ({"name": "gaussian_noise", "sigma": "thirty"}, "sigma must be a finite number >= 0"),
        ({"name": "rain_streaks", "length": 20}, "length must be a range [lo, hi]"),
        ({"name": "bicubic_down", "scale": 0}, "scale must be a positive integer"),
        ({"name": "jpeg", "quality": 10, "qualty": 9}, "unknown ['qualty']"),
    ],
    ids=["nan", "string", "scalar-range", "scale-0", "typo"],
)
def test_bad_task_params_are_one_line_before_anything_is_written(
    tmp_path: Path, clean: Path, capsys, spec: dict, message: str
) -> None:
    params = _params(tmp_path, {"t1": spec})
    assert _corrupt(tmp_path, clean, "t1", params) == 2
    err = _one_error_line(capsys)
    assert "corrupt.tasks.t1: " in err and message in err, err
    assert not (tmp_path / "pairs").exists()  # refused before the lock or any shard
    cfg = pairs.CorruptConfig("t1", spec["name"], {k: v for k, v in spec.items() if k != "name"}, clean=str(clean))
    with pytest.raises(TaskError, match=f"^{params}: corrupt.tasks.t1: "):  # the CLI passes its params file
        pairs.plan_corrupt(pairs.CorruptConfig(**{**cfg.__dict__, "params_file": str(params)}))


def test_task_entry_that_is_not_a_mapping_names_file_and_task(tmp_path: Path) -> None:
    tasks = {"jpeg_q10": "jpeg", "nameless": {"quality": 10}, "ok": {"name": "jpeg", "quality": 10}}
    with pytest.raises(TaskError, match=r"^p.yaml: corrupt.tasks.jpeg_q10 must be a mapping like .*'jpeg'"):
        task_entry(tasks, "jpeg_q10", "p.yaml")
    with pytest.raises(TaskError, match=r"^p.yaml: corrupt.tasks.nameless: needs a 'name'"):
        task_entry(tasks, "nameless", "p.yaml")
    with pytest.raises(TaskError, match=r"task 'x' is not in p.yaml corrupt.tasks; known: \['jpeg_q10'"):
        task_entry(tasks, "x", "p.yaml")
    with pytest.raises(TaskError, match=r"task 'x' is not in p.yaml \(corrupt.tasks is a str"):
        task_entry("a,b", "x", "p.yaml")
    assert task_entry(tasks, "ok", "p.yaml") == ("jpeg", {"quality": 10})


@pytest.mark.parametrize("task", ["sr_x2", "jpeg_q10", "derain", "a.b-c_1", "_x"])
def test_safe_task_names_are_accepted(task: str) -> None:
    assert check_task_name(task) == task


@pytest.mark.parametrize("task", ["../evil", "..", ".", "a/b", "/abs", "a..b", "", ".hidden", "-x", "a b", "é"])
def test_unsafe_task_names_are_refused(task: str) -> None:
    with pytest.raises(TaskError, match="bad task name"):
        check_task_name(task, "p.yaml")
    with pytest.raises(ValueError, match="bad task name"):
        pairs.CorruptConfig(task, "gaussian_noise", {"sigma": 30})


def test_task_name_cannot_escape_the_output_root(tmp_path: Path, clean: Path, capsys) -> None:
    params = _params(tmp_path, {"../evil": {"name": "gaussian_noise", "sigma": 30}})
    root = tmp_path / "out" / "pairs"
    assert _corrupt(tmp_path, clean, "../evil", params, out=str(root / "{task}")) == 2
    assert "bad task name '../evil'" in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_unwritable_output_is_one_line_naming_the_path(tmp_path: Path, clean: Path, capsys) -> None:
    src = photo_folder(tmp_path / "train", PHOTOS[:1])
    (tmp_path / "afile").write_text("a file, not a folder\n")
    out = tmp_path / "afile" / "clean"
    assert _shard(src, out) == 2
    assert f"{out}: cannot write here ({tmp_path / 'afile'}: not a folder)" in _one_error_line(capsys)
    params = _params(tmp_path, {"sr_x2": {"name": "bicubic_down", "scale": 2}})
    assert _corrupt(tmp_path, clean, "sr_x2", params, out=str(tmp_path / "afile" / "{task}")) == 2
    assert f"{tmp_path / 'afile' / 'sr_x2'}: cannot write here" in _one_error_line(capsys)
    if Path("/proc/self").is_dir():  # not writable even for root
        assert _shard(src, Path("/proc/ipt-s4")) == 2
        assert "/proc/ipt-s4: cannot write here (/proc/.ipt-s4.lock: " in _one_error_line(capsys)
    assert (tmp_path / "afile").read_text() == "a file, not a folder\n"


def test_source_with_every_file_skipped_is_an_error_naming_it(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_text("not a JPEG\n")
    (src / "b.png").write_bytes(b"")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(src / "c.png")  # too small
    out = tmp_path / "clean"
    for _ in range(2):  # the rerun (same plan, manifest present) fails the same way
        assert _shard(src, out) == 2
        err = _one_error_line(capsys)
        assert f"error: {src}: all 3 file(s) were skipped, no samples" in err, err
        assert f"{out / 'manifest.json'}" in err
        m = _manifest(out)  # kept for diagnosis
        assert m["samples"] == 0 and sorted(s["path"] for s in m["skipped"]) == ["a.jpg", "b.png", "c.png"]
    params = _params(tmp_path, {"sr_x2": {"name": "bicubic_down", "scale": 2}})
    assert _corrupt(tmp_path, out, "sr_x2", params) == 2
    assert f"{out}: holds no clean samples" in _one_error_line(capsys)
    assert not (tmp_path / "pairs").exists()
