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


def test_a_duplicate_names_the_module_that_registered_it_first() -> None:
    reg = Registry()
    reg.register("same")(_identity)
    with pytest.raises(ValueError, match=rf"^corruption 'same' is already registered \(by {__name__}\)$"):
        reg.register("same")(_identity)


def test_entries_keep_their_name_and_determinism() -> None:
    assert REGISTRY["jpeg"] is get("jpeg") and get("jpeg").name == "jpeg"
    assert get("jpeg").deterministic is True and get("gaussian_noise").deterministic is False
    reg = Registry()
    reg.register("toy")(_identity)  # not said: random
    assert reg["toy"].deterministic is False and reg["toy"].name == "toy"


def _fake_package(root, name: str) -> None:
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from corruptions import Registry\nREG = Registry('toy', package=__name__)\n")
    body = "from {p} import REG\n\n@REG.register('{m}')\ndef f(x, *, generator):\n    return x\n"
    for m in ("blur", "other"):
        (pkg / f"{m}.py").write_text(body.format(p=name, m=m))
    (pkg / "catalog.py").write_text(f"from {name} import blur, other  # noqa: F401\n")


def test_a_package_registry_imports_a_name_on_first_use_and_nothing_odd(tmp_path, monkeypatch) -> None:
    import importlib
    import sys

    _fake_package(tmp_path, "lazy_corr_pkg")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = importlib.import_module("lazy_corr_pkg").REG
    try:
        assert 3 not in reg and "Blur" not in reg and "blur.x" not in reg  # never imported from such names
        assert "lazy_corr_pkg.other" not in sys.modules
        assert "blur" in reg and "lazy_corr_pkg.blur" in sys.modules  # imported on first use
        assert "lazy_corr_pkg.other" not in sys.modules
        assert reg.get("other").name == "other"
        with pytest.raises(KeyError, match=r"unknown toy 'nope'; known: \['blur', 'other'\]"):
            reg.get("nope")
        plain = Registry("toy")  # no package: nothing is imported for it
        assert "blur" not in plain and plain.known() == []
    finally:
        for m in [m for m in sys.modules if m.startswith("lazy_corr_pkg")]:
            del sys.modules[m]


def test_first_lines_of_errors() -> None:
    from corruptions.registry import _first_line

    assert _first_line(KeyError("no such\nsecond")) == "no such"  # a KeyError's text, not its repr
    assert _first_line(KeyError()) == "KeyError"
    assert _first_line(ValueError("")) == "ValueError"
    assert _first_line(ValueError("  one\ntwo")) == "one"
    assert _first_line(ValueError("a", "b")) == "('a', 'b')"


def test_params_mappings_need_string_keys() -> None:
    from corruptions import ParamsError
    from corruptions.registry import _check_plain

    _check_plain("p", {"a": [1, 2.5, "x", None, True], "b": {"c": 1}})
    with pytest.raises(ParamsError, match=r"^p must have string keys, got 1$"):
        _check_plain("p", {1: 2})
    with pytest.raises(ParamsError, match=r"^p\.b\.c must be a finite number, got nan$"):
        _check_plain("p", {"b": {"c": float("nan")}})
