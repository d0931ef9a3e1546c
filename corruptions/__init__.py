"""Degradation models for IPT: pure torch/numpy functions keyed by name in an explicit registry.

Adding a corruption: one module that decorates its function with ``@register("<name>")``, one import line below,
one ``corrupt.tasks`` entry in ``params.yaml``. ``tests/test_corruptions/test_contract.py`` covers it.
"""

# One line per corruption module; importing it registers the corruption. No file scanning, no other side effects.
from . import (  # noqa: F401
    bicubic_down,
    gaussian_noise,
    jpeg,
    rain_streaks,
)
from ._imresize import imresize_float, imresize_uint8, round_half_away_uint8
from ._rng import sample_generator, seed_from
from .registry import REGISTRY, Entry, ParamsError, Registry, apply, check_params, get, register, validate_params

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
    "register",
    "round_half_away_uint8",
    "sample_generator",
    "seed_from",
    "validate_params",
]
