"""`ipt benchmark --task T` for a user's task T (jpeg_q10): its corrupt.tasks entry applied to clean Set5/Set14."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_cli_benchmark import TOP_KEYS  # the one report schema

from corruptions import quantize_uint8, sample_generator
from ipt.cli import main
from ipt.data.testsets import BenchmarkDataError, input_scale, load_benchmark, resolve_datasets, task_kind

SET_KEYS = {"images", "images_total", "psnr_y", "ssim_y", "psnr_rgb", "per_image"}
JPEG_Q10 = {"name": "jpeg", "quality": 10}
SEED = 20210507


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth colour waves with some texture, deterministic (JPEG at q10 visibly degrades it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    f = rng.uniform(3, 9, (3, 2))
    img = np.stack([128 + 90 * np.sin(x / f[c, 0] + c) * np.cos(y / f[c, 1]) for c in range(3)], -1)
    return np.clip(np.round(img + rng.normal(0, 6, img.shape)), 0, 255).astype(np.uint8)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Set5 in the EDSR layout (HR/ + LR_bicubic/, which a custom task ignores) and Set14 with images directly in
    the folder, one of them single-channel; odd sizes so the x2 task has something to mod-crop."""
    base = tmp_path / "bench"
    for i, k in enumerate(("baby", "bird")):
        (base / "Set5" / "HR").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(41, 50, i)).save(base / "Set5" / "HR" / f"{k}.png")
    (base / "Set5" / "LR_bicubic" / "X3").mkdir(parents=True)
    (base / "Set14").mkdir()
    Image.fromarray(_image(37, 44, 7)).save(base / "Set14" / "comic.png")
    Image.fromarray(_image(36, 40, 8)[..., 0]).save(base / "Set14" / "bridge.png")  # grayscale file
    return base


@pytest.fixture
def params(tmp_path: Path) -> Path:
    """A params file whose corrupt.tasks holds the user's tasks (the checkout's params.yaml is not used)."""
    path = tmp_path / "params.yaml"
    tasks = {"sr_x2": {"name": "bicubic_down", "scale": 2}, "jpeg_q10": JPEG_Q10}
    tasks["small_x2"] = {"name": "bicubic_down", "scale": 2}
    path.write_text(yaml.safe_dump({"seed": SEED, "corrupt": {"tasks": tasks}}))
    return path


def _bench(root: Path, params: Path, out: Path, *extra: str, task: str = "jpeg_q10") -> int:
    argv = ["benchmark", "--task", task, "--root", str(root), "--out", str(out), "--params", str(params), "--quiet"]
    return main([*argv, *extra])


def _strict_json(path: Path) -> dict:
    def no_constants(name: str) -> None:
        raise AssertionError(f"non-standard JSON token {name} in {path}")

    return json.loads(path.read_text(), parse_constant=no_constants)


def _y(img: np.ndarray) -> np.ndarray:
    """The official calc_psnr Y (the `ipt` protocol), from an (H, W, 3) or (H, W) uint8 image, in float64."""
    rgb = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img
    r, g, b = (rgb[..., c].astype(np.float64) for c in range(3))
    return 16 + (65.738 * r + 129.057 * g + 25.064 * b) / 256


def test_report_format_records_the_corruption(root: Path, params: Path, tmp_path: Path, capsys) -> None:
    out, md = tmp_path / "r" / "jpeg.json", tmp_path / "r" / "jpeg.md"
    assert _bench(root, params, out, "--model", "baseline", "--markdown", str(md)) == 0
    captured = capsys.readouterr()
    report = _strict_json(out)
    assert set(report) == TOP_KEYS | {"corruption"}
    assert report["task"] == "jpeg_q10" and report["model"] == "baseline" and report["tiling"] is None
    assert report["corruption"] == {"name": "jpeg", "params": {"quality": 10}, "scale": 1, "seed": SEED}
    assert list(report["datasets"]) == ["Set5", "Set14"]  # the default sets of a custom task
    for name, n in (("Set5", 2), ("Set14", 2)):
        r = report["datasets"][name]
        assert set(r) == SET_KEYS and r["images"] == n == len(r["per_image"])
        assert all(math.isfinite(p[k]) for p in r["per_image"] for k in ("psnr_y", "ssim_y", "psnr_rgb"))
        assert 15 < r["psnr_y"] < 45 and r["psnr_y"] == pytest.approx(np.mean([p["psnr_y"] for p in r["per_image"]]))
    assert "inputs `jpeg`" in captured.out and "| Set14 | 2 |" in captured.out and md.read_text() == captured.out
    assert "jpeg {'quality': 10}, seed 20210507" in captured.err  # the note saying how the inputs were made
    assert _bench(root, params, out, "--model", "identity", "--datasets", "Set14") == 0  # --datasets overrides
    assert list(_strict_json(out)["datasets"]) == ["Set14"]


def test_two_runs_give_identical_inputs_and_reports(root: Path, params: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert _bench(root, params, a, "--model", "baseline") == 0
    assert _bench(root, params, b, "--model", "baseline") == 0
    assert a.read_bytes() == b.read_bytes()  # the same bytes: the report holds no timing
    one, two = (load_benchmark(root, "Set5", "jpeg_q10", corruption=JPEG_Q10) for _ in range(2))
    assert all(np.array_equal(p.lq, q.lq) and p.lq.dtype == np.uint8 for p, q in zip(one.pairs, two.pairs, strict=True))
    # an image's input depends on (seed, task, name) only: not on which other images are loaded
    alone = load_benchmark(root, "Set5", "jpeg_q10", corruption=JPEG_Q10, limit=1)
    assert np.array_equal(alone.pairs[0].lq, one.pairs[0].lq)


def test_baseline_psnr_is_the_degraded_input_psnr(root: Path, params: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    assert _bench(root, params, out, "--model", "baseline") == 0
    report = _strict_json(out)
    for folder, name in (("Set5/HR", "baby"), ("Set5/HR", "bird"), ("Set14", "bridge"), ("Set14", "comic")):
        with Image.open(root / folder / f"{name}.png") as im:
            clean = np.asarray(im)
        rgb = np.repeat(clean[..., None], 3, -1) if clean.ndim == 2 else clean
        buf = io.BytesIO()  # the corruption, written out independently: Pillow JPEG q10, 4:2:0
        Image.fromarray(rgb).save(buf, format="JPEG", quality=10, subsampling=2)
        degraded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        mse = np.mean((_y(degraded) - _y(clean)) ** 2)
        record = next(p for p in report["datasets"][folder.split("/")[0]]["per_image"] if p["name"] == name)
        assert record["psnr_y"] == pytest.approx(10 * np.log10(255.0**2 / mse), abs=1e-9)


def test_random_corruption_uses_sample_generator_and_corrupt_stage_quantization(root: Path) -> None:
    spec = {"name": "gaussian_noise", "sigma": 15}
    ds = load_benchmark(root, "Set14", "noise_s15", corruption=spec, seed=7)
    assert ds.corruption == {"name": "gaussian_noise", "params": {"sigma": 15}, "scale": 1, "seed": 7}
    with Image.open(root / "Set14" / "comic.png") as im:
        x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float() / 255.0
    noise = torch.randn(x.shape[1:], generator=sample_generator(7, "noise_s15", "comic"))
    expected = quantize_uint8((x + noise * 15 / 255).clamp(0, 1))[0].permute(1, 2, 0).numpy()
    assert np.array_equal(next(p.lq for p in ds.pairs if p.name == "comic"), expected)


def test_scale_from_the_spec_and_bicubic_baseline(root: Path, params: Path, tmp_path: Path) -> None:
    """A bicubic_down task under another name scores exactly as sr_x2 made from the same HR files."""
    assert task_kind("small_x2", {"name": "bicubic_down", "scale": 2}) == ("custom", 2)
    scales = {t: input_scale(t) for t in ("sr_x3", "denoise_s50", "derain")}
    assert scales == {"sr_x3": 3, "denoise_s50": 1, "derain": 1}  # the noise level is no scale
    assert input_scale("small_x2", {"name": "bicubic_down", "scale": 2}) == 2 and input_scale("jpeg_q10", JPEG_Q10) == 1
    custom, sr = tmp_path / "c.json", tmp_path / "s.json"
    assert _bench(root, params, custom, "--model", "baseline", "--datasets", "Set5", task="small_x2") == 0
    assert _bench(root, params, sr, "--model", "bicubic", "--datasets", "Set5", task="sr_x2") == 0
    c, s = _strict_json(custom), _strict_json(sr)
    assert c["corruption"]["scale"] == 2 and "corruption" not in s
    assert c["datasets"]["Set5"]["per_image"] == s["datasets"]["Set5"]["per_image"]
    assert _bench(root, params, custom, "--model", "identity", task="small_x2") == 2  # x2: identity does not fit


def test_unknown_task_or_bad_spec_is_a_clear_error(root: Path, params: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.json"
    assert _bench(root, params, out, "--model", "baseline", task="jpeg_q20") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'jpeg_q20'" in err and f"{params} corrupt.tasks" in err
    assert "jpeg_q10" in err  # lists the tasks that are there
    argv = ["benchmark", "--task", "jpeg_q10", "--model", "baseline", "--root", str(root), "--out", str(out)]
    assert main(argv) == 2  # no params file at all (the tests run with IPT_PARAMS=none)
    assert "no corruption entry" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    for spec, message in (
        ({"name": "jpeg", "quality": 200}, "jpeg quality must be in 1..95, got 200"),
        ({"name": "jpg", "quality": 10}, "unknown corruption 'jpg'"),
        ({"name": "jpeg", "qualty": 10}, "unknown ['qualty'], missing ['quality']"),
    ):
        bad.write_text(yaml.safe_dump({"corrupt": {"tasks": {"jpeg_q10": spec}}}))
        assert _bench(root, bad, out, "--model", "baseline") == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err
    assert not out.exists()
    with pytest.raises(BenchmarkDataError, match="unknown task 'jpeg_q10'"):
        resolve_datasets(root, "jpeg_q10")


def test_a_model_for_the_custom_task(root: Path, params: Path, tmp_path: Path) -> None:
    """A (tiny, random) single-task jpeg_q10 checkpoint runs through the same path as the paper's tasks."""
    from ipt.checkpoint import save_checkpoint
    from ipt.config import ModelSpec
    from ipt.model import build_ipt

    torch.manual_seed(0)
    spec = ModelSpec.for_tasks({"jpeg_q10": 1}, n_feats=8, num_layers=1, num_heads=2, patch_size=12)
    weights = save_checkpoint(tmp_path / "model.pt", build_ipt(spec))
    out = tmp_path / "m.json"
    extra = ("--model", str(weights), "--tiling", "overlap", "--precision", "fp32", "--device", "cpu")
    assert _bench(root, params, out, *extra, "--datasets", "Set5", "--limit", "1") == 0
    report = _strict_json(out)
    assert report["tiling"] == "overlap" and report["corruption"]["name"] == "jpeg"
    assert report["datasets"]["Set5"]["images"] == 1


def test_real_set5_set14_subset(benchmark_root: Path, params: Path, tmp_path: Path) -> None:
    """On the real sets (skipped without them): the defaults Set5 and Set14, one image each."""
    out = tmp_path / "real.json"
    assert _bench(benchmark_root, params, out, "--model", "baseline", "--limit", "1") == 0
    report = _strict_json(out)
    assert list(report["datasets"]) == ["Set5", "Set14"]
    assert all(20 < r["psnr_y"] < 40 for r in report["datasets"].values())
