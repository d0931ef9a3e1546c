"""Small real source folders for the data-stage tests: scikit-image's bundled photos plus deliberately bad files."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from ipt.data.sources import resolve_source

SKIMAGE = Path(resolve_source("skimage"))
# Real photographs from the scikit-image wheel, all at least 192 px on each side.
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png"]


def photo_folder(root: Path, names: list[str] = PHOTOS, as_jpeg: bool = True) -> Path:
    """An ImageNet-like ``train/<wnid>/<name>.JPEG`` tree (two classes) of real photos."""
    for i, name in enumerate(names):
        img = Image.open(SKIMAGE / name)
        cls = root / ("n0000000" + str(i % 2))
        cls.mkdir(parents=True, exist_ok=True)
        if as_jpeg:
            img.convert("RGB" if img.mode not in ("L", "RGB") else img.mode).save(
                cls / (Path(name).stem + ".JPEG"), quality=90
            )
        else:
            shutil.copy(SKIMAGE / name, cls / name)
    return root


def bad_files(root: Path) -> dict[str, str]:
    """Write unusual and broken files into ``root``; returns {relpath: expected outcome ('ok' or a reason part)}."""
    root.mkdir(parents=True, exist_ok=True)
    photo = np.asarray(Image.open(SKIMAGE / "chelsea.png").convert("RGB"))[:256, :256]
    expect: dict[str, str] = {}
    Image.fromarray(photo).convert("CMYK").save(root / "cmyk.jpg", quality=90)
    expect["cmyk.jpg"] = "ok"
    Image.fromarray(photo).convert("L").save(root / "gray.png")
    expect["gray.png"] = "ok"
    Image.fromarray(photo).convert("P").save(root / "palette.png")
    expect["palette.png"] = "ok"
    rgba = np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba).save(root / "rgba.png")
    expect["rgba.png"] = "ok"
    Image.fromarray(photo[..., 0].astype(np.uint16) * 257).save(root / "sixteen.png")
    expect["sixteen.png"] = "ok"
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    expect["truncated.jpg"] = "truncated"
    (root / "notanimage.jpg").write_text("this is not a JPEG\n")
    expect["notanimage.jpg"] = "cannot decode"
    (root / "empty.png").write_bytes(b"")
    expect["empty.png"] = "cannot decode"
    Image.fromarray(photo[:60, :300]).save(root / "small.png")
    expect["small.png"] = "too small"
    (root / "readme.txt").write_text("not listed: not an image suffix\n")
    return expect


def imagenet_tarball(folder: Path, dest: Path) -> Path:
    """An ILSVRC2012-style tar of per-class tars made from ``folder``'s ``<wnid>/<file>`` tree."""
    with tarfile.open(dest, "w") as outer:
        for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for f in sorted(cls.iterdir()):
                    inner.add(f, arcname=f.name)
            info = tarfile.TarInfo(cls.name + ".tar")
            info.size = len(buf.getvalue())
            outer.addfile(info, io.BytesIO(buf.getvalue()))
    return dest


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), DVC's .gitignore files excluded."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".gitignore"
    }
