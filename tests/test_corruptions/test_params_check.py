"""Bad corruption params are refused up front with a message naming the parameter (``check_params``, the ``check``
hook, the functions' own validation), never a TypeError/ZeroDivisionError traceback or a silently wrong image."""

from __future__ import annotations

import math

import pytest
import torch

from corruptions import ParamsError, Registry, apply, check_params, get
from corruptions.bicubic_down import bicubic_down_size

BAD = [
    ("gaussian_noise", {"sigma": math.nan}, r"sigma must be a finite number, got nan"),
    ("gaussian_noise", {"sigma": math.inf}, r"sigma must be a finite number, got inf"),
    ("gaussian_noise", {"sigma": "thirty"}, r"sigma must be a finite number >= 0 .*got 'thirty'"),
    ("gaussian_noise", {"sigma": -1}, r"sigma must be a finite number >= 0 .*got -1"),
    ("gaussian_noise", {"sigma": None}, r"sigma must be a finite number >= 0 .*got None"),
    ("gaussian_noise", {"sigma": [30]}, r"sigma must be a finite number >= 0 .*got \[30\]"),
    ("rain_streaks", {"length": 20}, r"length must be a range \[lo, hi\] .*got 20"),
    ("rain_streaks", {"length": "ab"}, r"length must be a range \[lo, hi\] .*got 'ab'"),
    ("rain_streaks", {"angle": [-20, "x"]}, r"angle must be a range \[lo, hi\] .*got \[-20, 'x'\]"),
    ("rain_streaks", {"intensity": [0.3, math.nan]}, r"intensity\[1\] must be a finite number, got nan"),
    ("rain_streaks", {"density": "high"}, r"density must be a number in \[0, 1\], got 'high'"),
    ("rain_streaks", {"width": 0}, r"width must be a finite number > 0 .*got 0"),
    ("bicubic_down", {"scale": 0}, r"scale must be a positive integer .*got 0"),
    ("bicubic_down", {"scale": 2.5}, r"scale must be a positive integer .*got 2.5"),
    ("bicubic_down", {"scale": "2"}, r"scale must be a positive integer .*got '2'"),
    ("bicubic_down", {"scale": True}, r"scale must be a positive integer .*got True"),
    ("jpeg", {"quality": "10"}, r"jpeg quality must be an integer in 1\.\.95, got '10'"),
    ("jpeg", {"quality": 0}, r"jpeg quality must be in 1\.\.95, got 0"),
    ("gaussian_noise", {"sigma": 30, "sigmaa": 3}, r"unknown \['sigmaa'\]"),
    ("gaussian_noise", {"sigma": {1, 2}}, r"sigma must be a number, string, boolean or a list of them"),
]


@pytest.mark.parametrize(("name", "params", "message"), BAD, ids=[f"{n}-{p}" for n, p, _ in BAD])
def test_check_params_names_the_bad_parameter(name: str, params: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        check_params(name, params)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("gaussian_noise", {"sigma": 30}),
        ("gaussian_noise", {"sigma": 0.5}),
        ("bicubic_down", {"scale": 2}),
        ("bicubic_down", {"scale": 4.0}),
        ("jpeg", {"quality": 10}),
        ("rain_streaks", {}),
        ("rain_streaks", {"density": 0.01, "length": [10, 40], "angle": (-30, 30), "intensity": [0.5, 0.9]}),
    ],
)
def test_check_params_accepts_good_params(name: str, params: dict) -> None:
    check_params(name, params)


def test_the_functions_themselves_refuse_bad_values_with_a_value_error() -> None:
    """Called directly (``apply``), bad values are a ValueError naming the key, not whatever the arithmetic hits."""
    x, gen = torch.rand(1, 3, 8, 8), torch.Generator()
    with pytest.raises(ValueError, match="sigma must be a finite number"):
        apply("gaussian_noise", x, generator=gen, sigma=math.nan)  # used to return all zeros after quantizing
    with pytest.raises(ValueError, match="sigma must be a finite number"):
        apply("gaussian_noise", x, generator=gen, sigma="thirty")  # was TypeError: '<' not supported
    with pytest.raises(ValueError, match="length must be a range"):
        apply("rain_streaks", x, generator=gen, length=20)  # was TypeError: object of type 'int' has no len()
    with pytest.raises(ValueError, match="scale must be a positive integer"):
        bicubic_down_size(8, 8, scale=0)  # was ZeroDivisionError
    with pytest.raises(ValueError, match="scale must be a positive integer"):
        get("bicubic_down").out_size(8, 8, scale=math.nan)


def _toy_registry() -> Registry:
    reg = Registry()

    @reg.register("divide")
    def divide(x: torch.Tensor, *, generator: torch.Generator, by: float) -> torch.Tensor:
        """Output in [0, 1] for by >= 1."""
        return x / by  # no validation of its own: by=0 gives inf, by="2" a TypeError

    @reg.register("crop", out_size=lambda h, w, *, n: (h - n, w - n))
    def crop(x: torch.Tensor, *, generator: torch.Generator, n: int) -> torch.Tensor:
        """Output in [0, 1]."""
        return x[..., : x.shape[-2] - n, :]  # bug: forgets the width

    calls = []

    def check(*, level: int) -> None:
        calls.append(level)
        if level not in (1, 2):
            raise ValueError(f"level must be 1 or 2, got {level!r}")

    @reg.register("hooked", check=check)
    def hooked(x: torch.Tensor, *, generator: torch.Generator, level: int) -> torch.Tensor:
        """Output in [0, 1]."""
        return x

    reg.calls = calls  # type: ignore[attr-defined]
    return reg


def test_a_users_corruption_without_hook_is_checked_by_a_trial_run() -> None:
    reg = _toy_registry()
    reg.check_params("divide", {"by": 2})
    with pytest.raises(ParamsError, match=r"'divide': a trial run gives NaN or infinite values"):
        reg.check_params("divide", {"by": 0})
    with pytest.raises(ParamsError, match=r"'divide': a trial run on a 16x16 image fails \(TypeError: "):
        reg.check_params("divide", {"by": "2"})
    with pytest.raises(ParamsError, match=r"by must be a finite number, got nan"):
        reg.check_params("divide", {"by": math.nan})
    with pytest.raises(ParamsError, match=r"'crop': a trial run on a 16x16 image gives \(1, 3, 14, 16\), expected"):
        reg.check_params("crop", {"n": 2})


def test_the_optional_check_hook_runs_first_and_its_message_is_kept() -> None:
    reg = _toy_registry()
    reg.check_params("hooked", {"level": 2})
    with pytest.raises(ParamsError, match=r"^level must be 1 or 2, got 3 \(bad parameters for corruption 'hooked'\)"):
        reg.check_params("hooked", {"level": 3})
    assert reg.calls == [2, 3]  # type: ignore[attr-defined]
    assert reg.get("hooked").check is not None and reg.get("divide").check is None
    with pytest.raises(KeyError, match="unknown corruption 'nope'"):
        reg.check_params("nope", {})
