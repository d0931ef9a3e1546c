"""Refiner checkpoints: PTG-RM's weights plus references to what it refines, never the prior's weights.

Format: docs/refine.md#refiner-checkpoints-and-the-run-folder.
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ipt.checkpoint import CheckpointError, extract_task, load_model
from ipt.fileio import atomic_write, file_sha256
from ipt.model import IPT
from ipt.modeluri import MODEL_URI_PREFIX, alias_version, resolve_model_uri
from ipt.refine.config import RefineError
from ipt.refine.model import RefinedIPT
from ipt.refine.priors import PriorContext, PriorError, build_prior
from ipt.refine.ptgrm import PTGRM, PTGRMSpec

FORMAT_VERSION = 1
KIND = "ipt-ptgrm"
BASE_FILE = "base.pt"


def is_refiner_checkpoint(path: str | os.PathLike) -> bool:
    """True for a file written by :func:`save_refined`. Memory-mapped, ``weights_only`` read, so asking about a large
    IPT file costs little; False on any error (legacy-format files, which cannot be mapped, are never refiners)."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not ours, whatever it is
        return False
    return isinstance(obj, dict) and obj.get("kind") == KIND


# ------------------------------------------------------------------------------------------------ the base


@dataclass
class BaseRef:
    """A resolved base: the local file, its single-task model, and how it was named."""

    file: Path
    model: IPT
    uri: str
    sha256: str
    registry: dict[str, str] | None


def _registry_info(uri: str, tracking_uri: str | None) -> dict[str, str]:

    ref = uri[len(MODEL_URI_PREFIX) :]
    if "@" in ref:
        name, alias = ref.split("@", 1)
        found = alias_version(name, alias, tracking_uri)
        return {"name": name, "version": found["version"] if found else "?", "alias": alias}
    name, number = ref.rsplit("/", 1)
    return {"name": name, "version": number}


def _local_file(uri: str, tracking_uri: str | None) -> tuple[Path, dict[str, str] | None]:
    if uri.startswith(MODEL_URI_PREFIX):
        from ipt import tracking

        try:
            return resolve_model_uri(uri, tracking_uri), _registry_info(uri, tracking_uri)
        except tracking.TrackingError as e:
            raise RefineError(f"base {uri}: {e}") from None
    p = Path(uri)
    if p.is_dir():
        p = p / "model.pt"
    if not p.is_file():
        raise RefineError(f"base {uri}: no such checkpoint (a file, a run folder holding model.pt, or models:/...)")
    return p, None


def load_base(file: Path, task: str, *, num_heads: int = 12) -> IPT:
    """The single-task IPT of ``task`` from any IPT weights file (multi-task files are cut to the task)."""
    try:
        model = load_model(file, task, num_heads=num_heads)
    except CheckpointError as e:
        raise RefineError(f"base: {e}") from None
    if task not in model.spec.task_names:
        raise RefineError(f"base {file}: has no task {task!r}; it has {list(model.spec.task_names)}")
    return extract_task(model, task) if len(model.spec.tasks) > 1 else model


def resolve_base(uri: str, task: str, *, tracking_uri: str | None = None, num_heads: int = 12) -> BaseRef:
    file, registry = _local_file(uri, tracking_uri)
    return BaseRef(file, load_base(file, task, num_heads=num_heads), uri, file_sha256(file), registry)


# ------------------------------------------------------------------------------------------------ save / load


def save_refined(
    path: str | os.PathLike,
    model: RefinedIPT,
    base: BaseRef,
    *,
    joint: bool,
    seed: int,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write the refiner checkpoint atomically and copy the base file beside it as ``base.pt``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    beside = p.parent / BASE_FILE
    if beside.resolve() != base.file.resolve():
        shutil.copyfile(base.file, beside)
    prior = model.prior
    obj: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "task": model.task,
        "refiner_spec": model.refiner.spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.refiner.state_dict().items()},
        "base": {"uri": base.uri, "file": BASE_FILE, "sha256": base.sha256, "registry": base.registry},
        "prior": {
            "name": prior.name,
            "layer": int(prior.options.get("layer", 17)),
            "seed": int(seed),
            "identity": prior.identity,
            "state": prior.state(),
        },
        "meta": dict(meta or {}),
    }
    if joint:
        obj["base_state_dict"] = {k: v.detach().cpu() for k, v in model.base.state_dict().items()}
    return atomic_write(p, lambda f: torch.save(obj, f))


def read_refined(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise RefineError(
            f"{p}: not a loadable refiner checkpoint ({str(e).splitlines()[0] if str(e) else e})"
        ) from None
    if not isinstance(obj, dict) or obj.get("kind") != KIND:
        raise RefineError(f"{p}: not a PTG-RM checkpoint (kind {obj.get('kind') if isinstance(obj, dict) else None!r})")
    if obj.get("format_version") != FORMAT_VERSION:
        raise RefineError(f"{p}: format_version {obj.get('format_version')!r}; this code reads {FORMAT_VERSION}")
    return obj


def find_base(path: Path, ref: dict[str, Any], tracking_uri: str | None) -> Path:
    beside = path.parent / ref.get("file", BASE_FILE)
    if beside.is_file() and file_sha256(beside) == ref["sha256"]:
        return beside
    file, _ = _local_file(ref["uri"], tracking_uri)
    digest = file_sha256(file)
    if digest != ref["sha256"]:
        raise RefineError(
            f"{path}: its base {ref['uri']} has changed (sha256 {digest[:12]}..., trained on {ref['sha256'][:12]}...)"
            f" and no {BASE_FILE} with the right hash lies beside it"
        )
    return file


def load_refined(path: str | os.PathLike, *, tracking_uri: str | None = None, num_heads: int = 12) -> RefinedIPT:
    """Rebuild base + PTG-RM + prior from a refiner checkpoint, strictly (eval mode, CPU)."""
    path = Path(path)
    obj = read_refined(path)
    task = obj["task"]
    original = load_base(find_base(path, obj["base"], tracking_uri), task, num_heads=num_heads)
    base = copy.deepcopy(original)
    if "base_state_dict" in obj:
        base.load_state_dict(obj["base_state_dict"], strict=True)
    p = obj["prior"]
    ctx = PriorContext(
        task,
        layer=p["layer"],
        seed=p["seed"],
        base=original,
        state=p.get("state") or None,
        spatial=bool(p["identity"]["options"].get("spatial", False)),  # the identity says which the prior was
    )
    try:
        prior = build_prior(p["name"], ctx)
    except (PriorError, KeyError) as e:
        raise RefineError(f"{path}: prior {p['name']!r}: {e.args[0] if e.args else e}") from None
    want = p["identity"]["sha256"]
    if prior.sha256 != want:
        raise RefineError(f"{path}: prior {p['name']!r} has sha256 {prior.sha256[:12]}..., trained with {want[:12]}...")
    try:
        refiner = PTGRM(PTGRMSpec(**obj["refiner_spec"]))
        refiner.load_state_dict(obj["state_dict"], strict=True)
    except (TypeError, ValueError, RuntimeError) as e:
        raise RefineError(f"{path}: refiner weights do not fit its spec ({str(e).splitlines()[0]})") from None
    return RefinedIPT(base, refiner, prior, task).eval()
