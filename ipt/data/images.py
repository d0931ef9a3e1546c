"""Reading and writing images as uint8 RGB arrays, with explicit conversions and one-line errors."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ipt.errors import IPTError
from ipt.fileio import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(IPTError):
    """An input image cannot be used; the message names the file."""


def _to_rgb8(img: Image.Image) -> tuple[np.ndarray, list[str]]:
    notes: list[str] = []
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.floor(np.clip(a, 0, peak) * (255.0 / peak) + 0.5).astype(np.uint8)
        if peak > 255:
            notes.append(f"16-bit {mode} scaled to 8 bits")
        notes.append("grayscale replicated to RGB")
        return np.repeat(a[..., None], 3, axis=2), notes
    if mode == "F":
        raise ImageReadError("floating-point images are not supported; convert to 8- or 16-bit PNG")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        notes.append(f"{mode} alpha channel dropped")
    if mode in ("L", "LA", "1"):
        notes.append("grayscale replicated to RGB")
    elif mode == "CMYK":
        notes.append("CMYK converted to RGB")
    rgb = img.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8).copy(), notes


def _sixteen_bit_colour(img: Image.Image) -> bool:
    """A 16-bit-per-channel colour file, which Pillow decodes to 8 bits by keeping each sample's high byte."""
    raw = img.tile[0].args if img.tile else None  # the decoder's raw mode, e.g. 'RGB;16B' (known before load())
    return img.mode in ("RGB", "RGBA") and ";16" in str(raw)


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Decode ``path`` fully into an (H, W, 3) uint8 array; also return notes on the conversions made.

    An EXIF orientation (phones' JPEGs) is applied, so the array is the picture as viewers show it.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"{p}: no such file")
    return _decode(p, str(p))


def decode_image(data: bytes, name: str = "<image>") -> tuple[np.ndarray, list[str]]:
    """:func:`read_image` of an image file's bytes (``name`` in messages): what serving reads from a request."""
    return _decode(io.BytesIO(data), name)


def _decode(source, name: str) -> tuple[np.ndarray, list[str]]:
    try:
        with Image.open(source) as img:
            sixteen = _sixteen_bit_colour(img)
            img.load()  # force full decode: truncated files fail here, not later
            orientation = img.getexif().get(0x0112, 1)
            upright = ImageOps.exif_transpose(img) if orientation not in (1, None) else img
            arr, notes = _to_rgb8(upright)
    except ImageReadError as e:
        raise ImageReadError(f"{name}: {e}") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{name}: refused, too many pixels ({e})") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: cannot decode image (not a recognised image format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{name}: cannot decode image ({e})") from None
    if sixteen:
        notes.insert(0, "16-bit colour read at 8 bits (each sample's high byte: at most 1 level below rounding)")
    if orientation not in (1, None):
        notes.append(f"EXIF orientation {orientation} applied")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(f"{name}: empty image")
    return arr, notes


def png_bytes(arr: np.ndarray) -> bytes:
    """The PNG ``ipt restore`` writes for an (H, W, 3) or (H, W) uint8 array (serving returns the same bytes)."""
    if arr.dtype != np.uint8:
        raise TypeError(f"png_bytes needs uint8, got {arr.dtype}")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_png(path: str | os.PathLike, arr: np.ndarray) -> Path:
    """Write an (H, W, 3) or (H, W) uint8 array as PNG atomically (temp file, then rename)."""
    data = png_bytes(arr)
    return atomic_write(Path(path), lambda f: f.write(data), fsync=False)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive), by extension, in sorted relative-path order."""
    root = Path(folder)
    return sorted(
        (
            p
            for p in root.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        ),
        key=lambda p: p.relative_to(root).as_posix(),
    )


def synthetic_image(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    """A deterministic test card (gradients, edges, discs and fine stripes) for demos without any data."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 5.0) * np.cos(y / 7.0)], axis=-1) * 200 + 20
    for _ in range(6):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(5, height / 4)
        img[(y - cy) ** 2 + (x - cx) ** 2 < r**2] = rng.uniform(0, 255, size=3)
    img[:, (np.arange(width) // 2) % 2 == 0] *= 0.85
    return np.clip(np.floor(img + 0.5), 0, 255).astype(np.uint8)
