"""Device and precision choice from the hardware (never assumed)."""

from __future__ import annotations

import contextlib
import platform
from functools import lru_cache
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_fast_bf16() -> bool:
    """True where bf16 matmuls are native on this CPU (AMX or AVX512-BF16); AVX2-only CPUs emulate them slowly."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is available")
    return dev


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA with bf16 support or on a CPU with native bf16; fp32 otherwise (the exact path)."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; known: {list(PRECISIONS)}")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` intra-op threads (``None``: unchanged), then put the caller's count back.

    torch.set_num_threads is process-wide: a job or a CLI entry point run in-process (a serial executor, a test,
    a flow) must not leave the rest of that process on its own count."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def describe() -> dict[str, str]:
    """Hardware facts recorded with every benchmark."""
    return {
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "fast_bf16": str(cpu_has_fast_bf16()),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
