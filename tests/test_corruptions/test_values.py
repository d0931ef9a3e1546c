"""Every built-in corruption's output values against an independent reference written here (its formula, or a second
implementation), not only its shape and range: bicubic_down, blur_down, gaussian_noise, jpeg, rain_streaks."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import correlate

from corruptions import REGISTRY, apply
from corruptions.rain_streaks import streak_kernel

B, C, H, W = 2, 3, 23, 30  # two items, odd sizes (a mix-up of items, channels or axes shows)


def _levels(seed: int = 0, shape: tuple[int, ...] = (B, C, H, W)) -> np.ndarray:
    """Smooth-ish random uint8 levels (a gradient plus noise, so the blur and the resize have work to do)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 180, shape[-1])[None, :] + np.linspace(0, 60, shape[-2])[:, None]
    return np.clip(ramp + rng.integers(0, 76, shape), 0, 255).astype(np.uint8)


def _as_input(levels: np.ndarray) -> torch.Tensor:
    """Float input on k/255 levels plus a sub-level offset, which the corruption's own quantization must undo."""
    return torch.from_numpy(levels.astype(np.float32) / 255.0 + 0.3 / 255.0)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.clip(np.where(x >= 0, np.floor(x + 0.5), -np.floor(-x + 0.5)), 0, 255).astype(np.uint8)


def _cubic(t: float) -> float:
    t = abs(t)
    if t <= 1:
        return 1.5 * t**3 - 2.5 * t**2 + 1
    return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2 if t <= 2 else 0.0


def _matlab_down_matrix(n_in: int, s: int) -> np.ndarray:
    """(ceil(n_in / s), n_in) float64 matrix of MATLAB's antialiased bicubic 1/s: kernel stretched by s, mirror
    borders, rows normalised to sum 1 (written from the formula, one output pixel at a time)."""
    n_out = -(-n_in // s)
    mat = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * s - 0.5  # 0-based source coordinate of output pixel i
        for j in range(math.floor(center - 2 * s) - 1, math.ceil(center + 2 * s) + 2):
            k = j % (2 * n_in)
            mat[i, k if k < n_in else 2 * n_in - 1 - k] += _cubic((center - j) / s) / s
    return mat / mat.sum(axis=1, keepdims=True)


def _matlab_down_uint8(img: np.ndarray, s: int) -> np.ndarray:
    """(H, W) uint8 -> MATLAB imresize(img, 1/s, 'bicubic'): rows (height) first, rounded to uint8 after each pass."""
    rows = _round_half_away(_matlab_down_matrix(img.shape[0], s) @ img.astype(np.float64))
    return _round_half_away(rows.astype(np.float64) @ _matlab_down_matrix(img.shape[1], s).T)


def _per_plane(levels: np.ndarray, fn) -> np.ndarray:
    return np.stack([np.stack([fn(levels[b, c]) for c in range(levels.shape[1])]) for b in range(levels.shape[0])])


@pytest.mark.parametrize("s", [2, 3, 4])
def test_bicubic_down_is_matlab_bicubic_of_each_plane(s: int) -> None:
    levels = _levels(s)
    out = apply("bicubic_down", _as_input(levels), generator=torch.Generator(), scale=s)
    want = _per_plane(levels, lambda p: _matlab_down_uint8(p, s))
    assert out.shape == want.shape == (B, C, -(-H // s), -(-W // s))
    assert torch.equal(out * 255, torch.from_numpy(want).float()), "differs from MATLAB bicubic per plane"


def _fspecial_blur_uint8(img: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """MATLAB imfilter(img, fspecial('gaussian', size, sigma), 'replicate') on uint8: the 2-D kernel (not separated),
    scipy's correlation with nearest (replicate) borders, rounded half away."""
    r = np.arange(size) - (size - 1) / 2
    k2 = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return _round_half_away(correlate(img.astype(np.float64), k2 / k2.sum(), mode="nearest"))


@pytest.mark.parametrize(("s", "sigma", "size"), [(3, 1.6, 7), (2, 1.0, 5), (2, 2.5, 9)])
def test_blur_down_is_a_2d_gaussian_blur_then_matlab_bicubic(s: int, sigma: float, size: int) -> None:
    levels = _levels(10 + s)
    out = apply("blur_down", _as_input(levels), generator=torch.Generator(), scale=s, sigma=sigma, size=size)
    want = _per_plane(levels, lambda p: _matlab_down_uint8(_fspecial_blur_uint8(p, size, sigma), s))
    assert out.shape == want.shape
    got = (out * 255).round().to(torch.uint8).numpy()
    # the separable float64 sum and the 2-D correlation round differently only at exact .5 ties (none here)
    assert np.array_equal(got, want), f"{np.count_nonzero(got != want)} levels differ"
    unblurred = _per_plane(levels, lambda p: _matlab_down_uint8(p, s))
    assert np.count_nonzero(got != unblurred) > got.size // 4  # the blur did happen


@pytest.mark.parametrize("sigma", [0.0, 30.0, 50.0])
def test_gaussian_noise_is_x_plus_sigma_over_255_normal_draws_clipped(sigma: float) -> None:
    x = torch.rand(B, C, H, W, generator=torch.Generator().manual_seed(1))
    out = apply("gaussian_noise", x, generator=torch.Generator().manual_seed(7), sigma=sigma)
    g = torch.Generator().manual_seed(7)
    draws = torch.stack([torch.randn(C, H, W, generator=g) for _ in range(B)])  # item 0 first, then item 1
    assert torch.equal(out, (x + draws * (sigma / 255.0)).clamp(0, 1))


def test_gaussian_noise_has_the_asked_std_on_the_255_scale() -> None:
    """The statistics, independent of how the draws are made: mean 0, std sigma (on 0..255), unclipped at mid-gray."""
    x = torch.full((4, 3, 64, 64), 0.5)
    out = apply("gaussian_noise", x, generator=torch.Generator().manual_seed(3), sigma=25)
    noise = (out - x) * 255
    assert abs(noise.mean().item()) < 0.5 and noise.std().item() == pytest.approx(25, rel=0.02)
    per_item = noise.flatten(1).std(dim=1)
    assert torch.allclose(per_item, torch.full((4,), 25.0), rtol=0.04)  # every item noised, not only the first
    assert not torch.equal(noise[0], noise[1])


@pytest.mark.parametrize("c", [1, 3])
def test_jpeg_is_a_pillow_roundtrip_of_each_item(c: int) -> None:
    levels = _levels(5, (B, c, H, W))
    out = apply("jpeg", _as_input(levels), generator=torch.Generator(), quality=20)
    for b in range(B):
        img = levels[b, 0] if c == 1 else levels[b].transpose(1, 2, 0)
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img)).save(buf, format="JPEG", quality=20, subsampling=2)
        want = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L" if c == 1 else "RGB"))
        want = want[None] if c == 1 else want.transpose(2, 0, 1)
        assert torch.equal(out[b] * 255, torch.from_numpy(want.astype(np.float32))), f"item {b}"


def _streak_kernel_reference(length: float, angle: float, width: float) -> np.ndarray:
    """The documented streak: a line ``length`` long at ``angle`` degrees from vertical, with a sqrt(1 - (2a/L)^2)
    taper along it and a Gaussian of std ``width`` across, peak 1; radius ceil(L/2 + 2 width). Pixel by pixel."""
    radius = math.ceil(length / 2 + 2 * width)
    t = math.radians(angle)
    k = np.zeros((2 * radius + 1, 2 * radius + 1))
    for i in range(-radius, radius + 1):
        for j in range(-radius, radius + 1):
            along, across = i * math.cos(t) + j * math.sin(t), j * math.cos(t) - i * math.sin(t)
            k[i + radius, j + radius] = math.sqrt(max(0.0, 1 - (2 * along / length) ** 2)) * math.exp(
                -0.5 * (across / width) ** 2
            )
    return k / k.max()


@pytest.mark.parametrize(
    ("length", "angle", "width"), [(15.0, 0.0, 0.6), (27.3, -17.0, 0.6), (20.0, 30.0, 1.2), (1.5, 30.0, 0.6)]
)
def test_streak_kernel_is_the_documented_line(length: float, angle: float, width: float) -> None:
    got = streak_kernel(length, angle, width, dtype=torch.float64, device=torch.device("cpu")).numpy()
    want = _streak_kernel_reference(length, angle, width)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    if length < 10:
        return  # too few pixels for a slope
    r = got.shape[0] // 2
    ys, xs = np.nonzero(got > 0.5)  # the bright core lies along the line: x = y tan(angle) (y pointing down)
    slope = np.polyfit(ys - r, xs - r, 1)[0]
    assert slope == pytest.approx(math.tan(math.radians(angle)), abs=0.05)


def _rain_reference(x: torch.Tensor, seed: int, p: dict) -> torch.Tensor:
    """rain_streaks with the same generator: per item, draws angle, length, peak (float64 uniforms, in that order)
    and a (H+2r, W+2r) canvas; every canvas pixel u < density stamps the kernel scaled by u / density (a scatter,
    where the code gathers with a convolution); the layer times peak is added and clipped."""
    g = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))

    b, _, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(b):
        angle, length, peak = uniform(*p["angle"]), uniform(*p["length"]), uniform(*p["intensity"])
        kernel = torch.from_numpy(_streak_kernel_reference(length, angle, p["width"])).float()
        r = kernel.shape[0] // 2
        u = torch.rand((h + 2 * r, w + 2 * r), generator=g, dtype=x.dtype)
        big = torch.zeros(h + 4 * r, w + 4 * r, dtype=torch.float64)
        for cy, cx in (u < p["density"]).nonzero().tolist():
            big[cy : cy + 2 * r + 1, cx : cx + 2 * r + 1] += kernel.double() * float(u[cy, cx] / p["density"])
        layer = big[2 * r : 2 * r + h, 2 * r : 2 * r + w].float()  # the canvas' valid window, as the convolution
        out[i] = (x[i] + layer * peak).clamp(0, 1)
    return out


@pytest.mark.parametrize(
    "params",
    [
        {"density": 0.02, "length": [9, 15], "angle": [-20, 20], "intensity": [0.3, 0.6], "width": 0.6},
        {"density": 0.01, "length": [20, 20], "angle": [10, 10], "intensity": [0.5, 0.5], "width": 1.0},
    ],
)
def test_rain_streaks_is_each_items_own_stamped_streak_layer_added_and_clipped(params: dict) -> None:
    x = torch.rand(B, C, 33, 41, generator=torch.Generator().manual_seed(2)) * 0.6
    out = apply("rain_streaks", x, generator=torch.Generator().manual_seed(11), **params)
    want = _rain_reference(x, 11, params)
    torch.testing.assert_close(out, want, rtol=0, atol=2e-6)
    added = out - x
    assert (added >= -1e-7).all() and (added > 0.05).float().mean() > 0.02  # rain added, on enough of each item
    assert all((added[i] > 0.05).any() for i in range(B))
    unclipped = (out < 1).all(dim=1)  # one gray layer for all channels, where no channel clipped
    assert unclipped.float().mean() > 0.5
    assert torch.allclose(added[:, 0][unclipped], added[:, 1][unclipped], atol=1e-6)
    assert torch.allclose(added[:, 0][unclipped], added[:, 2][unclipped], atol=1e-6)
    assert not torch.allclose(added[0], added[1])  # each item its own layer


def test_every_registered_corruption_has_a_value_test_here() -> None:
    tested = {"bicubic_down", "blur_down", "gaussian_noise", "jpeg", "rain_streaks"}
    assert set(REGISTRY.known()) == tested  # a new corruption needs its reference test here
