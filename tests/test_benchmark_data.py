"""Benchmark-set loading (ipt/data/testsets.py) on tiny image trees: layouts, pairing, noise and every error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corruptions import imresize_uint8
from ipt.data.testsets import BenchmarkDataError, load_benchmark, resolve_datasets, task_kind


def _img(h: int, w: int, seed: int, gray: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)


def _save(path: Path, arr: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, lossless=True) if path.suffix == ".webp" else Image.fromarray(arr).save(path)
    return arr


def _edsr(root: Path, name: str, sizes: dict[str, tuple[int, int]], scale: int, lr: bool = True) -> dict:
    """An EDSR-layout set; returns {name: (hr, lr)} with the LR made by the MATLAB-compatible bicubic."""
    out = {}
    for i, (k, (h, w)) in enumerate(sizes.items()):
        hr = _save(root / name / "HR" / f"{k}.png", _img(h, w, i))
        small = imresize_uint8(hr[: h - h % scale, : w - w % scale], 1 / scale)
        if lr:
            _save(root / name / "LR_bicubic" / f"X{scale}" / f"{k}x{scale}.png", small)
        out[k] = (hr, small)
    return out


# ------------------------------------------------------------------------------------------------ SR


def test_edsr_layout_pairs_by_name_and_crops_hr(tmp_path: Path) -> None:
    # "a" < "a_1" among HR names but "a_1x2" < "ax2" among LR names: pairing by position would swap them
    made = _edsr(tmp_path, "Set5", {"a": (25, 31), "a_1": (40, 36)}, 2)
    ds = load_benchmark(tmp_path, "Set5", "sr_x2")
    assert [p.name for p in ds.pairs] == ["a", "a_1"] and ds.scale == 2 and ds.notes == []
    for p in ds.pairs:
        hr, lr = made[p.name]
        np.testing.assert_array_equal(p.lq, lr)
        np.testing.assert_array_equal(p.hr, hr[: lr.shape[0] * 2, : lr.shape[1] * 2])
    assert ds.pairs[0].hr.shape == (24, 30, 3)


def test_missing_lr_is_made_with_matlab_bicubic_and_noted(tmp_path: Path) -> None:
    made = _edsr(tmp_path, "B100", {"x": (27, 35)}, 3, lr=False)
    ds = load_benchmark(tmp_path, "B100", "sr_x3")
    np.testing.assert_array_equal(ds.pairs[0].lq, made["x"][1])
    assert ds.pairs[0].hr.shape == (27, 33, 3)
    assert len(ds.notes) == 1 and "LR_bicubic/X3" in ds.notes[0] and "B100" in ds.notes[0]
    assert not (tmp_path / "B100" / "LR_bicubic").exists()  # nothing cached into the benchmark root


def test_other_formats_gray_hr_and_ceil_sized_lr(tmp_path: Path) -> None:
    hr = _save(tmp_path / "Urban100" / "HR" / "img_001.webp", _img(25, 30, 0))
    lr = _save(tmp_path / "Urban100" / "LR_bicubic" / "X2" / "img_001x2.bmp", imresize_uint8(hr, 0.5))  # 13x15
    gray = _save(tmp_path / "Urban100" / "HR" / "bridge.png", _img(20, 22, 1, gray=True))
    _save(tmp_path / "Urban100" / "LR_bicubic" / "X2" / "bridgex2.png", imresize_uint8(gray, 0.5))
    ds = {p.name: p for p in load_benchmark(tmp_path, "Urban100", "sr_x2").pairs}
    assert ds["img_001"].lq.shape == (13, 15, 3) and ds["img_001"].hr.shape == (25, 30, 3)  # min(H, h*s)
    np.testing.assert_array_equal(ds["img_001"].lq, lr)
    assert ds["bridge"].hr.shape == (20, 22) and ds["bridge"].lq.shape == (10, 11, 3)  # gray kept for scoring


def test_limit_keeps_the_first_names(tmp_path: Path) -> None:
    _edsr(tmp_path, "Set14", {"c": (20, 20), "a": (20, 20), "b": (20, 20)}, 2)
    assert [p.name for p in load_benchmark(tmp_path, "Set14", "sr_x2", limit=2).pairs] == ["a", "b"]


# ------------------------------------------------------------------------------------------------ denoise


@pytest.mark.parametrize("layout", ["flat", "HR"])
def test_denoise_layouts_and_deterministic_noise(tmp_path: Path, layout: str) -> None:
    d = tmp_path / "CBSD68" / ("HR" if layout == "HR" else "")
    clean = _save(d / "101.png", np.full((64, 64, 3), 128, np.uint8))
    _save(d / "102.jpg", clean)
    a = load_benchmark(tmp_path, "CBSD68", "denoise_s30", seed=7)
    b = load_benchmark(tmp_path, "CBSD68", "denoise_s30", seed=7)
    assert [p.name for p in a.pairs] == ["101", "102"]
    x, y = a.pairs[0].lq, a.pairs[1].lq
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (1, 3, 64, 64)
    assert 0 <= float(x.min()) and float(x.max()) <= 255 and not torch.equal(x, x.round())  # float, not quantized
    assert float((x - 128).std()) == pytest.approx(30, rel=0.05)
    assert torch.equal(x, b.pairs[0].lq) and torch.equal(y, b.pairs[1].lq)  # same seed -> identical inputs
    assert not torch.equal(x, y)  # same clean content, different names -> different noise
    other = load_benchmark(tmp_path, "CBSD68", "denoise_s30", seed=8).pairs[0].lq
    s50 = load_benchmark(tmp_path, "CBSD68", "denoise_s50", seed=7).pairs[0].lq
    assert not torch.equal(x, other) and not torch.equal(x, s50)
    np.testing.assert_array_equal(a.pairs[0].hr, clean)
    assert "seed 7" in a.notes[0]


def test_denoise_noise_does_not_depend_on_the_other_images(tmp_path: Path) -> None:
    _save(tmp_path / "McMaster" / "1.png", _img(16, 16, 0))
    first = load_benchmark(tmp_path, "McMaster", "denoise_s50").pairs[0].lq
    _save(tmp_path / "McMaster" / "0.png", _img(16, 16, 1))  # sorts first now
    again = {p.name: p.lq for p in load_benchmark(tmp_path, "McMaster", "denoise_s50").pairs}
    assert torch.equal(first, again["1"])


# ------------------------------------------------------------------------------------------------ derain


@pytest.mark.parametrize("clean_in", ["beside", "norain"])
def test_rain100l_layouts(tmp_path: Path, clean_in: str) -> None:
    root = tmp_path / "Rain100L"
    clean_dir = root if clean_in == "beside" else root / "norain"
    made = {}
    for i in (1, 2, 10):
        rainy = _save(root / "rainy" / f"rain-{i:03d}.png", _img(20, 24, i))
        made[f"rain-{i:03d}"] = (rainy, _save(clean_dir / f"norain-{i:03d}.png", _img(20, 24, 100 + i)))
    ds = load_benchmark(tmp_path, "Rain100L", "derain")
    assert [p.name for p in ds.pairs] == ["rain-001", "rain-002", "rain-010"] and ds.scale == 1
    for p in ds.pairs:
        np.testing.assert_array_equal(p.lq, made[p.name][0])
        np.testing.assert_array_equal(p.hr, made[p.name][1])


# ------------------------------------------------------------------------------------------------ errors


def _raises(match: str, folder: Path, fn, *args, **kw) -> str:
    with pytest.raises(BenchmarkDataError, match=match) as e:
        fn(*args, **kw)
    assert str(folder) in str(e.value), str(e.value)
    return str(e.value)


def test_empty_folders(tmp_path: Path) -> None:
    for d in ("Set5/HR", "CBSD68", "Rain100L/rainy"):
        (tmp_path / d).mkdir(parents=True)
    _raises("no images", tmp_path / "Set5" / "HR", load_benchmark, tmp_path, "Set5", "sr_x2")
    _raises("no images", tmp_path / "CBSD68", load_benchmark, tmp_path, "CBSD68", "denoise_s30")
    _raises("no images", tmp_path / "Rain100L" / "rainy", load_benchmark, tmp_path, "Rain100L", "derain")
    _edsr(tmp_path, "Set14", {"a": (20, 20)}, 2)
    (tmp_path / "Set14" / "LR_bicubic" / "X2" / "ax2.png").unlink()
    _raises("no images", tmp_path / "Set14" / "LR_bicubic" / "X2", load_benchmark, tmp_path, "Set14", "sr_x2")


def test_unmatched_pairs_list_names(tmp_path: Path) -> None:
    _edsr(tmp_path, "Set5", {f"im{i}": (20, 20) for i in range(8)}, 2)
    for i in range(7):
        (tmp_path / "Set5" / "LR_bicubic" / "X2" / f"im{i}x2.png").unlink()
    _save(tmp_path / "Set5" / "LR_bicubic" / "X2" / "strayx2.png", _img(10, 10, 0))
    msg = _raises("unmatched", tmp_path / "Set5" / "HR", load_benchmark, tmp_path, "Set5", "sr_x2")
    assert "im0, im1, im2, im3, im4 (+2 more)" in msg and "strayx2" in msg
    root = tmp_path / "Rain100L"
    _save(root / "rainy" / "rain-001.png", _img(8, 8, 0))
    _save(root / "rainy" / "rain-002.png", _img(8, 8, 0))
    _save(root / "norain-001.png", _img(8, 8, 0))
    assert "rain-002" in _raises("unmatched", root / "rainy", load_benchmark, tmp_path, "Rain100L", "derain")


def test_wrong_sizes(tmp_path: Path) -> None:
    _edsr(tmp_path, "Set5", {"a": (40, 40)}, 2)
    _save(tmp_path / "Set5" / "LR_bicubic" / "X2" / "ax2.png", _img(10, 20, 0))
    msg = _raises("expected 20x20", tmp_path / "Set5" / "LR_bicubic" / "X2", load_benchmark, tmp_path, "Set5", "sr_x2")
    assert "10x20" in msg
    _save(tmp_path / "Rain100L" / "rainy" / "rain-1.png", _img(8, 8, 0))
    _save(tmp_path / "Rain100L" / "norain-1.png", _img(8, 9, 0))
    _raises("same size", tmp_path / "Rain100L" / "rainy", load_benchmark, tmp_path, "Rain100L", "derain")


def test_wrong_layouts(tmp_path: Path) -> None:
    _save(tmp_path / "Set5" / "baby.png", _img(20, 20, 0))  # SR images not in HR/
    assert "move them into HR/" in _raises("no HR/", tmp_path / "Set5", load_benchmark, tmp_path, "Set5", "sr_x2")
    _save(tmp_path / "Rain100L" / "rain-001.png", _img(8, 8, 0))  # the README's flat layout
    _raises("no rainy/", tmp_path / "Rain100L", load_benchmark, tmp_path, "Rain100L", "derain")
    _save(tmp_path / "Rain100L" / "rainy" / "rain-001.png", _img(8, 8, 0))
    (tmp_path / "Rain100L" / "rain-001.png").unlink()
    _raises("norain", tmp_path / "Rain100L", load_benchmark, tmp_path, "Rain100L", "derain")
    _save(tmp_path / "Dup" / "HR" / "a.png", _img(8, 8, 0))
    _save(tmp_path / "Dup" / "HR" / "a.jpg", _img(8, 8, 0))
    _raises("two images named 'a'", tmp_path / "Dup" / "HR", load_benchmark, tmp_path, "Dup", "sr_x2")


def test_unknown_dataset_task_and_root(tmp_path: Path) -> None:
    (tmp_path / "Set5").mkdir()
    msg = _raises("unknown dataset 'Set15'", tmp_path, resolve_datasets, tmp_path, "sr_x2", ["Set15"])
    assert "Set5" in msg  # lists what is there
    _raises("not found", tmp_path / "Manga109", load_benchmark, tmp_path, "Manga109", "sr_x2")
    _raises("benchmark root", tmp_path / "nope", resolve_datasets, tmp_path / "nope", "sr_x2")
    with pytest.raises(BenchmarkDataError, match="unknown task 'deblur'"):
        task_kind("deblur")


def test_default_datasets_skip_absent_ones_with_notes(tmp_path: Path) -> None:
    for d in ("Set14", "CBSD68", "Urban100"):
        (tmp_path / d).mkdir()
    names, notes = resolve_datasets(tmp_path, "sr_x4")
    assert names == ["Set14", "Urban100"] and len(notes) == 2 and any("B100" in n for n in notes)
    assert resolve_datasets(tmp_path, "denoise_s50")[0] == ["CBSD68", "Urban100"]
    _raises("none of the default derain", tmp_path, resolve_datasets, tmp_path, "derain")
    assert resolve_datasets(tmp_path, "sr_x2", ["Set14"]) == (["Set14"], [])
