"""Tiny pair-shard folders for training tests, in the documented format (docs/data_format.md), via TarWriter."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

import corruptions
from corruptions import quantize_uint8
from ipt.fileio import file_sha256
from ipt.tasks import corruption_scale

# Corruption of each test task, as params.yaml's corrupt.tasks declares them.
TASK_CORRUPTIONS: dict[str, tuple[str, dict]] = {
    "sr_x2": ("bicubic_down", {"scale": 2}),
    "sr_x3": ("bicubic_down", {"scale": 3}),
    "sr_x4": ("bicubic_down", {"scale": 4}),
    "denoise_s30": ("gaussian_noise", {"sigma": 30}),
    "denoise_s50": ("gaussian_noise", {"sigma": 50}),
    "derain": ("rain_streaks", {"density": 0.0027, "length": [15, 35], "angle": [-20, 20], "intensity": [0.3, 0.6]}),
}


def structured_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """An (size, size, 3) uint8 image with gradients, a bright disc and a stripe band: learnable structure."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, np.pi)
    base = 0.5 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * (x * np.cos(angle) + y * np.sin(angle)))
    cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
    disc = ((y - cy) ** 2 + (x - cx) ** 2 < r**2).astype(np.float32)
    color = rng.uniform(0.2, 1.0, 3)
    img = base[..., None] * color * 0.7 + disc[..., None] * (1 - color) * 0.5
    img += rng.normal(0, 0.02, img.shape)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


def make_pair_shards(
    root: Path, task: str, *, samples: int = 8, shards: int = 2, patch: int = 12, seed: int = 0
) -> Path:
    """Write ``root/task/shard-00000k.tar`` + ``manifest.json``; returns the task folder."""
    name, params = TASK_CORRUPTIONS[task]
    scale = corruption_scale(name, params)  # as ipt.tasks.TaskSpec: from the corruption, never the name
    folder = Path(root) / task
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, sum(map(ord, task))])
    per = -(-samples // shards)
    listed = []
    for k in range(shards):
        shard = f"shard-{k:06d}.tar"
        count = 0
        with wds.TarWriter(str(folder / shard), mtime=0) as sink:
            for i in range(k * per, min(samples, (k + 1) * per)):
                hr = structured_image(rng, patch * scale)
                key = f"img{i:04d}-c00"
                gen = corruptions.sample_generator(seed, task, key)
                x = torch.from_numpy(hr).permute(2, 0, 1)[None].float() / 255.0
                lq = quantize_uint8(corruptions.apply(name, x, generator=gen, **params))[0].permute(1, 2, 0).numpy()
                meta = {"task": task, "corruption": name, "params": params, "scale": scale, "seed": seed, "source": key}
                sink.write({"__key__": key, "hr.png": _png(hr), "lq.png": _png(lq), "meta.json": json.dumps(meta)})
                count += 1
        listed.append({"name": shard, "samples": count, "sha256": file_sha256(folder / shard)})
    manifest = {
        "format": "ipt-pairs-v1",
        "samples": samples,
        "shards": listed,
        "skipped": [],
        "params": {"task": task, "patch_size": patch, "scale": scale},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


def make_pair_root(root: Path, tasks=("sr_x2", "denoise_s30"), **kw) -> Path:
    for t in tasks:
        make_pair_shards(root, t, **kw)
    return Path(root)


TINY_MODEL = {"n_feats": 8, "num_layers": 1, "num_heads": 2, "patch_size": 12}


def tiny_pretrain(shards: Path, out: Path, **overrides):
    """A PretrainConfig small enough for a CPU test: tiny model, batch 4, two tasks, short shuffle buffers."""
    from ipt.train.config import PretrainConfig

    base = dict(
        shards=str(shards),
        out=str(out),
        tasks=("sr_x2", "denoise_s30"),
        model=dict(TINY_MODEL),
        steps=6,
        batch_size=4,
        checkpoint_every=3,
        shuffle_buffer=8,
        stream_segment=4,
    )
    return PretrainConfig(**(base | overrides))
