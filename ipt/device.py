"""Device and precision choice from the hardware (never assumed)."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ipt.errors import IPTError

PRECISIONS = ("auto", "fp32", "bf16", "int8")  # int8: inference on the CPU only (ipt.model.int8)
ENGINES = ("torch", "onnxruntime")  # what runs `ipt restore`'s windows: torch, or an .onnx file (ipt.restore)
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # CPU flags of native bf16 matmuls
INT8_FLAGS = ("amx_int8", "avx512_vnni")  # CPU flags of native int8 dot products (where `auto` picks int8)
# int8 dot products of any width: without one, oneDNN's int8 matmul (torch._int_mm) adds pairs of u8 x s8 products
# in saturating 16-bit sums and is off by thousands on random int8 (tests/test_int8.py), so int8 is refused there
EXACT_INT8_FLAGS = (*INT8_FLAGS, "avx_vnni")


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


# oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA): the names it takes and their bit masks (dnnl_cpu_isa_t), and the lowest
# mask under which each native flag is still usable. Under a cap below a flag's, bf16 or int8 matmuls are emulated
# (slowly) even on a CPU that has the flag, so the precision choice must not count it.
ONEDNN_ISA_ENV = "ONEDNN_MAX_CPU_ISA"
ONEDNN_ISA = {
    "SSE41": 0x1,
    "AVX": 0x3,
    "AVX2": 0x7,
    "AVX2_VNNI": 0xF,
    "AVX2_VNNI_2": 0x1F,
    "AVX512_CORE": 0x27,
    "AVX512_CORE_VNNI": 0x67,
    "AVX512_CORE_BF16": 0xE7,
    "AVX10_1_512": 0x1EF,
    "AVX512_CORE_FP16": 0x1EF,
    "AVX10_1_512_AMX": 0xFEF,
    "AVX512_CORE_AMX": 0xFEF,
    "AVX10_1_512_AMX_FP16": 0x1FEF,
    "AVX512_CORE_AMX_FP16": 0x1FEF,
    "AVX10_2_512": 0x1EF,  # (newer oneDNN; given their AVX10.1 counterparts' masks: only the flags below matter)
    "AVX10_2_512_AMX_2": 0x1FEF,
}
ISA_ENVS = (ONEDNN_ISA_ENV, "DNNL_MAX_CPU_ISA")  # oneDNN reads the first one set
FLAG_NEEDS_ISA = {  # the lowest cap under which each native flag is still usable
    flag: ONEDNN_ISA[isa]
    for flag, isa in (
        ("avx_vnni", "AVX2_VNNI"),
        ("avx512_vnni", "AVX512_CORE_VNNI"),
        ("avx512_bf16", "AVX512_CORE_BF16"),
        ("amx_bf16", "AVX512_CORE_AMX"),
        ("amx_int8", "AVX512_CORE_AMX"),
    )
}


def isa_cap() -> str:
    """The ISA cap oneDNN runs under (``ONEDNN_MAX_CPU_ISA``, else ``DNNL_MAX_CPU_ISA``; upper-cased), or "" where none
    is set (or ``ALL``).

    An unknown name is refused: oneDNN would ignore it, and a run would silently not be what was asked for."""
    env = next((e for e in ISA_ENVS if os.environ.get(e, "").strip()), ONEDNN_ISA_ENV)
    cap = os.environ.get(env, "").strip().upper()
    if cap in ("", "ALL", "DEFAULT"):
        return ""
    if cap not in ONEDNN_ISA:
        raise IPTError(f"{env}={cap}: not an ISA oneDNN knows; known: ALL, {', '.join(ONEDNN_ISA)}")
    return cap


def usable_cpu_flags() -> frozenset[str]:
    """This CPU's flags less the native bf16 / int8 ones that the ISA cap (:func:`isa_cap`) keeps oneDNN from using.

    (``ONEDNN_MAX_CPU_ISA=AVX2`` on an AMX CPU: neither bf16 nor int8 is native any more, so ``auto`` is fp32.)"""
    flags, cap = cpu_flags(), isa_cap()
    if not cap:
        return flags
    mask = ONEDNN_ISA[cap]
    return frozenset(f for f in flags if f not in FLAG_NEEDS_ISA or FLAG_NEEDS_ISA[f] & mask == FLAG_NEEDS_ISA[f])


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_id(cpuinfo: str | None = None) -> str:
    """x86 family-model-stepping of the first CPU in ``cpuinfo`` (default: /proc/cpuinfo), e.g. "25-17-1", or "" where
    they are not given. "AMD EPYC" alone names CPUs whose bf16 matmul peaks differ 1.5x (docs/BENCHMARKS.md)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip() and fields:
            break  # the first processor's block only
        key, _, value = line.partition(":")
        if key.strip() in ("cpu family", "model", "stepping"):
            fields.setdefault(key.strip(), value.strip())
    parts = [fields.get(k, "") for k in ("cpu family", "model", "stepping")]
    return "-".join(parts) if all(parts) else ""


def cpu_has_fast_bf16() -> bool:
    """True where bf16 matmuls are native on this CPU (AMX or AVX512-BF16, not capped off); AVX2-only CPUs emulate
    them slowly."""
    return bool(set(BF16_FLAGS) & usable_cpu_flags())


def cpu_bf16_flags() -> str:
    """This CPU's usable native-bf16 flags (``amx_bf16,avx512_bf16``), or ``none``: recorded with every result."""
    return ",".join(f for f in BF16_FLAGS if f in usable_cpu_flags()) or "none"


def cpu_int8_flags() -> str:
    """This CPU's usable int8 dot-product flags (``amx_int8,avx512_vnni``), or ``none``: recorded with every result."""
    return ",".join(f for f in INT8_FLAGS if f in usable_cpu_flags()) or "none"


def cpu_has_exact_int8() -> bool:
    """True where this CPU has usable int8 dot products (VNNI of any width, or AMX), which torch._int_mm needs to be
    exact (see EXACT_INT8_FLAGS)."""
    return bool(set(EXACT_INT8_FLAGS) & usable_cpu_flags())


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise IPTError(f"unknown device {name!r} ({str(e).splitlines()[0]}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise IPTError(f"--device {name} asked for, but no CUDA device is available")
    return dev


@dataclass(frozen=True)
class Precision:
    """The precision a run uses, what was asked for, and why: ``label`` is what every summary line and report says."""

    name: str  # fp32 | bf16 | int8
    asked: str  # auto | fp32 | bf16 | int8
    reason: str

    @property
    def label(self) -> str:
        if self.asked != "auto" or self.name == "fp32":
            return self.name
        return f"{self.name} (auto: {self.reason}; --precision fp32 for the exact path)"


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether ``device`` runs bf16 natively, a few words saying why)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        ok = torch.cuda.is_bf16_supported()
        return ok, f"{name} {'has' if ok else 'lacks'} bf16"
    flags = cpu_bf16_flags()
    if flags != "none":
        return True, f"this CPU has native bf16 ({flags})"
    return False, "this CPU has no native bf16 (emulated bf16 is up to 10x slower than fp32)"


def native_int8(device: torch.device) -> tuple[bool, str]:
    """(whether ``device`` is a CPU with int8 dot products (VNNI / AMX), a few words saying why)."""
    flags = cpu_int8_flags() if device.type == "cpu" else "none"
    if flags != "none":
        return True, f"this CPU has int8 dot products ({flags})"
    return False, f"{device} has no int8 dot products"


def choose_precision(name: str, device: torch.device, *, exact: bool = False, training: bool = False) -> Precision:
    """The one precision rule, for inference and training. ``fp32``, ``bf16`` and ``int8`` are taken as asked (int8:
    inference on the CPU only); ``auto`` is fp32 where ``exact`` output is promised (the official tiling); else bf16
    where ``device`` runs it natively (CUDA with bf16, a CPU with AMX or AVX512-BF16); else, for inference on a CPU
    with int8 dot products (AVX512-VNNI), int8 linear maps (ipt.model.int8); else fp32. fp32 is the exact path.
    A CPU's flags count only where an ``ONEDNN_MAX_CPU_ISA`` cap leaves them usable (:func:`usable_cpu_flags`).

    Why in that order (docs/BENCHMARKS.md, inference variants): int8 restored Set5 2.2x faster than fp32, but as fast
    as bf16 autocast on a CPU that has both (1.2x at overlap 6; fused by torch.compile, 1.26x at the default), and
    bf16's output did not change with the batch size in the table's check, where int8's did."""
    known = TRAIN_PRECISIONS if training else PRECISIONS
    if name not in known:
        why = " (int8 is an inference precision)" if name == "int8" else ""
        raise IPTError(f"unknown precision {name!r}{why}; known: {list(known)}")
    if name == "int8" and device.type != "cpu":
        raise IPTError(f"--precision int8 runs on the CPU only, not on {device}; use bf16 or fp32 there")
    if name == "int8" and not cpu_has_exact_int8():
        cap = isa_cap()
        raise IPTError(
            "--precision int8 needs int8 dot products (AVX512-VNNI, AVX-VNNI or AMX), which this CPU"
            + (f" under the oneDNN ISA cap {cap}" if cap else "")
            + " lacks: oneDNN's int8 matmul saturates without them; use fp32 (exact) or bf16"
        )
    if name != "auto":
        return Precision(name, name, "asked for")
    if exact:
        return Precision("fp32", "auto", "exact output asked for")
    ok, why = native_bf16(device)
    if ok or training:
        return Precision("bf16" if ok else "fp32", "auto", why)
    ok8, why8 = native_int8(device)
    return Precision("int8", "auto", f"{why8} but no native bf16") if ok8 else Precision("fp32", "auto", why)


def resolve_precision(name: str, device: torch.device, *, exact: bool = False, training: bool = False) -> str:
    """:func:`choose_precision`'s name (``fp32``, ``bf16`` or ``int8``)."""
    return choose_precision(name, device, exact=exact, training=training).name


@contextlib.contextmanager
def exact_fp32():
    """fp32 means fp32: TF32 off for CUDA matmuls and convolutions inside the block (cuDNN convolutions use TF32 by
    default), the caller's settings put back after it."""
    if not hasattr(torch.backends.cudnn, "conv"):  # older torch (2.4 has none): the allow_tf32 switches
        matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
        before = matmul.allow_tf32, cudnn.allow_tf32
        matmul.allow_tf32 = cudnn.allow_tf32 = False
        try:
            yield
        finally:
            matmul.allow_tf32, cudnn.allow_tf32 = before
        return
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision, conv.fp32_precision = "ieee", "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = before


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device``, or the exact fp32 path (:func:`exact_fp32`)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return exact_fp32()


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
    """Hardware facts recorded with every benchmark (``isa_cap`` only where ``ONEDNN_MAX_CPU_ISA`` caps oneDNN)."""
    cap = isa_cap()
    return ({"isa_cap": cap} if cap else {}) | {
        "cpu_model": cpu_model(),
        "cpu_id": cpu_id(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "fast_bf16": str(cpu_has_fast_bf16()),
        "cpu_bf16": cpu_bf16_flags(),
        "cpu_int8": cpu_int8_flags(),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
