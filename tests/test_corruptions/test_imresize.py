"""MATLAB-compatible bicubic imresize: bit-exact against MATLAB-made LR files, plus properties of the float path."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BENCHMARK_ROOT, require_benchmark, require_shared
from corruptions import apply, imresize_float, imresize_uint8, quantize_uint8, round_half_away_uint8


# Benchmark images are never copied into the project: these tests read them through the configurable root, and fail
# under CI=true when it is missing (conftest.require_shared).
@pytest.fixture
def set5() -> Path:
    return require_benchmark("Set5")


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _modcrop(img: np.ndarray, s: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % s, : w - w % s]


def _reference_matrix(n_in: int, scale: float) -> np.ndarray:
    """Independent float64 resize matrix (n_out, n_in): cubic a=-0.5, antialiased, mirror border, no folding table."""
    n_out = math.ceil(n_in * scale - 1e-9)
    support = 2.0 / min(scale, 1.0)
    mat = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) / scale - 0.5  # 0-based source coordinate of output pixel i
        for j in range(math.floor(center - support) - 1, math.ceil(center + support) + 2):
            t = abs(center - j) * min(scale, 1.0)
            wt = 1.5 * t**3 - 2.5 * t**2 + 1 if t <= 1 else (-0.5 * t**3 + 2.5 * t**2 - 4 * t + 2 if t <= 2 else 0)
            k = j % (2 * n_in)
            mat[i, k if k < n_in else 2 * n_in - 1 - k] += wt
    return mat / mat.sum(axis=1, keepdims=True)


def _reference_float(img: np.ndarray, scale: float) -> np.ndarray:
    rows, cols = _reference_matrix(img.shape[0], scale), _reference_matrix(img.shape[1], scale)
    return np.einsum("ih,hwc,jw->ijc", rows, img.astype(np.float64), cols)


# (a) exact against MATLAB-made LR files (Set5 bird, x2/x3/x4)
@pytest.mark.parametrize("s", [2, 3, 4])
def test_matlab_fixture_exact(set5: Path, s: int) -> None:
    hr = _modcrop(_load(set5 / "HR" / "bird.png"), s)
    lr = _load(set5 / "LR_bicubic" / f"X{s}" / f"birdx{s}.png")
    out = imresize_uint8(hr, 1 / s)
    assert out.shape == lr.shape
    assert np.count_nonzero(out != lr) == 0


@pytest.mark.parametrize("s", [2, 3, 4])
def test_bicubic_down_corruption_matches_fixture(set5: Path, s: int) -> None:
    hr = _modcrop(_load(set5 / "HR" / "bird.png"), s)
    x = torch.from_numpy(hr.copy()).permute(2, 0, 1)[None].float() / 255.0
    y = apply("bicubic_down", x, generator=torch.Generator(), scale=s)
    assert np.array_equal(
        quantize_uint8(y)[0].permute(1, 2, 0).numpy(), _load(set5 / "LR_bicubic" / f"X{s}" / f"birdx{s}.png")
    )


# (b) exact over every Set5/Set14 LR file in the shared benchmark folder (57 files)
@pytest.mark.parametrize("dataset", ["Set5", "Set14"])
@pytest.mark.parametrize("s", [2, 3, 4])
def test_benchmark_lr_exact(dataset: str, s: int) -> None:
    lr_dir = require_shared(BENCHMARK_ROOT / dataset / "LR_bicubic" / f"X{s}", f"the {dataset} x{s} LR files")
    files = sorted(lr_dir.glob(f"*x{s}.png"))
    assert files, f"no LR files in {lr_dir}"
    bad = {}
    for path in files:
        hr = _modcrop(_load(BENCHMARK_ROOT / dataset / "HR" / f"{path.name[: -len(f'x{s}.png')]}.png"), s)
        out, lr = imresize_uint8(hr, 1 / s), _load(path)
        if out.shape != lr.shape or np.count_nonzero(out != lr):
            bad[path.name] = (out.shape, lr.shape, int(np.count_nonzero(out != lr)) if out.shape == lr.shape else -1)
    assert not bad, f"differing files: {bad}"


# (c) upscaling and the float path
@pytest.mark.parametrize("scale", [2, 3, 4, 1.5])
def test_upscale_constant_stays_constant(scale: float) -> None:
    img = np.full((7, 9, 3), 173, dtype=np.uint8)
    out = imresize_uint8(img, scale)
    assert out.shape == (math.ceil(7 * scale), math.ceil(9 * scale), 3)
    assert (out == 173).all()
    np.testing.assert_allclose(imresize_float(img, scale), 173.0, rtol=0, atol=1e-9)


SIZE_CASES = [(7, 9, 1 / 3, (3, 3)), (288, 288, 1 / 3, (96, 96)), (5, 7, 1 / 4, (2, 2)), (1, 1, 0.5, (1, 1))]


@pytest.mark.parametrize(("h", "w", "scale", "expected"), SIZE_CASES)
def test_output_size_is_ceil(h: int, w: int, scale: float, expected: tuple[int, int]) -> None:
    assert imresize_uint8(np.zeros((h, w), dtype=np.uint8), scale).shape == expected


@pytest.mark.parametrize("scale", [2, 3, 4, 1 / 2, 1 / 3, 1 / 4])
def test_float_path_matches_independent_reference(scale: float) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(64, 192, size=(23, 17, 2)).astype(np.uint8)  # mid-range: no clipping between passes
    ref = _reference_float(img, scale)
    np.testing.assert_allclose(imresize_float(img, scale), ref, rtol=0, atol=1e-9)
    diff = np.abs(imresize_uint8(img, scale).astype(np.float64) - np.floor(ref + 0.5))
    assert diff.max() <= 1  # the uint8 path rounds between passes: off by at most one level


def test_grayscale_equals_each_channel() -> None:
    img = np.random.default_rng(3).integers(0, 256, size=(50, 61, 3)).astype(np.uint8)
    out = imresize_uint8(img, 1 / 3)
    for c in range(3):
        assert np.array_equal(imresize_uint8(np.ascontiguousarray(img[..., c]), 1 / 3), out[..., c])


def test_rejects_float_input_for_uint8_path() -> None:
    with pytest.raises(TypeError):
        imresize_uint8(np.zeros((4, 4)), 0.5)


# (d) MATLAB rounds half away from zero; np.round (half to even) would not be exact
def test_round_half_away_from_zero() -> None:
    x = np.array([0.5, 1.5, 2.5, 108.5, 254.5, 255.5, -0.5, -3.2, 300.0, 0.49999])
    assert round_half_away_uint8(x).tolist() == [1, 2, 3, 109, 255, 255, 0, 0, 255, 0]
    assert np.round(2.5) == 2.0  # the trap


def test_crafted_half_case_rounds_away() -> None:
    # Enlarging x2 uses dyadic weights (-3/128, 29/128, 111/128, -9/128), so integer inputs can land exactly on .5:
    # output column 5 of this row is exactly 108.5; MATLAB gives 109 where half-to-even would give 108.
    img = np.tile(np.array([100, 219, 141, 8], dtype=np.uint8), (2, 1))
    assert imresize_float(img, 2)[0, 5] == 108.5 and np.round(108.5) == 108
    assert imresize_uint8(img, 2)[:, 5].tolist() == [109] * 4


def test_output_length_absorbs_binary_round_off_only() -> None:
    from corruptions._imresize import output_length

    assert 50 * 1.1 > 55 and output_length(50, 1.1) == 55  # 55.00000000000001 is 55
    assert 100000 * 1.1 > 110000 and output_length(100000, 1.1) == 110000  # relative to the size
    assert output_length(7, 1 / 3) == 3 and output_length(10, 0.35) == 4 and output_length(6, 1 / 3) == 2


def test_quantize_uint8_saturates_both_ends() -> None:
    x = torch.tensor([-0.5, -0.001, 0.0, 0.4 / 255, 0.5 / 255, 1.0, 1.002, 1.2, 2.0])
    assert quantize_uint8(x).tolist() == [0, 0, 0, 0, 1, 255, 255, 255, 255]


def _two_passes(img: np.ndarray, scales: tuple[float, float], order: tuple[int, int]) -> np.ndarray:
    """Two 1-D passes of the independent float64 matrices in ``order``, each rounded half away to uint8."""
    out = img.astype(np.float64)
    for axis in order:
        mat = _reference_matrix(img.shape[axis], scales[axis])
        out = np.moveaxis(np.tensordot(mat, np.moveaxis(out, axis, 0), axes=1), 0, axis)
        out = np.clip(np.floor(np.abs(out) + 0.5) * np.sign(out), 0, 255)
    return out.astype(np.uint8)


@pytest.mark.parametrize(("scales", "first"), [((0.75, 0.5), 1), ((0.5, 0.75), 0), ((2, 1.5), 1), ((0.5, 2), 0)])
def test_two_scales_resize_the_smaller_scale_first(scales: tuple[float, float], first: int) -> None:
    """MATLAB resizes the dimension with the smaller scale first; the other order differs in some levels."""
    img = np.random.default_rng(7).integers(0, 256, (24, 28, 3), dtype=np.uint8)
    out = imresize_uint8(img, scales)
    assert out.shape == (math.ceil(24 * scales[0]), math.ceil(28 * scales[1]), 3)
    assert np.array_equal(out, _two_passes(img, scales, (first, 1 - first)))
    assert not np.array_equal(out, _two_passes(img, scales, (1 - first, first)))


def test_bad_shapes_scales_and_dtypes_are_named() -> None:
    with pytest.raises(ValueError, match=r"^expected an \(H, W\) or \(H, W, C\) array, got shape \(1, 2, 3, 4\)$"):
        imresize_uint8(np.zeros((1, 2, 3, 4), np.uint8), 0.5)
    for bad in ((0, 0.5), (0.5, 0), (-1, 0.5), 0):
        with pytest.raises(ValueError, match=rf"^scale must be positive, got {re.escape(repr(bad))}$"):
            imresize_uint8(np.zeros((4, 4), np.uint8), bad)
    with pytest.raises(TypeError, match=r"^imresize_uint8 expects a uint8 array, got float64$"):
        imresize_uint8(np.zeros((4, 4)), 0.5)
