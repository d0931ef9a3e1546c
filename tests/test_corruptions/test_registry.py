"""Registry behaviour: duplicate names, unknown names, parameter validation."""

from __future__ import annotations

import pytest
import torch

from corruptions import REGISTRY, Registry, apply, get, validate_params
from corruptions.bicubic_down import bicubic_down_size


def _identity(x: torch.Tensor, *, generator: torch.Generator, strength: float, mode: str = "a") -> torch.Tensor:
    """Identity; output range = input range."""
    return x.clone()


def test_duplicate_name_is_an_error() -> None:
    reg = Registry()
    reg.register("same")(_identity)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("same")(_identity)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(KeyError) as err:
        get("no_such_corruption")
    assert err.value.args[0] == f"unknown corruption 'no_such_corruption'; known: {sorted(REGISTRY)}"


def test_generator_must_be_keyword_only() -> None:
    reg = Registry()
    with pytest.raises(TypeError, match="generator"):
        reg.register("bad")(lambda x, generator: x)


def test_validate_params_names_unknown_and_missing() -> None:
    reg = Registry()
    reg.register("toy")(_identity)
    reg.validate_params("toy", {"strength": 1.0})
    reg.validate_params("toy", {"strength": 1.0, "mode": "b"})
    with pytest.raises(TypeError, match=r"unknown \['strenght'\], missing \['strength'\]"):
        reg.validate_params("toy", {"strenght": 1.0})
    with pytest.raises(TypeError, match="generator"):  # generator is not a params.yaml key
        reg.validate_params("toy", {"strength": 1.0, "generator": None})


def test_apply_validates_before_running() -> None:
    with pytest.raises(TypeError, match="missing \\['sigma'\\]"):
        apply("gaussian_noise", torch.zeros(1, 1, 4, 4), generator=torch.Generator())
    with pytest.raises(TypeError, match="unknown \\['sigma'\\]"):
        validate_params("bicubic_down", {"scale": 2, "sigma": 3})


def test_entries_and_out_size() -> None:
    assert get("bicubic_down").deterministic and not get("gaussian_noise").deterministic
    assert get("bicubic_down").out_size(7, 9, scale=4) == bicubic_down_size(7, 9, scale=4) == (2, 3)
    assert get("rain_streaks").out_size(7, 9, density=0.1) == (7, 9)
