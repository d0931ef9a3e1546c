"""Bad corruption params are refused up front with a message naming the parameter (``check_params``, the ``check``
hook, the functions' own validation), never a TypeError/ZeroDivisionError traceback or a silently wrong image."""

from __future__ import annotations

import math
import re

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


def test_the_size_rules_check_every_parameter_themselves() -> None:
    from corruptions.bicubic_down import bicubic_down_size
    from corruptions.blur_down import blur_down_size

    assert blur_down_size(7, 9, scale=3) == (3, 3) and blur_down_size(6, 9, scale=3, sigma=0.5, size=3) == (2, 3)
    assert bicubic_down_size(7, 9, scale=2) == (4, 5)
    with pytest.raises(ValueError, match="^sigma must be"):
        blur_down_size(7, 9, scale=3, sigma=-1.0)
    with pytest.raises(ValueError, match="^size must be"):
        blur_down_size(7, 9, scale=3, size=4)
    with pytest.raises(ValueError, match="^scale must be"):
        bicubic_down_size(7, 9, scale=0)


def test_blur_down_check_defaults_and_each_bound() -> None:
    from corruptions.blur_down import check_blur_down

    assert check_blur_down(scale=3) == (3, 1.6, 7)  # the RDN BD defaults
    assert check_blur_down(scale=1, sigma=1e-3, size=1) == (1, 0.001, 1)  # the smallest accepted
    assert check_blur_down(scale=2.0, sigma=2, size=9.0) == (2, 2.0, 9)
    for bad in (0, 2.5, float("nan"), "2", True):
        with pytest.raises(ValueError, match=rf"^scale must be a positive integer \(the SR factor\), got {bad!r}$"):
            check_blur_down(scale=bad)
    for bad in (0, -1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match=r"^sigma must be a finite number > 0 \(the blur's std in pixels\), got "):
            check_blur_down(scale=2, sigma=bad)
    for bad in (8, 0, -1, 1.5, 2.5, float("nan")):
        with pytest.raises(ValueError, match=r"^size must be an odd positive integer \(the kernel's side in pixels\)"):
            check_blur_down(scale=2, size=bad)


def test_bicubic_scale_one_is_accepted() -> None:
    from corruptions.bicubic_down import check_scale

    assert check_scale(scale=1) == 1 and check_scale(scale=4.0) == 4
    for bad in (0, -2, 1.5, float("inf")):
        with pytest.raises(ValueError, match=r"^scale must be a positive integer \(the SR factor\), got "):
            check_scale(scale=bad)


def test_trial_run_failures_are_named_in_one_line() -> None:
    from corruptions import Registry

    reg = Registry()

    def bad_size(h: int, w: int, **params) -> tuple[int, int]:
        raise ValueError("no size\nsecond line")

    @reg.register("sized", out_size=bad_size)
    def sized(x, *, generator):
        return x

    @reg.register("boom")
    def boom(x, *, generator):
        raise ValueError("boom\nsecond line")

    @reg.register("listed")
    def listed(x, *, generator):
        return [1]

    @reg.register("seeded")
    def seeded(x, *, generator):
        if not isinstance(generator, torch.Generator):
            raise TypeError("no generator given")
        return x

    what = "bad parameters for corruption"
    with pytest.raises(ParamsError, match=rf"^{what} 'sized': its output size fails \(ValueError: no size\)$"):
        reg.check_params("sized", {})
    with pytest.raises(ParamsError, match=rf"^{what} 'boom': a trial run on a 16x16 image fails \(ValueError: boom\)$"):
        reg.check_params("boom", {})
    with pytest.raises(ParamsError, match=rf"^{what} 'listed': a trial run on a 16x16 image gives list, expected "):
        reg.check_params("listed", {})
    reg.check_params("seeded", {})  # the trial run passes a generator of its own


def test_plain_values_name_an_odd_type() -> None:
    from corruptions.registry import _check_plain

    with pytest.raises(
        ParamsError, match=r"^p\[1\] must be a number, string, boolean or a list of them, got \{1\} \(set\)$"
    ):
        _check_plain("p", [0, {1}])


def test_rain_params_bounds_defaults_and_messages() -> None:
    from corruptions.rain_streaks import check_rain_params, rain_layer

    assert check_rain_params() == {
        "density": 0.0027,
        "width": 0.6,
        "length": (15.0, 35.0),
        "angle": (-20.0, 20.0),
        "intensity": (0.3, 0.6),
    }
    edges = check_rain_params(density=0, length=[0, 0.5], angle=[-90, 90], intensity=[0, 0])
    assert edges["density"] == 0.0 and edges["length"] == (0.0, 0.5) and edges["angle"] == (-90.0, 90.0)
    assert check_rain_params(density=1)["density"] == 1.0 and check_rain_params(angle=[90, 90])["angle"] == (90.0, 90.0)
    with pytest.raises(ValueError, match=r"^density must be a number in \[0, 1\], got 1\.5$"):
        check_rain_params(density=1.5)
    bad = {
        "length": ([-1, 5], "0.0 <= lo <= hi, got"),
        "angle": ([-90.5, 0], "-90.0 <= lo <= hi <= 90.0, got"),
        "intensity": ([-0.1, 0.2], "0.0 <= lo <= hi, got"),
    }
    for name, (value, bounds) in bad.items():
        msg = rf"^{name} must be a range \[lo, hi\] of two finite numbers with {re.escape(bounds)} "
        with pytest.raises(ValueError, match=msg):
            check_rain_params(**{name: value})
    for angle in ([0, 90.5], [-100, 10], [5, 3]):  # past either end, or lo above hi
        with pytest.raises(ValueError, match=r"^angle must be a range"):
            check_rain_params(angle=angle)
    g = torch.Generator().manual_seed(0)
    layer = rain_layer(9, 11, generator=g, density=0.05, length=(5, 5), angle=(0, 0), intensity=(1, 1), width=0.6)
    assert layer.shape == (9, 11) and layer.device.type == "cpu" and layer.dtype == torch.float32  # the defaults
