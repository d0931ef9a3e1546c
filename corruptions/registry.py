"""An explicit, name-keyed registry of corruption functions.

Lookup by module name, ``validate_params`` / ``check_params``: docs/corruptions.md#the-contract.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Generator, Tensor

CorruptionFn = Callable[..., Tensor]
OutSizeFn = Callable[..., tuple[int, int]]
CheckFn = Callable[..., object]

__all__ = [
    "REGISTRY",
    "Entry",
    "ParamsError",
    "Registry",
    "apply",
    "check_params",
    "get",
    "known",
    "register",
    "validate_params",
]

TRIAL_SHAPE = (1, 3, 16, 16)  # check_params' trial image: (B, C, H, W)
# What a bad value makes a corruption (or its out_size / check) raise; check_params turns these into ParamsError.
_BAD_VALUE_ERRORS = (TypeError, ValueError, ArithmeticError, IndexError, KeyError, RuntimeError)


class ParamsError(ValueError):
    """Bad parameters for a corruption; the message names the parameter and what is expected."""


def is_finite_number(value: Any) -> bool:
    """True for a finite int or float (numpy scalars included); False for booleans, NaN, infinities, anything else."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return math.isfinite(value)


def _first_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return (text.strip().splitlines() or [type(e).__name__])[0]


def _check_plain(key: str, value: Any) -> None:
    """Params-file values: numbers (finite), strings, booleans, null, and lists/mappings of them (JSON-encodable,
    since they are hashed into the plan digest and stored in every sample's meta.json)."""
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ParamsError(f"{key} must be a finite number, got {value!r}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(f"{key}[{i}]", v)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ParamsError(f"{key} must have string keys, got {k!r}")
            _check_plain(f"{key}.{k}", v)
        return
    raise ParamsError(
        f"{key} must be a number, string, boolean or a list of them, got {value!r} ({type(value).__name__})"
    )


def identity_size(h: int, w: int, **params: Any) -> tuple[int, int]:
    """Default ``out_size``: the corruption keeps the spatial size."""
    return h, w


@dataclass(frozen=True)
class Entry:
    """One registered corruption: the function, its output-size rule and whether it draws random numbers."""

    name: str
    fn: CorruptionFn
    out_size: OutSizeFn = identity_size
    deterministic: bool = False
    check: CheckFn | None = None  # optional: check(**params) raises ValueError/TypeError naming a bad parameter

    def param_names(self) -> tuple[set[str], set[str]]:
        """(all keyword-only parameter names except ``generator``, the subset without a default)."""
        names, required = set(), set()
        for p in inspect.signature(self.fn).parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "generator":
                names.add(p.name)
                if p.default is inspect.Parameter.empty:
                    required.add(p.name)
        return names, required


_MODULE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry(Mapping[str, Entry]):
    """Mapping ``name -> Entry``; registering a name twice is an error, and so is looking up an unknown one.

    With a ``package``, an unknown name is first imported as ``<package>.<name>``, and iterating (or listing the
    known names) imports ``<package>.catalog``, the explicit list of every module."""

    def __init__(self, kind: str = "corruption", package: str | None = None) -> None:
        self._kind = kind
        self._package = package
        self._entries: dict[str, Entry] = {}

    def _load(self, name: str) -> None:
        if self._package is None or not isinstance(name, str) or not _MODULE_NAME.match(name):
            return
        module = f"{self._package}.{name}"
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)

    def _load_all(self) -> None:
        if self._package is not None:
            importlib.import_module(f"{self._package}.catalog")

    def known(self) -> list[str]:
        """Every registered name (the catalog's modules included), sorted."""
        self._load_all()
        return sorted(self._entries)

    def register(
        self,
        name: str,
        *,
        out_size: OutSizeFn | None = None,
        deterministic: bool = False,
        check: CheckFn | None = None,
    ) -> Callable[[CorruptionFn], CorruptionFn]:
        """Decorator: register ``fn`` under ``name``; the function itself is returned unchanged.

        ``check``, optional, is called as ``check(**params)`` by :meth:`check_params` before a stage runs; it raises
        ``ValueError`` (or ``TypeError``) with a message that names the bad parameter and what it expects.
        """

        def decorator(fn: CorruptionFn) -> CorruptionFn:
            if name in self._entries:
                owner = self._entries[name].fn.__module__
                raise ValueError(f"{self._kind} {name!r} is already registered (by {owner})")
            param = inspect.signature(fn).parameters.get("generator")
            if param is None or param.kind is not inspect.Parameter.KEYWORD_ONLY:
                raise TypeError(f"{self._kind} {name!r} must take a keyword-only `generator` argument")
            self._entries[name] = Entry(name, fn, out_size or identity_size, deterministic, check)
            return fn

        return decorator

    def get(self, name: str) -> Entry:
        """The entry for ``name`` (importing its module if needed); ``KeyError`` listing the known names otherwise."""
        if name not in self._entries:
            self._load(name)
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self._kind} {name!r}; known: {self.known()}") from None

    def __getitem__(self, name: str) -> Entry:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        self._load_all()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._load_all()
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            self._load(name)  # type: ignore[arg-type]
        return name in self._entries

    def validate_params(self, name: str, params: Mapping[str, Any]) -> None:
        """Raise ``TypeError`` naming unknown and missing keyword arguments of corruption ``name``."""
        names, required = self.get(name).param_names()
        unknown = sorted(set(params) - names)
        missing = sorted(required - set(params))
        if unknown or missing:
            raise TypeError(
                f"bad parameters for {self._kind} {name!r}: unknown {unknown}, missing {missing}; "
                f"accepted: {sorted(names)} (required: {sorted(required)})"
            )

    def check_params(
        self, name: str, params: Mapping[str, Any], *, trial_shape: tuple[int, int, int, int] = TRIAL_SHAPE
    ) -> None:
        """Check ``params`` of corruption ``name`` fully, before anything is written; :class:`ParamsError` if bad.

        In order: the names (as :meth:`validate_params`), plain finite values (no NaN/inf, nothing YAML-exotic), the
        entry's ``check`` hook, its ``out_size``, and a trial run on a ``trial_shape`` random image whose output must
        have the declared size and finite values. ``TypeError``, ``ValueError``, ``ZeroDivisionError`` and the like
        raised by the corruption become ``ParamsError`` with the corruption's own message. ``KeyError`` for an
        unknown name.
        """
        entry = self.get(name)
        try:
            self.validate_params(name, params)
        except TypeError as e:
            raise ParamsError(str(e)) from None
        for key, value in params.items():
            _check_plain(key, value)
        what = f"bad parameters for {self._kind} {name!r}"
        if entry.check is not None:
            try:
                entry.check(**params)
            except _BAD_VALUE_ERRORS as e:
                raise ParamsError(f"{_first_line(e)} ({what})") from None
        b, c, h, w = trial_shape
        try:
            size = tuple(entry.out_size(h, w, **params))
        except _BAD_VALUE_ERRORS as e:
            raise ParamsError(f"{what}: its output size fails ({type(e).__name__}: {_first_line(e)})") from None
        x = torch.rand(trial_shape, generator=torch.Generator().manual_seed(0))
        try:
            y = entry.fn(x, generator=torch.Generator().manual_seed(0), **params)
        except _BAD_VALUE_ERRORS as e:
            raise ParamsError(
                f"{what}: a trial run on a {h}x{w} image fails ({type(e).__name__}: {_first_line(e)})"
            ) from None
        if not isinstance(y, Tensor) or tuple(y.shape) != (b, c, *size):
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ParamsError(f"{what}: a trial run on a {h}x{w} image gives {got}, expected {(b, c, *size)}")
        if not torch.isfinite(y).all():
            raise ParamsError(f"{what}: a trial run gives NaN or infinite values with {dict(params)}")


REGISTRY = Registry("corruption", package="corruptions")
register = REGISTRY.register
known = REGISTRY.known
get = REGISTRY.get
validate_params = REGISTRY.validate_params
check_params = REGISTRY.check_params


def apply(name: str, x: Tensor, *, generator: Generator, **params: Any) -> Tensor:
    """Validate ``params`` and run corruption ``name`` on ``x`` (B, C, H, W) float in [0, 1]."""
    validate_params(name, params)
    return get(name).fn(x, generator=generator, **params)
