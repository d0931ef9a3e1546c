"""A whole-image restorer: an IPT, a task, a tiling, a device and a precision. uint8 in, uint8 out.

:func:`open_restorer` is the one factory; add-on checkpoint kinds open through :data:`OPENERS` (docs/project.md#layout).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ipt.device import Precision, autocast, choose_precision, resolve_device
from ipt.errors import IPTError
from ipt.inference import default_overlap, quantize, restore_image
from ipt.model import IPT
from ipt.model.int8 import quantize_int8

# checkpoint "kind" -> module with ``open_restorer(path, task, **options)`` for it
OPENERS: dict[str, str] = {"ipt-ptgrm": "ipt.refine.restore"}


@dataclass
class Restorer:
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
        patch = self.model.spec.patch_size
        if self.overlap is not None and not 0 <= self.overlap < patch:
            raise IPTError(f"overlap must be in [0, {patch}) for this model's {patch}-px windows, not {self.overlap}")
        if self.batch < 1:
            raise IPTError(f"batch must be >= 1, not {self.batch}")
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
        return default_overlap(self.model.spec.patch_size) if self.overlap is None else self.overlap

    def _windows(self, w: Tensor) -> Tensor:
        with autocast(self._device, self.precision_info.name):
            out = self.model(w.to(self._device), self.task)
        return out.float().cpu()

    @torch.inference_mode()
    def restore_tensor(self, x: Tensor) -> Tensor:
        """(1, 3, H, W) float in [0, 255] -> (1, 3, H*s, W*s) unclamped float."""
        p = self.model.spec.patch_size
        out = restore_image(
            self._windows, x, self.scale, tiling=self.tiling, patch=p, overlap=self.overlap, batch=self.batch
        )
        if not torch.isfinite(out).all():
            hint = "; try --precision fp32" if self.precision_info.name != "fp32" else ""
            raise IPTError(
                f"{self.source or 'the model'}: the output for {self.task} holds NaN or infinite values (nothing "
                f"was written for this image){hint}"
            )
        return out

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H*s, W*s, 3) uint8, clamped and rounded as the official evaluation."""
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
        y = quantize(self.restore_tensor(x), self.model.spec.rgb_range)
        return y[0].permute(1, 2, 0).to(torch.uint8).numpy()


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
) -> Any:
    """A restorer for ``weights``: an official ``IPT_*.pt``, a state dict in the official layout, a project
    checkpoint, a refiner checkpoint, or a ``models:/`` URI. ``task`` may be left out for a single-task model.
    Errors name the file (:class:`~ipt.checkpoint.CheckpointError`, a ``ValueError`` for a bad option)."""
    from ipt.checkpoint import CheckpointError, checkpoint_kind, load_model
    from ipt.modeluri import MODEL_URI_PREFIX, resolve_model_uri

    path = str(weights)
    if path.startswith(MODEL_URI_PREFIX):
        path = str(resolve_model_uri(path, tracking_uri))
    options = {"tiling": tiling, "overlap": overlap, "batch": batch, "device": device, "precision": precision}
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
