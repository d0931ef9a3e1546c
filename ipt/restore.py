"""A whole-image restorer: an IPT, a task, a tiling, a device and a precision. uint8 in, uint8 out.

Two engines run the windows: torch (:class:`Restorer`, the exact path in fp32) and onnxruntime (:class:`OnnxRestorer`,
an `ipt export --format onnx` file, fp32 or int8; docs/export.md); the tiling around them is the same code.
:func:`open_restorer` is the one factory; add-on checkpoint kinds open through :data:`OPENERS` (docs/project.md#layout).
"""

from __future__ import annotations

import importlib
import os
import platform
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ipt.device import ENGINES, Precision, autocast, choose_precision, cpu_has_exact_int8, resolve_device
from ipt.errors import IPTError
from ipt.inference import default_overlap, quantize, restore_image
from ipt.model import IPT
from ipt.model.int8 import quantize_int8

# checkpoint "kind" -> module with ``open_restorer(path, task, **options)`` for it
OPENERS: dict[str, str] = {"ipt-ptgrm": "ipt.refine.restore"}


def _check_tiling(overlap: int | None, batch: int, patch: int) -> None:
    if overlap is not None and not 0 <= overlap < patch:
        raise IPTError(f"overlap must be in [0, {patch}) for this model's {patch}-px windows, not {overlap}")
    if batch < 1:
        raise IPTError(f"batch must be >= 1, not {batch}")


class _Tiled:
    """What both engines share: a whole image cut into windows (``tiling``, ``overlap``, ``batch``), the windows run
    by the subclass's ``_windows``, put back together, checked finite, rounded to uint8. A subclass sets ``task``,
    ``scale``, ``patch``, ``rgb_range``, ``precision_info`` and ``_device``."""

    task: str
    tiling: str
    overlap: int | None
    batch: int
    source: str | None
    scale: int
    patch: int
    rgb_range: int
    precision_info: Precision
    _device: torch.device
    nan_hint: str = ""  # what to try when an output is not finite

    @property
    def precision_used(self) -> str:
        return self.precision_info.name

    def describe(self) -> dict[str, Any]:
        """How this restorer runs: recorded with every restore and benchmark."""
        return {
            "task": self.task,
            "tiling": self.tiling,
            "overlap": self._overlap_used(),
            "precision": self.precision_info.name,
            "precision_asked": self.precision_info.asked,
            "precision_reason": self.precision_info.reason,
            "device": str(self._device),
        }

    def _overlap_used(self) -> int | None:
        if self.tiling != "overlap":
            return None
        return default_overlap(self.patch) if self.overlap is None else self.overlap

    def _windows(self, w: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def restore_tensor(self, x: Tensor) -> Tensor:
        """(1, 3, H, W) float in [0, 255] -> (1, 3, H*s, W*s) unclamped float."""
        out = restore_image(
            self._windows, x, self.scale, tiling=self.tiling, patch=self.patch, overlap=self.overlap, batch=self.batch
        )
        if not torch.isfinite(out).all():
            raise IPTError(
                f"{self.source or 'the model'}: the output for {self.task} holds NaN or infinite values (nothing "
                f"was written for this image){self.nan_hint}"
            )
        return out

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H*s, W*s, 3) uint8, clamped and rounded as the official evaluation."""
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
        y = quantize(self.restore_tensor(x), self.rgb_range)
        return y[0].permute(1, 2, 0).to(torch.uint8).numpy()


@dataclass
class Restorer(_Tiled):
    model: IPT
    task: str
    tiling: str = "overlap"
    overlap: int | None = None  # None: a quarter of the window
    batch: int = 64
    device: str = "auto"
    precision: str = "auto"
    notes: list[str] = field(default_factory=list)  # warnings for the user (bf16 with the official tiling)
    source: str | None = None  # the weights, for messages

    def __post_init__(self) -> None:
        self.model.spec.index_of(self.task)  # KeyError naming the model's tasks
        _check_tiling(self.overlap, self.batch, self.patch)
        self._device = resolve_device(self.device)
        self.precision_info: Precision = choose_precision(self.precision, self._device, exact=self.tiling == "official")
        if self.tiling == "official" and self.precision_info.name != "fp32":
            self.notes.append(
                f"{self.precision_info.name} with the official tiling: the output is not the official code's (it "
                "differs by a few grey levels in part of the pixels); --precision fp32 reproduces it"
            )
        self.model = self.model.to(self._device).eval()
        if self.precision_info.name == "int8":  # a quantized copy: the caller's model is left as it was
            self.model = quantize_int8(self.model)
        self.scale = self.model.scale(self.task)
        if self.precision_info.name != "fp32":
            self.nan_hint = "; try --precision fp32"

    @property
    def patch(self) -> int:
        return self.model.spec.patch_size

    @property
    def rgb_range(self) -> int:
        return self.model.spec.rgb_range

    def _windows(self, w: Tensor) -> Tensor:
        with autocast(self._device, self.precision_info.name):
            out = self.model(w.to(self._device), self.task)
        return out.float().cpu()


@dataclass
class OnnxRestorer(_Tiled):
    """The same whole-image restorer with onnxruntime (CPU) running the windows of ``path``, a file `ipt export
    --format onnx` wrote (its window model includes an image-residual model's bicubic baseline). The precision is the
    file's: fp32, or int8 (``--quantize int8``). Not bit-exact: fp32 torch stays the exact path (docs/export.md).
    onnxruntime gets as many intra-op threads as torch has (``torch.get_num_threads()``: ``OMP_NUM_THREADS``,
    ``torch.set_num_threads``)."""

    path: str
    task: str | None = None
    tiling: str = "overlap"
    overlap: int | None = None
    batch: int = 64
    device: str = "auto"
    precision: str = "auto"
    notes: list[str] = field(default_factory=list)
    source: str | None = None

    def __post_init__(self) -> None:
        from ipt.export import onnx_session, onnx_windows, read_onnx

        meta = read_onnx(self.path)  # first: without onnx and onnxruntime installed, a one-line error saying so
        import onnxruntime

        if self.task is None:
            self.task = meta["ipt.task"]
        elif self.task != meta["ipt.task"]:
            raise IPTError(
                f"{self.path}: holds {meta['ipt.task']}'s window model, not {self.task}'s; export that task with "
                f"`ipt export --format onnx MODEL OUT.onnx --task {self.task}`"
            )
        self.patch, self.scale, self.rgb_range = (int(meta[f"ipt.{k}"]) for k in ("patch_size", "scale", "rgb_range"))
        _check_tiling(self.overlap, self.batch, self.patch)
        if self.device != "auto" and resolve_device(self.device).type != "cpu":
            raise IPTError(f"--device {self.device}: the onnxruntime engine runs on the CPU only; use --device cpu")
        self._device = torch.device("cpu")
        self.int8 = meta["int8"]
        name = "int8" if self.int8 else "fp32"
        if self.precision not in ("auto", name):
            other = "an fp32 export (without --quantize)" if self.int8 else "an `ipt export --quantize int8` file"
            raise IPTError(
                f"{self.path}: an {name} ONNX file, and the onnxruntime engine runs the file's precision, not "
                f"--precision {self.precision}; leave it auto, or restore with {other}"
            )
        quantized = meta.get("ipt.quantized", "none")
        how = (quantized if quantized != "none" else "its graph holds int8 operators") if self.int8 else "fp32"
        self.precision_info = Precision(name, self.precision, f"the ONNX file's: {how}")
        if self.int8:
            self.nan_hint = "; try an fp32 export (without --quantize)"
        if self.tiling == "official":
            off = "int8 moves pixels by a few grey levels" if self.int8 else "fp32 sums in another order"
            self.notes.append(
                f"the onnxruntime engine with the official tiling: the output is not exactly the official code's "
                f"({off}); --engine torch --precision fp32 reproduces it"
            )
        if self.int8 and platform.machine().lower() in ("x86_64", "amd64") and not cpu_has_exact_int8():
            self.notes.append(
                f"{self.path}: an int8 file on a CPU without int8 dot products (VNNI, AMX): onnxruntime's u8 x s8 "
                "matmul may saturate there (its quantization guide); compare with an fp32 export before trusting it"
            )
        self.threads = torch.get_num_threads()
        self.ort_version = onnxruntime.__version__
        try:
            self.session = onnx_session(self.path, threads=self.threads)
        except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types derive from Exception only
            raise IPTError(f"{self.path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
        self._run = onnx_windows(self.session)

    @property
    def label(self) -> str:
        """What the summary line says: the engine, the file's precision, the file, the threads."""
        return f"onnxruntime {self.precision_info.name} ({self.path}; {self.threads} thread(s); not the exact path)"

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "engine": "onnxruntime",
            "onnx": str(self.path),
            "onnx_int8": self.int8,
            "onnxruntime": self.ort_version,
            "threads": self.threads,
        }

    def _windows(self, w: Tensor) -> Tensor:
        return self._run(w)


def open_restorer(
    weights: str | os.PathLike,
    task: str | None = None,
    *,
    tiling: str = "overlap",
    overlap: int | None = None,
    batch: int = 64,
    device: str = "auto",
    precision: str = "auto",
    num_heads: int = 12,
    tracking_uri: str | None = None,
    engine: str = "torch",
) -> Any:
    """A restorer for ``weights``: an official ``IPT_*.pt``, a state dict in the official layout, a project
    checkpoint, a refiner checkpoint, or a ``models:/`` URI; with ``engine="onnxruntime"``, an ``.onnx`` file of
    `ipt export --format onnx` (:class:`OnnxRestorer`). ``task`` may be left out for a single-task model.
    Errors name the file (:class:`~ipt.checkpoint.CheckpointError`, a ``ValueError`` for a bad option)."""
    from ipt.checkpoint import CheckpointError, checkpoint_kind, load_model
    from ipt.modeluri import MODEL_URI_PREFIX, resolve_model_uri

    if engine not in ENGINES:
        raise IPTError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    path = str(weights)
    if path.startswith(MODEL_URI_PREFIX):
        path = str(resolve_model_uri(path, tracking_uri))
    options = {"tiling": tiling, "overlap": overlap, "batch": batch, "device": device, "precision": precision}
    onnx = path.lower().endswith(".onnx")
    if engine == "onnxruntime" and not onnx:
        raise IPTError(
            f"{weights}: the onnxruntime engine runs an .onnx file, not torch weights; export it first: "
            f"`ipt export --format onnx {weights} OUT.onnx` (--quantize int8 for the int8 form)"
        )
    if engine == "onnxruntime":
        return OnnxRestorer(path, task, source=str(weights), **options)
    if onnx:
        raise IPTError(f"{weights}: an ONNX file; the torch engine runs torch weights: use --engine onnxruntime")
    kind = checkpoint_kind(path)
    if kind in OPENERS:
        opener = importlib.import_module(OPENERS[kind])
        return opener.open_restorer(path, task, tracking_uri=tracking_uri, num_heads=num_heads, **options)
    model = load_model(path, task, num_heads=num_heads)
    if task is None:
        if len(model.spec.task_names) != 1:
            raise CheckpointError(f"{weights}: holds tasks {list(model.spec.task_names)}; choose one with --task")
        task = model.spec.task_names[0]
    return Restorer(model, task, source=str(weights), **options)


def restore_file(src: str | os.PathLike, dst: str | os.PathLike, restorer: Any) -> list[str]:
    """Read the image ``src`` (PNG, JPEG, ...), restore it, write ``dst`` as a PNG atomically; returns the notes
    on how the input was read (grayscale replicated, alpha dropped, ...)."""
    from ipt.data.images import read_image, write_png

    img, notes = read_image(src)
    write_png(dst, restorer(img))
    return list(notes)
