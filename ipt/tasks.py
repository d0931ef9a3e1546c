"""Tasks: a name, the corruption that makes its inputs, that corruption's params, and the scale they imply.

Why the scale comes from the corruption, not the name: docs/corruptions.md#blur_down-a-users-bd_x3-say.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ipt.errors import IPTError

_SR, _DENOISE = re.compile(r"^sr_x([1-9]\d*)$"), re.compile(r"^denoise_s(\d+(?:\.\d+)?)$")
# A task name becomes a folder name (``out``'s ``{task}``), an MLflow and DVC key: no separators, no "..", no
# leading dot or dash.
TASK_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
BASELINES = ("bicubic", "identity")  # the benchmark's baseline restorers: bicubic upscaling, the degraded input
_PROBE = 5040  # divisible by 1..10: out_size(_PROBE, _PROBE) of an integer downscale s is exactly _PROBE / s


class TaskError(IPTError):
    """A task or its ``corrupt.tasks`` entry cannot be used; the message names the params file, task and problem."""


@dataclass(frozen=True)
class TaskSpec:
    """One task. ``corruption`` is None only for a paper task named without its params entry (``derain`` scored
    on Rain100L's files needs none)."""

    name: str
    corruption: str | None
    params: dict[str, Any] = field(default_factory=dict)
    scale: int = 1

    @property
    def kind(self) -> str:
        """``sr``, ``denoise`` or ``derain`` (the paper's tasks, by name), else ``custom``."""
        return paper_kind(self.name)[0] if paper_kind(self.name) else "custom"

    @property
    def sigma(self) -> float:
        """The noise level of a ``denoise_sNN`` task."""
        kind = paper_kind(self.name)
        if not kind or kind[0] != "denoise":
            raise TaskError(f"task {self.name!r} is not a denoising task (denoise_sNN)")
        return float(kind[1])

    @property
    def entry(self) -> dict[str, Any]:
        """The ``corrupt.tasks`` entry: ``{"name": <corruption>, **params}``."""
        return {"name": self.corruption, **self.params}


def paper_kind(name: str) -> tuple[str, float] | None:
    """``sr_x4`` -> ("sr", 4); ``denoise_s30`` -> ("denoise", 30.0); ``derain`` -> ("derain", 1); else None."""
    if m := _SR.match(name):
        return "sr", int(m.group(1))
    if m := _DENOISE.match(name):
        return "denoise", float(m.group(1))
    if name == "derain":
        return "derain", 1
    return None


def paper_task(name: str) -> TaskSpec:
    """The spec a paper task's name implies (``sr_x2`` -> bicubic_down x2, ``denoise_s30`` -> gaussian_noise 30)."""
    kind = paper_kind(name)
    if kind is None:
        raise TaskError(
            f"task {name!r} is not one of the paper's (sr_xN, denoise_sNN, derain) and has no corrupt.tasks entry "
            "(in params.yaml) that says how its inputs are made"
        )
    if kind[0] == "sr":
        return TaskSpec(name, "bicubic_down", {"scale": int(kind[1])}, int(kind[1]))
    if kind[0] == "denoise":
        sigma = kind[1]
        return TaskSpec(name, "gaussian_noise", {"sigma": int(sigma) if sigma.is_integer() else sigma}, 1)
    return TaskSpec(name, None, {}, 1)


def where(task: str, params_file: str | None) -> str:
    """``<params file>: corrupt.tasks.<task>``, the prefix of every message about a task's entry."""
    return f"{params_file}: corrupt.tasks.{task}" if params_file else f"corrupt.tasks.{task}"


def check_task_name(task: Any, params_file: str | None = None) -> str:
    """``task`` if it is a safe name (letters, digits, ``_``, ``-``, ``.``; no ``..``; not starting with ``.`` or
    ``-``), else :class:`TaskError`: the name is substituted into output paths."""
    if not isinstance(task, str) or not TASK_NAME_RE.match(task) or ".." in task:
        prefix = f"{params_file}: " if params_file else ""
        raise TaskError(
            f"{prefix}bad task name {task!r}: use letters, digits, '_', '-' and '.' (no '/', no '..', "
            "not starting with '.' or '-')"
        )
    return task


def task_entry(tasks: Any, task: str, params_file: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(corruption name, params)`` of ``task`` in a params file's ``corrupt.tasks`` mapping; :class:`TaskError`
    naming the file and the task for a missing task or an entry that is not ``{name: <corruption>, <param>: ...}``."""
    src = params_file or "the params file"
    if not isinstance(tasks, Mapping) or not tasks:
        got = "no corrupt.tasks found" if not tasks else f"corrupt.tasks is a {type(tasks).__name__}, not a mapping"
        raise TaskError(f"task {task!r} is not in {src} ({got})")
    if task not in tasks:
        raise TaskError(f"task {task!r} is not in {src} corrupt.tasks; known: {sorted(map(str, tasks))}")
    return _split_entry(task, tasks[task], params_file)


def _split_entry(task: str, spec: Any, params_file: str | None) -> tuple[str, dict[str, Any]]:
    at = where(task, params_file)
    if not isinstance(spec, Mapping):
        raise TaskError(f"{at} must be a mapping like {{name: <corruption>, <param>: <value>}}, got {spec!r}")
    params = dict(spec)
    name = params.pop("name", None)
    if not isinstance(name, str) or not name:
        got = "none" if name is None else repr(name)
        raise TaskError(f"{at}: needs a 'name' (the corruption's registry name), got {got}")
    bad_keys = [k for k in params if not isinstance(k, str)]
    if bad_keys:
        raise TaskError(f"{at}: parameter names must be strings, got {bad_keys}")
    return name, params


def corruption_scale(corruption: str, params: Mapping[str, Any], at: str = "task") -> int:
    """The integer factor by which ``corruption`` (with ``params``) shrinks an image, from its ``out_size``."""
    import corruptions

    try:
        h, w = corruptions.get(corruption).out_size(_PROBE, _PROBE, **params)
    except KeyError as e:
        raise TaskError(f"{at}: {e.args[0]}") from None
    except (TypeError, ValueError, ArithmeticError) as e:
        raise TaskError(f"{at}: {corruption}'s output size fails ({e})") from None
    if h != w or h < 1 or _PROBE % h:
        raise TaskError(
            f"{at}: {corruption} maps {_PROBE}x{_PROBE} to {h}x{w}, not an integer downscale; a task's LQ must be "
            "its HR shrunk by a whole factor (1 for restoration)"
        )
    return _PROBE // h


def from_entry(task: str, entry: Any, params_file: str | None = None, *, trial: bool = True) -> TaskSpec:
    """A checked :class:`TaskSpec` from ``task``'s ``corrupt.tasks`` entry (``{name: <corruption>, **params}``).

    Checks: the task name, the entry's shape, the corruption's params (``corruptions.check_params``, a trial run
    with ``trial``), the scale its ``out_size`` implies, and that a paper task's name says what the entry makes."""
    import corruptions

    check_task_name(task, params_file)
    name, params = _split_entry(task, entry, params_file)
    at = where(task, params_file)
    try:
        corruptions.get(name)
        if trial:
            corruptions.check_params(name, params)
        else:
            corruptions.validate_params(name, params)
    except KeyError as e:
        raise TaskError(f"{at}: {e.args[0]}") from None
    except (corruptions.ParamsError, TypeError) as e:
        raise TaskError(f"{at}: {e}") from None
    spec = TaskSpec(task, name, params, corruption_scale(name, params, at))
    _check_paper_name(spec, at)
    return spec


def _check_paper_name(spec: TaskSpec, at: str) -> None:
    kind = paper_kind(spec.name)
    if kind is None:
        return
    if kind[0] == "sr" and spec.scale != kind[1]:
        raise TaskError(f"{at}: the name says x{kind[1]} but {spec.corruption} {spec.params} shrinks by {spec.scale}")
    if kind[0] in ("denoise", "derain") and spec.scale != 1:
        raise TaskError(f"{at}: a {kind[0]} task keeps the image size, but {spec.corruption} shrinks by {spec.scale}")
    if kind[0] == "denoise" and (spec.corruption != "gaussian_noise" or spec.params.get("sigma") != kind[1]):
        raise TaskError(
            f"{at}: {spec.name} is scored with Gaussian noise of sigma {kind[1]:g} (the paper's protocol), so its "
            f"entry must be gaussian_noise with that sigma, not {spec.corruption} {spec.params}; name a task of your "
            "own otherwise"
        )


def resolve(task: str, entry: Any = None, params_file: str | None = None) -> TaskSpec:
    """``task``'s spec from its ``corrupt.tasks`` entry when there is one, else from its paper name."""
    if entry is not None:
        return from_entry(task, entry, params_file)
    check_task_name(task, params_file)
    return paper_task(task)


def inputs_corruption(task: str, tasks: Mapping[str, Any], where: str = "the params file") -> Mapping[str, Any] | None:
    """The corruption that makes ``task``'s test inputs from clean images: None for a paper task (its name says how
    its inputs are made), else its ``corrupt.tasks`` entry; :class:`TaskError` naming ``where`` and the tasks known
    there when it has none. The one answer to "which corruption goes with this task" for the benchmark and the
    experiment files."""
    if paper_kind(task) is not None:
        return None
    if task not in tasks:
        raise TaskError(
            f"task {task!r} is not a paper task (sr_xN, denoise_sNN, derain) and has no corruption entry in "
            f"{where}; known there: {sorted(map(str, tasks))}"
        )
    return tasks[task]


def task_scale(task: str) -> int:
    """The scale of a paper task from its name (``sr_x3`` -> 3, ``denoise_s30`` / ``derain`` -> 1). Other tasks
    have no scale without their corruption: :class:`TaskError` (use :func:`from_entry`)."""
    return paper_task(task).scale
