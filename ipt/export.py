"""A task of an IPT as a file other runtimes read: ONNX (one window model, any batch; fp32, or its MatMuls in int8)
or the official layout (the released ``IPT_sr2.pt`` state dict, which spandrel reads); and what ``ipt restore
--engine onnxruntime`` needs to run such an ONNX file's windows. Formats and limits: docs/export.md.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
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
# `--quantize` forms: onnxruntime's dynamic int8 quantization (quantize_dynamic: weights int8, activations scaled per
# call) of the MatMuls only, weights per output channel, after fold_constants; benchmarks/bench_onnx.py's onnx_int8,
# which restored Set5 x2 1.36x faster than `--precision auto` (bf16) at its quality on an idle AVX512-BF16 EPYC
# (docs/export.md)
QUANTIZE: dict[str, dict[str, Any]] = {"int8": {"op_types_to_quantize": ["MatMul"], "per_channel": True}}
INT8_OPS = frozenset(  # operators of quantized graphs: a file holding one of them is not an fp32 graph
    {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "QLinearMatMul", "QLinearConv", "DynamicQuantizeMatMul"}
)
ONNX_METADATA = ("ipt.task", "ipt.scale", "ipt.patch_size", "ipt.rgb_range")  # what restoring with a file needs


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


def onnx_metadata(model: IPT, task: str, quantize: str | None = None) -> dict[str, str]:
    """What the ONNX file records about itself (``metadata_props``): enough to tile an image with it."""
    spec = model.spec
    return {
        "ipt.quantized": "none" if quantize is None else f"{quantize}: {_quantize_words(quantize)}",
        "ipt.task": task,
        "ipt.scale": str(spec.scale_of(task)),
        "ipt.patch_size": str(spec.patch_size),
        "ipt.rgb_range": str(spec.rgb_range),
        "ipt.image_residual": str(spec.image_residual).lower(),
        "ipt.io": "RGB in [0, rgb_range], unclamped out (round and clamp as ipt.inference.quantize)",
        "ipt.torch": torch.__version__,
    }


def _quantize_words(quantize: str) -> str:
    q = QUANTIZE[quantize]
    weights = "per output channel" if q.get("per_channel") else "per tensor"
    ops = ", ".join(q.get("op_types_to_quantize") or ["onnxruntime's default operators"])
    return (
        f"{ops} in int8, weights {weights}, activations per call (onnxruntime quantize_dynamic, constants folded first)"
    )


def _onnx_modules(need: str = "--format onnx", exporter: bool = True):
    try:
        import onnx
        import onnxruntime

        if exporter:
            import onnxscript  # noqa: F401 - torch.onnx.export(dynamo=True) needs it
    except ImportError as e:
        names = "onnx, onnxruntime and onnxscript" if exporter else "onnx and onnxruntime"
        why = f"{need} needs {names} ({e.name} is not installed): pip install 'ipt-pipeline[onnx]'"
        raise ExportError(why) from None
    return onnx, onnxruntime


def _onnx_proto(model: IPT, task: str, quantize: str | None):
    """torch's ONNX export of ``task``'s window model, with :func:`onnx_metadata`."""
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
    for key, value in onnx_metadata(model, task, quantize).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto


def export_onnx(
    model: IPT,
    task: str,
    out: str | os.PathLike,
    *,
    quantize: str | None = None,
    check_batch: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``task``'s window model to ``out`` (opset 18, a fixed P x P window, a dynamic batch axis) and check it:
    onnxruntime (CPU) against torch on ``check_batch`` random windows, within :data:`ONNX_TOLERANCE` grey levels.
    ``quantize`` (a :data:`QUANTIZE` form) writes that fp32 graph quantized instead (:func:`quantize_onnx`), whose
    difference from torch is reported, not bounded (it must be finite). Nothing is written unless every check passes.
    Returns what was written and the checks' max abs differences."""
    if quantize is not None and quantize not in QUANTIZE:
        raise ExportError(f"--quantize {quantize}: not a form this project writes; known: {', '.join(QUANTIZE)}")
    _onnx_modules()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    proto = _onnx_proto(model, task, quantize)
    with tempfile.TemporaryDirectory(prefix=f".{out.name[:100]}.", suffix=".tmp", dir=out.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        fp32.write_bytes(proto.SerializeToString())
        del proto
        diff = check_onnx(fp32, model, task, batch=check_batch, seed=seed)
        if not diff <= ONNX_TOLERANCE * model.spec.rgb_range / 255:
            raise ExportError(
                f"{out}: onnxruntime differs from torch by {diff:.4g} (more than {ONNX_TOLERANCE} grey levels); "
                "not written"
            )
        info: dict[str, Any] = {"opset": ONNX_OPSET, "max_abs_diff": diff, "check_windows": check_batch}
        info |= {"fp32_bytes": fp32.stat().st_size, "quantize": quantize}
        written = fp32
        if quantize is not None:
            written = Path(tmp) / f"{quantize}.onnx"
            quantize_onnx(fp32, written, **QUANTIZE[quantize])
            info["max_abs_diff_quantized"] = qdiff = check_onnx(written, model, task, batch=check_batch, seed=seed)
            if not math.isfinite(qdiff):
                raise ExportError(f"{out}: the {quantize} graph's output is not finite on random windows; not written")
        with open(written, "rb+") as f:  # on disk before the rename, as ipt.fileio.atomic_write does
            os.fsync(f.fileno())
        os.replace(written, out)
    return {"path": str(out), "bytes": out.stat().st_size, **info, **onnx_metadata(model, task, quantize)}


def fold_constants(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``src`` through onnxruntime's basic graph optimizations (constant folding, redundant nodes; the level whose
    output holds only standard operators and runs anywhere), written to ``dst``. torch's export computes each
    attention's query, key and value weights at run time (a Split of ``in_proj_weight``, then a Transpose), and
    ``quantize_dynamic`` quantizes a MatMul only when its weight is a constant: unfolded, 108 of the paper model's
    195 linear maps stayed fp32 (44 % of an int8 window's time, by onnxruntime's profiler; docs/export.md).
    The basic level also fuses a MatMul and its bias Add into a Gemm, which ``op_types_to_quantize=["MatMul"]`` would
    leave in fp32; it does so only for static input shapes, and the export's batch axis is dynamic
    (tests/test_export.py counts the quantized MatMuls, so a graph that fused would fail it)."""
    _, ort = _onnx_modules("quantizing an ONNX file", exporter=False)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, *, fold: bool = True, **options: Any) -> None:
    """onnxruntime's dynamic int8 quantization of the ONNX file ``src`` into ``dst``: weights int8 (QInt8),
    activations scaled per call; ``options`` are quantize_dynamic's (``QUANTIZE["int8"]`` is `ipt export`'s form).
    ``fold`` (the default): constants folded first (:func:`fold_constants`), so every linear map's weight is one
    quantize_dynamic can reach; ``fold=False`` quantizes the graph as torch wrote it (the form before the fold,
    kept for benchmarks/bench_onnx.py's comparison)."""
    _onnx_modules("quantizing an ONNX file", exporter=False)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root, level = logging.getLogger(), logging.getLogger().level
    # quantize_dynamic's advice to pre-process (quant_pre_process: its symbolic shape inference fails on this graph,
    # "Incomplete symbolic shape inference"); the fold is the part of it that matters here
    root.setLevel(logging.ERROR)
    try:
        if not fold:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, **options)
            return
        # beside dst, named as export_onnx's own temporary folders (".<name>.*.tmp"), so a killed run's is found
        with tempfile.TemporaryDirectory(
            prefix=f".{Path(dst).name[:100]}.", suffix=".tmp", dir=Path(dst).parent
        ) as tmp:
            folded = Path(tmp) / "folded.onnx"
            fold_constants(src, folded)
            quantize_dynamic(folded, dst, weight_type=QuantType.QInt8, **options)
    finally:
        root.setLevel(level)


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session for an exported file (``threads``: intra-op threads, None for ORT's default)."""
    _, ort = _onnx_modules("onnxruntime", exporter=False)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_windows(session) -> Callable[[Tensor], Tensor]:
    """A window function (``ipt.inference.restore_image``'s) that runs an exported file's ``session``."""

    def windows(w: Tensor) -> Tensor:
        return torch.from_numpy(session.run([ONNX_OUTPUT], {ONNX_INPUT: w.float().contiguous().numpy()})[0])

    return windows


def read_onnx(path: str | os.PathLike) -> dict[str, Any]:
    """What an `ipt export --format onnx` file says of itself: its ``ipt.*`` metadata and ``int8`` (whether its graph
    holds quantized operators, :data:`INT8_OPS`: read from the graph, so a file quantized by hand counts too). A
    file that is missing, not ONNX, or not written by `ipt export` is refused in one line."""
    onnx, _ = _onnx_modules("--engine onnxruntime", exporter=False)
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and the like: the file is not ONNX
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ExportError(f"{path}: not an ONNX file ({why})") from None
    meta = {e.key: e.value for e in proto.metadata_props if e.key.startswith("ipt.")}
    if missing := [k for k in ONNX_METADATA if k not in meta]:
        raise ExportError(
            f"{path}: an ONNX file without {', '.join(missing)} metadata, so not one `ipt export --format onnx` wrote; "
            "export the model with it"
        )
    names = [i.name for i in proto.graph.input]
    if names != [ONNX_INPUT]:
        raise ExportError(f"{path}: its graph takes {names}, not the `{ONNX_INPUT}` of an `ipt export` window model")
    ops = {n.op_type for n in proto.graph.node}
    return meta | {"int8": bool(ops & INT8_OPS), "bytes": p.stat().st_size}


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
