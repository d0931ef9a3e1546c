"""Degradation models for IPT: pure torch/numpy functions keyed by name in an explicit registry.

Adding a corruption: one module ``corruptions/<name>.py`` that decorates its function with ``@register("<name>")``,
one import line in ``corruptions/catalog.py``, one ``corrupt.tasks`` entry in ``params.yaml``. A name is looked up
by importing its module (``get("jpeg")`` imports ``corruptions.jpeg``; no file scanning), so a stage runs only the
corruption it uses. ``tests/test_corruptions/test_contract.py`` covers every module of the catalog.
"""

from ._imresize import imresize_float, imresize_uint8
from ._levels import quantize_uint8, round_half_away_uint8
from ._rng import numpy_generator, sample_generator, seed_from, seed_of
from .registry import (
    REGISTRY,
    Entry,
    ParamsError,
    Registry,
    apply,
    check_params,
    get,
    known,
    register,
    validate_params,
)

__all__ = [
    "REGISTRY",
    "Entry",
    "ParamsError",
    "Registry",
    "apply",
    "check_params",
    "get",
    "imresize_float",
    "imresize_uint8",
    "known",
    "numpy_generator",
    "quantize_uint8",
    "register",
    "round_half_away_uint8",
    "sample_generator",
    "seed_from",
    "seed_of",
    "validate_params",
]
