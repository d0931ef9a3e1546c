"""Per-sample random generators derived from (seed, task, key) with hashlib.

Python's built-in ``hash()`` of a string is salted per process (PYTHONHASHSEED), so it is never used: the same
(seed, task, key) must give the same bytes on every machine and in every process.
"""

from __future__ import annotations

import hashlib
import json

import torch

__all__ = ["sample_generator", "seed_from"]


def seed_from(seed: int, task: str, key: str) -> int:
    """A 63-bit non-negative seed: the first 8 bytes of sha256 over a JSON encoding of (seed, task, key)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    payload = json.dumps([seed, str(task), str(key)], ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "big") >> 1


def sample_generator(seed: int, task: str, key: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with :func:`seed_from` (seed, task, key)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed_from(seed, task, key))
    return gen
