"""Loading and saving IPT weights, strictly: the official bare state dicts and the project's checkpoints.

Formats and checks: docs/project.md#layout, docs/usage.md#restore-your-own-images-with-the-released-weights.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ipt.config import OFFICIAL_PRETRAIN_TASKS, ModelSpec
from ipt.errors import IPTError
from ipt.fileio import atomic_write
from ipt.model import IPT, build_ipt
from ipt.model.heads import RGB_MEAN
from ipt.tasks import paper_kind, task_scale

FORMAT_VERSION = 1
_PREFIXES = ("module.", "_orig_mod.", "model.")
# Official single-task file names -> task (only used when a x1 file does not say which x1 task it is).
_FILENAME_HINTS = (("denoise30", "denoise_s30"), ("denoise50", "denoise_s50"), ("derain", "derain"))


class CheckpointError(IPTError):
    """A weights file cannot be used: the message names the file and what is wrong."""


# ------------------------------------------------------------------------------------------------ reading files


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` on CPU, with one-line errors naming the file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such weights file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is reported the same way
        raise CheckpointError(f"{p}: {_load_failure(e)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: expected a state dict or an IPT checkpoint dict, got {type(obj).__name__}")
    return obj


def _load_failure(e: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line and without PyTorch's advice to load it with
    ``weights_only=False`` (the unsafe option, which can run code inside the file)."""
    text = str(e)
    if m := re.search(r"Unsupported global: GLOBAL (\S+)", text):
        return (
            f"refused: it holds a pickled Python object ({m.group(1)}) besides tensors, and loading it could run code; "
            "ipt reads tensors only (save the state dict alone: torch.save(model.state_dict(), path))"
        )
    if m := re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\s*\n|Check the documentation|$)", text, re.S):
        return f"not a loadable weights file (not written by torch.save, or damaged: {m.group(1).splitlines()[0]})"
    first = (text.strip().splitlines() or [type(e).__name__])[0]
    return f"not a loadable weights file ({first})"


def checkpoint_kind(path: str | os.PathLike) -> str | None:
    """The ``kind`` a project checkpoint records (``ipt``, ``ipt-ptgrm``), None for anything else (a bare state
    dict, an unreadable file: :func:`load_model` reports those). A memory-mapped ``weights_only`` read."""
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - load_model names the problem
        return None
    kind = obj.get("kind") if isinstance(obj, dict) else None
    return kind if isinstance(kind, str) else None


def strip_prefixes(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove ``module.`` (DDP), ``_orig_mod.`` (torch.compile) and ``model.`` wrappers from every key."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        out[k] = v
    return out


# ------------------------------------------------------------------------------------------------ official layout


def _indices(sd: dict[str, Tensor], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.match(k))})


def tail_scale(sd: dict[str, Tensor], i: int, n_feats: int) -> int:
    """Scale of ``tail.i`` from its tensors: no upsampler -> 1; 9*n_feats conv -> 3; one/two 4*n_feats convs -> 2/4."""
    convs = _indices(sd, rf"^tail\.{i}\.0\.(\d+)\.weight$")
    if not convs:
        return 1
    first = sd[f"tail.{i}.0.0.weight"].shape[0]
    if first == 9 * n_feats and len(convs) == 1:
        return 3
    if first == 4 * n_feats:
        return 2 ** len(convs)
    raise CheckpointError(
        f"tail.{i}: cannot infer its scale from shapes {[tuple(sd[f'tail.{i}.0.{c}.weight'].shape) for c in convs]}"
    )


def infer_official_spec(sd: dict[str, Tensor], num_heads: int = 12) -> tuple[dict[str, Any], list[int]]:
    """Configuration of an official-layout state dict (all but the task names) and the scale of each tail."""
    if "head.0.0.weight" not in sd:
        raise CheckpointError("no 'head.0.0.weight': not an IPT state dict")
    n_feats, n_colors = sd["head.0.0.weight"].shape[:2]
    mlp = "body.linear_encoding.weight" in sd
    layers = _indices(sd, r"^body\.encoder\.layers\.(\d+)\.")
    if "body.position_encoding.pe.weight" in sd:
        seq = sd["body.position_encoding.pe.weight"].shape[0]
        dim = sd["body.position_encoding.pe.weight"].shape[1]
    elif mlp:
        dim = sd["body.linear_encoding.weight"].shape[0]
        seq = sd["body.query_embed.weight"].shape[1] // dim
    else:
        raise CheckpointError("cannot infer patch_size: no position encoding and no query embedding")
    patch_dim = round((dim / n_feats) ** 0.5)
    grid = round(seq**0.5)
    heads = _indices(sd, r"^head\.(\d+)\.")
    if heads != list(range(len(heads))):
        raise CheckpointError(f"head indices are not 0..n-1: {heads}")
    cfg = dict(
        n_feats=int(n_feats),
        n_colors=int(n_colors),
        patch_dim=patch_dim,
        patch_size=patch_dim * grid,
        num_layers=len(layers),
        num_heads=num_heads,
        num_queries=int(sd["body.query_embed.weight"].shape[0]) if mlp else 0,
        mlp=mlp,
        no_pos="body.position_encoding.pe.weight" not in sd,
        no_norm="body.encoder.layers.0.norm1.weight" not in sd,
        out_proj_bias="body.encoder.layers.0.self_attn.out_proj.bias" in sd,
    )
    return cfg, [tail_scale(sd, i, int(n_feats)) for i in heads]


def _name_tasks(scales: list[int], task: str | None, source: str) -> tuple[str, ...]:
    """Task names for the heads of an official file (six-task pretrain order, or one task at index 0)."""
    if len(scales) == len(OFFICIAL_PRETRAIN_TASKS) and scales == [task_scale(t) for t in OFFICIAL_PRETRAIN_TASKS]:
        return OFFICIAL_PRETRAIN_TASKS
    if len(scales) != 1:
        raise CheckpointError(f"{source}: {len(scales)} heads with scales {scales}: not a known official layout")
    s = scales[0]
    if task is None:
        if s > 1:
            return (f"sr_x{s}",)
        name = Path(source).name.lower()
        for hint, t in _FILENAME_HINTS:
            if hint in name:
                return (t,)
        raise CheckpointError(f"{source}: a x1 single-task file (denoise or derain); say which with --task")
    if paper_kind(task) is not None and task_scale(task) != s:
        raise CheckpointError(f"{source}: task {task!r} needs a x{task_scale(task)} tail but this file's tail is x{s}")
    if task not in OFFICIAL_PRETRAIN_TASKS:
        known = ", ".join(t for t in OFFICIAL_PRETRAIN_TASKS if task_scale(t) == s) or "none"
        warnings.warn(
            f"{source}: task {task!r} is not one of the paper's x{s} tasks ({known}); this file does not name its "
            f"task, so {task!r} is taken as given (x{s}, from its tail)",
            stacklevel=3,
        )
    return (task,)


def _check_constants(sd: dict[str, Tensor], spec: ModelSpec, source: str) -> None:
    mean = torch.tensor(RGB_MEAN) * spec.rgb_range
    for key, sign in (("sub_mean", -1), ("add_mean", +1)):
        if f"{key}.bias" in sd and not torch.allclose(sd[f"{key}.bias"].float(), sign * mean, atol=1e-3):
            raise CheckpointError(
                f"{source}: {key}.bias is {sd[f'{key}.bias'].tolist()}, expected {(sign * mean).tolist()}"
            )
    pid = sd.get("body.position_encoding.position_ids")
    if pid is not None and not torch.equal(pid.flatten().long(), torch.arange(spec.seq_length)):
        raise CheckpointError(f"{source}: body.position_encoding.position_ids is not arange({spec.seq_length})")


def _compare(model_sd: dict[str, Tensor], sd: dict[str, Tensor], source: str, optional: set[str]) -> None:
    missing = sorted(k for k in model_sd.keys() - sd.keys() if k not in optional)
    unexpected = sorted(sd.keys() - model_sd.keys())
    shapes = sorted(
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(model_sd[k].shape)}"
        for k in model_sd.keys() & sd.keys()
        if sd[k].shape != model_sd[k].shape
    )
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{len(items)} {label} key(s): {items[:8]}{more}")
        raise CheckpointError(f"{source}: " + "; ".join(parts))


def convert_official_ipt(
    sd: dict[str, Tensor], task: str | None = None, *, num_heads: int = 12, source: str = "<state_dict>"
) -> tuple[ModelSpec, dict[str, Tensor]]:
    """Official state dict -> (spec, state dict ready for a strict load). Pure: no file access."""
    sd = strip_prefixes(sd)
    if not sd:
        raise CheckpointError(f"{source}: an empty state dict (no tensors)")
    try:
        cfg, scales = infer_official_spec(sd, num_heads=num_heads)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    except KeyError as e:
        raise CheckpointError(
            f"{source}: no {e.args[0]!r}: not a complete IPT state dict in the official layout"
        ) from None
    tasks = _name_tasks(scales, task, source)
    if task is not None and task not in tasks:
        raise CheckpointError(f"{source}: task {task!r} is not in this file; it has {list(tasks)}")
    try:
        spec = ModelSpec(tasks=tuple(zip(tasks, scales, strict=True)), **cfg)
    except ValueError as e:
        raise CheckpointError(f"{source}: inferred an invalid configuration: {e}") from None
    if cfg["out_proj_bias"]:
        warnings.warn(f"{source}: file has attention out_proj.bias (saved by torch ~1.5-1.8); loading it", stacklevel=2)
    _check_constants(sd, spec, source)
    model_sd = build_ipt(spec).state_dict()  # cheap at init; only used for keys/shapes
    optional = {
        "sub_mean.weight",
        "sub_mean.bias",
        "add_mean.weight",
        "add_mean.bias",
        "body.position_encoding.position_ids",
    }
    _compare(model_sd, sd, source, optional)
    full = {k: sd[k].to(model_sd[k].dtype) if k in sd else model_sd[k] for k in model_sd}
    return spec, full


# ------------------------------------------------------------------------------------------------ project format


def is_project_checkpoint(obj: dict[str, Any]) -> bool:
    return obj.get("kind") == "ipt" and "model_spec" in obj and "state_dict" in obj


def save_checkpoint(path: str | os.PathLike, model: IPT, meta: dict[str, Any] | None = None, **extra: Any) -> Path:
    """Write ``{format_version, kind, model_spec, state_dict, meta, **extra}`` atomically (temp file + rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    obj = {
        "format_version": FORMAT_VERSION,
        "kind": "ipt",
        "model_spec": model.spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
        **extra,
    }
    return atomic_write(p, lambda f: torch.save(obj, f))


def _spec_from_project(obj: dict[str, Any], source: str) -> ModelSpec:
    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{source}: checkpoint format_version {version!r}; this code reads {FORMAT_VERSION}")
    spec, sd = obj["model_spec"], obj["state_dict"]
    if not isinstance(spec, dict):
        raise CheckpointError(f"{source}: model_spec is a {type(spec).__name__}, not a mapping of ModelSpec keys")
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items()):
        raise CheckpointError(f"{source}: state_dict is not a mapping of names to tensors ({type(sd).__name__})")
    try:
        return ModelSpec.from_dict(spec)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: bad model_spec: {e}") from None


def check_finite(sd: dict[str, Tensor], source: str) -> None:
    """:class:`CheckpointError` naming the first tensor (and how many) with NaN or infinite values."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        more = f" and {len(bad) - 1} more tensor(s)" if len(bad) > 1 else ""
        raise CheckpointError(f"{source}: {bad[0]}{more} hold NaN or infinite values; these weights cannot restore")


def load_model(path: str | os.PathLike, task: str | None = None, *, num_heads: int = 12) -> IPT:
    """Load an official ``.pt`` or a project checkpoint, strictly, into an eval-mode IPT on CPU.

    For official single-task files ``task`` names the task (needed only for x1 files whose name does not say it) and
    must fit the file's tail; for multi-task files it is only checked to exist.
    """
    source = str(path)
    obj = read_state(path)
    if is_project_checkpoint(obj):
        spec = _spec_from_project(obj, source)
        sd = obj["state_dict"]
        if task is not None and task not in spec.task_names:
            raise CheckpointError(f"{source}: task {task!r} is not in this checkpoint; it has {list(spec.task_names)}")
    else:
        if not all(isinstance(v, Tensor) for v in obj.values()):
            raise CheckpointError(f"{source}: neither an IPT checkpoint nor a bare state dict of tensors")
        spec, sd = convert_official_ipt(obj, task, num_heads=num_heads, source=source)
    model = build_ipt(spec)
    model_sd = model.state_dict()
    _compare(model_sd, sd, source, optional=set())
    check_finite(sd, source)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def extract_task(model: IPT, task: str) -> IPT:
    """A single-task model (index 0) holding ``task``'s head, tail and query row, sharing nothing with ``model``."""
    i = model.spec.index_of(task)
    spec = dataclasses.replace(model.spec, tasks=((task, model.spec.scale_of(task)),), num_queries=0)
    single = build_ipt(spec)
    sd = model.state_dict()
    out = {}
    for k in single.state_dict():
        if k.startswith(("head.0.", "tail.0.")):
            out[k] = sd[k[:5] + str(i) + k[6:]]
        elif k == "body.query_embed.weight":
            out[k] = sd[k][i : i + 1]
        else:
            out[k] = sd[k]
    single.load_state_dict({k: v.clone() for k, v in out.items()}, strict=True)
    return single.eval()


def official_state_dict(model: IPT, task: str) -> dict[str, Tensor]:
    """The released single-task layout (``IPT_sr2.pt`` style: index 0, one query row) for ``task``."""
    return {k: v.detach().cpu() for k, v in extract_task(model, task).state_dict().items()}
