"""A task of an IPT as a file other runtimes read: ONNX (one window model, any batch) or the official layout
(the released ``IPT_sr2.pt`` state dict, which spandrel reads). Formats and limits: docs/export.md.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from ipt.checkpoint import CheckpointError, official_state_dict
from ipt.errors import IPTError
from ipt.fileio import atomic_write
from ipt.model import IPT

FORMATS = ("onnx", "official")
ONNX_OPSET = 18  # F.fold (col2im) exists from opset 18
ONNX_INPUT, ONNX_OUTPUT = "windows", "restored"
# max |onnxruntime - torch| on the export's check windows, in grey levels of 0..255: a fp32 graph computes the same
# sums in another order (measured: 1e-4 to 5e-4 on tiny models, 0.0052 on random paper-size weights; docs/export.md)
ONNX_TOLERANCE = 0.05


class ExportError(IPTError):
    """A model cannot be written in the asked format: the message names it and says why."""


class TaskWindows(nn.Module):
    """One task of an IPT as ``windows (B, 3, P, P) -> restored (B, 3, sP, sP)``: what ONNX gets."""

    def __init__(self, model: IPT, task: str) -> None:
        super().__init__()
        model.spec.index_of(task)  # names the model's tasks if it has no such task
        self.model, self.task = model.eval(), task

    def forward(self, windows: Tensor) -> Tensor:
        return self.model(windows, self.task)


def official_refusal(model: IPT, source: str) -> str | None:
    """Why ``model`` has no official-layout form (one line), or None when it has one."""
    if model.spec.image_residual:
        return (
            f"{source}: an image-residual model (image_residual: true) has no official-layout form: its output adds "
            "the bicubic-upscaled input to the tail's, which the official code and spandrel's IPT do not do; "
            "fine-tune with image_residual: false to export one"
        )
    return None


def official_caveats(model: IPT) -> list[str]:
    """What an official-layout file of ``model`` does not carry, one line each: a state dict records neither the
    attention heads nor ``pos_every``, and spandrel builds 12 heads without ``pos_every`` (measured: 24 grey levels
    off for a 2-head model's windows), as the official code does unless told otherwise."""
    spec, notes = model.spec, []
    if spec.num_heads != 12:
        notes.append(
            f"the file does not record num_heads ({spec.num_heads}): spandrel assumes 12 and computes another model; "
            f"the official code and `ipt restore` need --num_heads/--num-heads {spec.num_heads}"
        )
    if spec.pos_every:
        notes.append("the file does not record pos_every: spandrel and the official code's default assume it is off")
    return notes


def export_official(model: IPT, task: str, out: str | os.PathLike, *, source: str = "the model") -> list[str]:
    """Write ``task``'s released single-task layout (head, body, tail at index 0, one query row) to ``out``; returns
    :func:`official_caveats` (warnings for the user)."""
    if why := official_refusal(model, source):
        raise ExportError(why)
    sd = official_state_dict(model, task)
    atomic_write(out, lambda f: torch.save(sd, f))
    return official_caveats(model)


def onnx_metadata(model: IPT, task: str) -> dict[str, str]:
    """What the ONNX file records about itself (``metadata_props``): enough to tile an image with it."""
    spec = model.spec
    return {
        "ipt.task": task,
        "ipt.scale": str(spec.scale_of(task)),
        "ipt.patch_size": str(spec.patch_size),
        "ipt.rgb_range": str(spec.rgb_range),
        "ipt.image_residual": str(spec.image_residual).lower(),
        "ipt.io": "RGB in [0, rgb_range], unclamped out (round and clamp as ipt.inference.quantize)",
        "ipt.torch": torch.__version__,
    }


def _onnx_modules():
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401 - torch.onnx.export(dynamo=True) needs it
    except ImportError as e:
        raise ExportError(
            f"--format onnx needs onnx, onnxruntime and onnxscript ({e.name} is not installed): pip install "
            "'ipt-pipeline[onnx]'"
        ) from None
    return onnx, onnxruntime


def export_onnx(
    model: IPT, task: str, out: str | os.PathLike, *, check_batch: int = 2, seed: int = 0
) -> dict[str, Any]:
    """Write ``task``'s window model to ``out`` (opset 18, a fixed P x P window, a dynamic batch axis) and check it:
    onnxruntime (CPU) against torch on ``check_batch`` random windows, within :data:`ONNX_TOLERANCE` grey levels.
    Returns what was written and the check's max abs difference."""
    onnx, _ = _onnx_modules()
    import logging
    import warnings

    spec = model.spec
    p = spec.patch_size
    module = TaskWindows(model, task)
    example = torch.rand(2, spec.n_colors, p, p) * spec.rgb_range
    batch = torch.export.Dim("batch", min=1)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes, not about this model
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_shapes={"windows": {0: batch}},
            opset_version=ONNX_OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    for key, value in onnx_metadata(model, task).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    path = atomic_write(out, lambda f: f.write(data))
    diff = check_onnx(path, model, task, batch=check_batch, seed=seed)
    if not diff <= ONNX_TOLERANCE * spec.rgb_range / 255:
        path.unlink()
        raise ExportError(
            f"{out}: onnxruntime differs from torch by {diff:.4g} (more than {ONNX_TOLERANCE} grey levels); not written"
        )
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "opset": ONNX_OPSET,
        "max_abs_diff": diff,
        "check_windows": check_batch,
        **onnx_metadata(model, task),
    }


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session for an exported file (``threads``: intra-op threads, None for ORT's default)."""
    _, ort = _onnx_modules()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_onnx(path: str | os.PathLike, model: IPT, task: str, *, batch: int = 2, seed: int = 0) -> float:
    """max |onnxruntime - torch| (fp32) over ``batch`` random windows in [0, rgb_range]."""
    spec = model.spec
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, spec.n_colors, spec.patch_size, spec.patch_size, generator=g) * spec.rgb_range
    with torch.inference_mode():
        ref = model.eval()(x, task)
    got = onnx_session(path).run([ONNX_OUTPUT], {ONNX_INPUT: x.numpy()})[0]
    if got.shape != tuple(ref.shape):
        raise ExportError(f"{path}: onnxruntime returned shape {got.shape}, torch {tuple(ref.shape)}")
    return float((torch.from_numpy(got) - ref).abs().max())


def load_for_export(weights: str, task: str | None, num_heads: int = 12) -> tuple[IPT, str]:
    """The model and task of ``weights`` (a file or ``models:/`` URI); a refiner or a multi-task model without
    ``task`` is refused in one line."""
    from ipt.checkpoint import checkpoint_kind, load_model
    from ipt.modeluri import MODEL_URI_PREFIX, resolve_model_uri

    path = str(resolve_model_uri(weights)) if weights.startswith(MODEL_URI_PREFIX) else weights
    kind = checkpoint_kind(path)
    if kind not in (None, "ipt"):
        raise ExportError(f"{weights}: a {kind} checkpoint (a base model and a refiner): export its base IPT instead")
    model = load_model(path, task, num_heads=num_heads)
    if task is None:
        if len(model.spec.task_names) != 1:
            raise CheckpointError(f"{weights}: holds tasks {list(model.spec.task_names)}; choose one with --task")
        task = model.spec.task_names[0]
    return model, task
