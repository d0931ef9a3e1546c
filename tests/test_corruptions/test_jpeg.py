"""``jpeg``: quality validation, determinism, Pillow equivalence, and stronger compression -> lower PSNR."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from corruptions import apply, get, sample_generator
from corruptions.jpeg import MAX_QUALITY, MIN_QUALITY, jpeg, jpeg_roundtrip_uint8


def _textured(h: int = 64, w: int = 72, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus fine texture and an edge: JPEG has something to lose at every quality."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([128 + 90 * np.sin(x / (5 + 3 * c) + c) * np.cos(y / 7) for c in range(3)], -1)
    img += rng.normal(0, 12, img.shape)
    img[:, w // 2 :] += 40
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("quality", [0, -3, MAX_QUALITY + 1, 100, 10.5, True, "10", None])
def test_quality_outside_1_to_95_is_a_clear_error(quality) -> None:
    x = _tensor(_textured(16, 16))
    with pytest.raises(ValueError, match=rf"jpeg quality must be .*{MIN_QUALITY}\.\.{MAX_QUALITY}"):
        apply("jpeg", x, generator=torch.Generator(), quality=quality)


def test_quality_bounds_and_numpy_ints_are_accepted() -> None:
    x = _tensor(_textured(16, 16))
    for q in (MIN_QUALITY, MAX_QUALITY, np.int64(10)):
        assert apply("jpeg", x, generator=torch.Generator(), quality=q).shape == x.shape
    with pytest.raises(TypeError, match=r"missing \['quality'\]"):
        apply("jpeg", x, generator=torch.Generator())


def test_registered_deterministic_and_independent_of_the_generator() -> None:
    assert get("jpeg").deterministic
    x = _tensor(_textured())
    a = jpeg(x, generator=sample_generator(1, "jpeg_q10", "a"), quality=10)
    b = jpeg(x, generator=sample_generator(2, "jpeg_q10", "b"), quality=10)
    assert torch.equal(a, b)
    assert not torch.equal(a, x)  # it does change the image


def test_equals_a_direct_pillow_roundtrip_with_420_subsampling() -> None:
    img = _textured()
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=10, subsampling=2)  # 4:2:0, baseline, not optimised
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    out = jpeg(_tensor(img), generator=torch.Generator(), quality=10)
    levels = out[0].permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
    assert np.array_equal(levels, expected)
    assert torch.equal(out * 255, (out * 255).round())  # on k/255 levels
    assert np.array_equal(jpeg_roundtrip_uint8(img, 10), expected)


def test_grayscale_channel_and_bad_channel_count() -> None:
    img = _textured()[..., 1]
    x = torch.from_numpy(img)[None, None].float() / 255.0
    out = jpeg(x, generator=torch.Generator(), quality=20)
    assert out.shape == x.shape
    assert np.array_equal((out[0, 0] * 255).round().to(torch.uint8).numpy(), jpeg_roundtrip_uint8(img, 20))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        jpeg(torch.zeros(1, 2, 8, 8), generator=torch.Generator(), quality=20)


def test_stronger_compression_gives_lower_psnr() -> None:
    img = _textured(96, 96)
    psnrs = [_psnr(jpeg_roundtrip_uint8(img, q), img) for q in (5, 10, 30, 75, 95)]
    assert all(a < b for a, b in zip(psnrs, psnrs[1:], strict=False)), psnrs
    assert psnrs[-1] - psnrs[0] > 5, psnrs
