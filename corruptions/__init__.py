"""Degradation models for IPT: pure torch/numpy functions keyed by name in an explicit registry.

Adding a corruption: docs/corruptions.md#adding-a-corruption.
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
