"""An explicit, name-keyed registry of corruption functions.

Entries are added by the ``@register(name)`` decorator when their module is imported; ``corruptions/__init__.py``
imports every module explicitly (no file scanning). Registered names are the ``name`` values in ``params.yaml``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Generator, Tensor

CorruptionFn = Callable[..., Tensor]
OutSizeFn = Callable[..., tuple[int, int]]

__all__ = ["REGISTRY", "Entry", "Registry", "apply", "get", "register", "validate_params"]


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

    def param_names(self) -> tuple[set[str], set[str]]:
        """(all keyword-only parameter names except ``generator``, the subset without a default)."""
        names, required = set(), set()
        for p in inspect.signature(self.fn).parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "generator":
                names.add(p.name)
                if p.default is inspect.Parameter.empty:
                    required.add(p.name)
        return names, required


class Registry(Mapping[str, Entry]):
    """Mapping ``name -> Entry``; registering a name twice is an error, and so is looking up an unknown one."""

    def __init__(self, kind: str = "corruption") -> None:
        self._kind = kind
        self._entries: dict[str, Entry] = {}

    def register(
        self, name: str, *, out_size: OutSizeFn | None = None, deterministic: bool = False
    ) -> Callable[[CorruptionFn], CorruptionFn]:
        """Decorator: register ``fn`` under ``name``; the function itself is returned unchanged."""

        def decorator(fn: CorruptionFn) -> CorruptionFn:
            if name in self._entries:
                owner = self._entries[name].fn.__module__
                raise ValueError(f"{self._kind} {name!r} is already registered (by {owner})")
            param = inspect.signature(fn).parameters.get("generator")
            if param is None or param.kind is not inspect.Parameter.KEYWORD_ONLY:
                raise TypeError(f"{self._kind} {name!r} must take a keyword-only `generator` argument")
            self._entries[name] = Entry(name, fn, out_size or identity_size, deterministic)
            return fn

        return decorator

    def get(self, name: str) -> Entry:
        """The entry for ``name``; ``KeyError`` listing the known names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self._kind} {name!r}; known: {sorted(self._entries)}") from None

    def __getitem__(self, name: str) -> Entry:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

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


REGISTRY = Registry("corruption")
register = REGISTRY.register
get = REGISTRY.get
validate_params = REGISTRY.validate_params


def apply(name: str, x: Tensor, *, generator: Generator, **params: Any) -> Tensor:
    """Validate ``params`` and run corruption ``name`` on ``x`` (B, C, H, W) float in [0, 1]."""
    validate_params(name, params)
    return get(name).fn(x, generator=generator, **params)
