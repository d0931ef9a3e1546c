"""Per-sample random generators derived from (seed, task, key) with hashlib, never the salted built-in ``hash()``.

Design notes: docs/corruptions.md#the-contract.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

__all__ = ["numpy_generator", "sample_generator", "seed_from", "seed_of"]


def _digest(parts: tuple) -> bytes:
    return hashlib.sha256(json.dumps(list(parts), ensure_ascii=True, separators=(",", ":")).encode("ascii")).digest()


def seed_of(*parts) -> int:
    """A 63-bit non-negative seed: the first 8 bytes of sha256 over a JSON encoding of ``parts`` (the project's one
    seeder: corruption noise, crops, data streams, model init)."""
    return int.from_bytes(_digest(parts)[:8], "big") >> 1


def numpy_generator(*parts) -> np.random.Generator:
    """A numpy PCG64 generator seeded with the first 16 bytes of the same sha256 (the data stages' crop positions)."""
    return np.random.Generator(np.random.PCG64(int.from_bytes(_digest(parts)[:16], "big")))


def seed_from(seed: int, task: str, key: str) -> int:
    """:func:`seed_of` of (seed, task, key), the seed of one sample's corruption."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return seed_of(seed, str(task), str(key))


def sample_generator(seed: int, task: str, key: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with :func:`seed_from` (seed, task, key)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed_from(seed, task, key))
    return gen
