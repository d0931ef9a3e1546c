"""The two evaluation protocols of ipt/metrics.py: unit checks, and the published bicubic rows on the real sets."""

from __future__ import annotations

import ast
import json
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate

from conftest import ROOT, require_benchmark
from ipt.data.testsets import load_benchmark
from ipt.metrics import (
    PROTOCOLS,
    PSNR_CAP_DB,
    crop_border_for,
    psnr_rgb,
    psnr_y,
    score,
    ssim_map,
    ssim_y,
    to_y,
)
from ipt.scoring import PUBLISHED_BICUBIC, bicubic_fn, evaluate

IPT_W = np.array([65.738, 129.057, 25.064]) / 256
MATLAB_W = np.array([65.481, 128.553, 24.966]) / 255


def _rand(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _official_calc_psnr(sr: torch.Tensor, hr: torch.Tensor, scale: int) -> float:
    """utility.calc_psnr of the official code, transcribed (IPT_REFERENCE 3.2), on (1, 3, H, W) tensors."""
    diff = (sr - hr) / 255
    diff = (diff * torch.tensor([65.738, 129.057, 25.064], dtype=diff.dtype).view(1, 3, 1, 1) / 256).sum(dim=1)
    valid = diff if scale == 1 else diff[..., scale:-scale, scale:-scale]
    return float(-10 * torch.log10((valid**2).mean()))


# ------------------------------------------------------------------------------------------------ PSNR


@pytest.mark.parametrize("protocol, weights", [("ipt", IPT_W), ("matlab", MATLAB_W)])
def test_psnr_y_of_a_uniform_offset_is_known(protocol: str, weights: np.ndarray) -> None:
    hr = np.full((20, 24, 3), 100, np.uint8)
    sr = hr + np.array([10, 20, 30], np.uint8)
    expected = 10 * math.log10(255**2 / float(weights @ [10, 20, 30]) ** 2)
    assert psnr_y(sr, hr, protocol=protocol) == pytest.approx(expected, abs=1e-9)
    assert psnr_rgb(sr, hr) == pytest.approx(10 * math.log10(255**2 / (1400 / 3)), abs=1e-9)


# Each luma table written here from its source (the official calc_psnr; MATLAB rgb2ycbcr; the gray table is
# BT.601 luma normalised to sum 1, MATLAB rgb2gray up to 1e-4 as docs/benchmark_protocol.md says), channel by
# channel, so a swap of two channels in any one table fails.
LUMA_TABLES = {
    ("ipt", False): (16.0, {"R": 65.738 / 256, "G": 129.057 / 256, "B": 25.064 / 256}),
    ("matlab", False): (16.0, {"R": 65.481 / 255, "G": 128.553 / 255, "B": 24.966 / 255}),
    ("matlab", True): (0.0, {"R": 65.481 / 219, "G": 128.553 / 219, "B": 24.966 / 219}),
}


@pytest.mark.parametrize(("protocol", "gray"), list(LUMA_TABLES))
def test_each_luma_table_weighs_each_channel_in_rgb_order(protocol: str, gray: bool) -> None:
    offset, weights = LUMA_TABLES[(protocol, gray)]
    for i, channel in enumerate("RGB"):
        img = np.zeros((2, 2, 3), np.uint8)
        img[..., i] = 200
        y = to_y(img, protocol, pair_is_gray=gray if protocol == "matlab" else None)
        assert float(y[0, 0]) == pytest.approx(offset + 200 * weights[channel], abs=1e-9), channel
    mixed = np.stack([np.full((2, 2), 10), np.full((2, 2), 100), np.full((2, 2), 250)], axis=-1).astype(np.uint8)
    y = to_y(mixed, protocol, pair_is_gray=gray if protocol == "matlab" else None)
    want = offset + 10 * weights["R"] + 100 * weights["G"] + 250 * weights["B"]
    assert float(y[1, 1]) == pytest.approx(want, abs=1e-9)


def test_an_rgb_output_against_a_gray_reference_is_scored_on_its_rgb2gray_under_matlab() -> None:
    gray = _rand((16, 18), seed=3)
    sr = _rand((16, 18, 3), seed=4)  # distinct channels: the gray table's channel order matters
    _, w = LUMA_TABLES[("matlab", True)]
    sr_gray = sr[..., 0] * w["R"] + sr[..., 1] * w["G"] + sr[..., 2] * w["B"]
    mse = float(np.mean((sr_gray - gray) ** 2))
    assert psnr_y(sr, gray, protocol="matlab") == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)


def test_y_coefficients() -> None:
    white, red = np.full((2, 2, 3), 255, np.uint8), np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    assert float(to_y(white, "matlab")[0, 0]) == pytest.approx(235.0, abs=1e-9)
    assert float(to_y(red, "matlab")[0, 0]) == pytest.approx(16 + 65.481, abs=1e-9)
    assert float(to_y(red, "ipt")[0, 0]) == pytest.approx(16 + 65.738 * 255 / 256, abs=1e-9)
    assert float(to_y(np.zeros((2, 2, 3), np.uint8), "ipt")[0, 0]) == 16.0


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_ipt_psnr_equals_the_official_formula_on_quantized_floats(scale: int) -> None:
    g = torch.Generator().manual_seed(scale)
    hr = torch.randint(0, 256, (1, 3, 40, 44), generator=g).double()
    sr = hr + 8 * torch.randn(hr.shape, generator=g, dtype=torch.float64)  # unquantized, partly out of range
    ref = _official_calc_psnr(sr.clamp(0, 255).round(), hr, scale)
    assert psnr_y(sr, hr, crop_border=crop_border_for(scale), protocol="ipt") == pytest.approx(ref, abs=1e-9)


def test_layouts_agree() -> None:
    hr, sr = _rand((30, 33, 3), 1), _rand((30, 33, 3), 2)
    t = lambda a: torch.from_numpy(a).permute(2, 0, 1).float()  # noqa: E731
    ref = psnr_y(sr, hr)
    assert psnr_y(t(sr), t(hr)) == pytest.approx(ref, abs=1e-12)
    assert psnr_y(t(sr)[None], hr) == pytest.approx(ref, abs=1e-12)


def test_crop_border_removes_exactly_the_border() -> None:
    hr = _rand((30, 32, 3))
    sr = hr.copy()
    sr[:3] = 0
    sr[:, -3:] = 255
    assert psnr_y(sr, hr, crop_border=3) == PSNR_CAP_DB
    assert psnr_y(sr, hr, crop_border=2) < 40
    assert crop_border_for(1) == 0 and crop_border_for(4) == 4
    with pytest.raises(ValueError, match="too small"):
        psnr_y(sr, hr, crop_border=16)


def test_identical_images_give_the_cap_not_inf_and_json_stays_valid() -> None:
    img = _rand((16, 16, 3))
    m = score(img, img, crop_border=0)
    assert m["psnr_y"] == m["psnr_rgb"] == PSNR_CAP_DB and m["ssim_y"] == pytest.approx(1.0, abs=1e-12)
    json.dumps(m, allow_nan=False)
    near = img.astype(np.float64) + 0.3  # rounds back to the same levels: quantization comes first
    assert psnr_y(near, img) == PSNR_CAP_DB


def test_quantization_clamps_and_rounds() -> None:
    hr = np.full((12, 12, 3), 255, np.uint8)
    assert psnr_y(np.full((12, 12, 3), 300.0), hr) == PSNR_CAP_DB
    assert psnr_y(np.full((12, 12, 3), 254.6), hr) == PSNR_CAP_DB
    assert psnr_y(np.full((12, 12, 3), 254.4), hr) < PSNR_CAP_DB


def test_single_channel_reference_per_protocol() -> None:
    gray = _rand((20, 20))
    sr = np.repeat((gray.astype(np.int16) + 5).clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    # ipt: the gray reference is replicated to RGB (official set_channel), so it scores like its RGB copy
    assert psnr_y(sr, gray, protocol="ipt") == pytest.approx(psnr_y(sr, rgb, protocol="ipt"), abs=1e-12)
    # matlab: scored on its own values; the identical-channel output reduces to the same gray values
    mse = float(np.mean((sr[..., 0].astype(np.float64) - gray) ** 2))
    assert psnr_y(sr, gray, protocol="matlab") == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)
    assert psnr_y(sr[..., 0], gray, protocol="matlab") == pytest.approx(psnr_y(sr, gray, protocol="matlab"), abs=1e-12)


def test_errors_are_clear() -> None:
    a = _rand((16, 16, 3))
    with pytest.raises(ValueError, match="unknown protocol"):
        psnr_y(a, a, protocol="bt709")
    with pytest.raises(ValueError, match="differ in size"):
        psnr_y(a[:15], a)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        psnr_y(np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 4), np.uint8))
    assert set(PROTOCOLS) == {"ipt", "matlab"}


# ------------------------------------------------------------------------------------------------ SSIM


def _ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """ssim_index.m written out with scipy: 2-D Gaussian window, 'valid' part of the correlation."""
    x = np.arange(11) - 5.0
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 1.5**2))
    w = g / g.sum()

    def f(z: np.ndarray) -> np.ndarray:
        return correlate(z, w, mode="constant")[5:-5, 5:-5]

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ma, mb = f(a), f(b)
    va, vb, cov = f(a * a) - ma**2, f(b * b) - mb**2, f(a * b) - ma * mb
    return float(np.mean((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))))


def test_ssim_matches_a_scipy_reference_on_random_images() -> None:
    hr = _rand((40, 37, 3), 3)
    sr = np.clip(hr.astype(np.int16) + np.random.default_rng(4).integers(-20, 21, hr.shape), 0, 255).astype(np.uint8)
    for protocol in ("ipt", "matlab"):
        ys, yh = to_y(sr, protocol).numpy(), to_y(hr, protocol).numpy()
        ref = _ssim_reference(ys[2:-2, 2:-2], yh[2:-2, 2:-2])
        assert ssim_y(sr, hr, crop_border=2, protocol=protocol) == pytest.approx(ref, abs=1e-10)
        assert 0 < ref < 0.99


def test_ssim_identical_is_one_and_small_images_raise() -> None:
    y = torch.from_numpy(_rand((16, 20))).double()
    assert float(ssim_map(y, y).mean()) == pytest.approx(1.0, abs=1e-12)
    assert ssim_map(y, y).shape == (6, 10)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim_map(y[:10], y[:10])


def test_metrics_module_is_pure() -> None:
    tree = ast.parse((ROOT / "ipt" / "metrics.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    names.discard("ipt.inference")  # the one quantizer, itself pure (tests/test_layering.py)
    assert {n.split(".")[0] for n in names} <= {"__future__", "math", "numpy", "torch"}


# ------------------------------------------------------------------------------------------------ published rows

# All-RGB sets (Set5, B100) score the same under both protocols (checked here on Set5; B100 only under matlab to keep
# the run short). Set14 holds a grayscale image (bridge.png) that only the matlab protocol scores as the literature
# does (ipt replicates it to RGB, as the official code: +0.09 dB on the set mean).
PROTOCOLS_FOR = {"Set5": ("ipt", "matlab"), "Set14": ("matlab",), "B100": ("matlab",), "Urban100": ("matlab",)}


def _slow_if(name: str) -> list:
    return [pytest.mark.slow] if name in ("B100", "Urban100") else []


@pytest.mark.parametrize(
    "name, scale",
    [pytest.param(n, s, marks=_slow_if(n), id=f"{n}-x{s}") for n, s in PUBLISHED_BICUBIC],
)
def test_bicubic_baseline_reproduces_published_rows(benchmark_root, name: str, scale: int) -> None:
    require_benchmark(name, benchmark_root)
    data = load_benchmark(benchmark_root, name, f"sr_x{scale}")
    cache: dict[int, np.ndarray] = {}
    up = bicubic_fn(scale)

    def restore(lq: np.ndarray) -> np.ndarray:
        return cache.setdefault(id(lq), up(lq))

    psnr_pub, ssim_pub = PUBLISHED_BICUBIC[(name, scale)]
    for protocol in PROTOCOLS_FOR[name]:
        r = evaluate(restore, data, scale=scale, protocol=protocol)
        assert r["psnr_y"] == pytest.approx(psnr_pub, abs=0.02), protocol
        assert r["ssim_y"] == pytest.approx(ssim_pub, abs=0.001), protocol


@pytest.mark.slow
def test_rain100l_input_reproduces_the_published_input_row(benchmark_root) -> None:
    """IPT paper Table 3 'Input' column, 26.90 / 0.8384 (recalled in IPT_REFERENCE 6.3): the rainy images as output."""
    require_benchmark("Rain100L", benchmark_root)
    data = load_benchmark(benchmark_root, "Rain100L", "derain")
    r = evaluate(lambda lq: lq, data, scale=1, protocol="ipt")
    assert r["images"] == 100
    assert r["psnr_y"] == pytest.approx(26.90, abs=0.01) and r["ssim_y"] == pytest.approx(0.8384, abs=0.0002)


def test_the_defaults_are_no_crop_under_the_ipt_protocol() -> None:
    sr, hr = _rand((24, 26, 3), seed=8), _rand((24, 26, 3), seed=9)
    hr[:2] = sr[:2]  # the border differs from the middle, so a crop shows
    for fn in (psnr_y, ssim_y):
        assert fn(sr, hr) == fn(sr, hr, crop_border=0, protocol="ipt")
        assert fn(sr, hr) != fn(sr, hr, crop_border=1) and fn(sr, hr) != fn(sr, hr, protocol="matlab")
    assert psnr_rgb(sr, hr) == psnr_rgb(sr, hr, crop_border=0) != psnr_rgb(sr, hr, crop_border=1)
    assert score(sr, hr, crop_border=0) == score(sr, hr, crop_border=0, protocol="ipt")
    assert to_y(sr).equal(to_y(sr, "ipt")) and not to_y(sr).equal(to_y(sr, "matlab"))


def test_psnr_from_mse_refuses_what_is_no_mse_and_score_crops_rgb_too() -> None:
    from ipt.metrics import psnr_from_mse

    for bad in (-1.0, float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match=rf"^mse must be finite and >= 0, got {bad}$"):
            psnr_from_mse(bad)
    assert psnr_from_mse(0.0) == PSNR_CAP_DB and psnr_from_mse(255.0**2) == 0.0
    sr, hr = _rand((20, 22, 3), seed=10), _rand((20, 22, 3), seed=11)
    hr[:3] = sr[:3]
    assert score(sr, hr, crop_border=3)["psnr_rgb"] == psnr_rgb(sr, hr, crop_border=3) != psnr_rgb(sr, hr)


def test_ssim_map_works_in_float64_from_an_11x11_window_up() -> None:
    g = torch.Generator().manual_seed(12)
    a, b = torch.rand(11, 11, generator=g) * 255, torch.rand(11, 11, generator=g) * 255
    assert ssim_map(a, b).shape == (1, 1)  # one window fits exactly
    a32, b32 = torch.rand(16, 20, generator=g) * 255, torch.rand(16, 20, generator=g) * 255
    got = ssim_map(a32, b32)
    assert got.dtype == torch.float64 and torch.equal(got, ssim_map(a32.double(), b32.double()))
    with pytest.raises(ValueError, match=r"^SSIM needs images of at least 11x11, got \(10, 20\)$"):
        ssim_map(a32[:10], b32[:10])


def test_crop_bounds_and_size_mismatch_messages() -> None:
    for h, w, ok in ((5, 20, True), (20, 5, True), (4, 20, False), (20, 4, False), (3, 3, False)):
        a = _rand((h, w, 3), seed=13)
        if ok:
            assert psnr_y(a, a, crop_border=2) == PSNR_CAP_DB and psnr_rgb(a, a, crop_border=2) == PSNR_CAP_DB
        else:
            with pytest.raises(ValueError, match=rf"^image {h}x{w} is too small for crop_border=2$"):
                psnr_y(a, a, crop_border=2)
    a = _rand((6, 6, 3), seed=14)
    with pytest.raises(ValueError, match=r"^crop_border must be >= 0, got -1$"):
        psnr_y(a, a, crop_border=-1)
    with pytest.raises(ValueError, match=r"^images differ in size: \(20, 22\) vs \(20, 24\)$"):
        psnr_rgb(_rand((20, 22, 3)), _rand((20, 24, 3)))
    with pytest.raises(ValueError, match=r"^images differ in size: \(20, 22\) vs \(20, 24\)$"):
        psnr_y(_rand((20, 22, 3)), _rand((20, 24, 3)))


def test_layouts_and_a_single_channel_image_keep_its_exact_values() -> None:
    from ipt.metrics import as_chw

    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for img in (
        gray,
        gray[..., None],
        torch.from_numpy(gray),
        torch.from_numpy(gray)[None],
        torch.from_numpy(gray)[None, None],
    ):
        assert as_chw(img).shape == (1, 16, 16) and as_chw(img).dtype == torch.float64
        assert torch.equal(to_y(img, "matlab"), torch.from_numpy(gray).double())  # its own values, bit for bit
    with pytest.raises(ValueError, match=r"^expected an image with 1 or 3 channels, got shape \(1, 2, 3, 4\)$"):
        as_chw(np.zeros((1, 2, 3, 4), np.uint8))
    with pytest.raises(TypeError, match=r"^expected a numpy array or a torch tensor, got list$"):
        as_chw([[1, 2]])
