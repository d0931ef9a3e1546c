"""The one guard for tests that need ../shared (conftest.require_shared): skip elsewhere, fail under CI=true, and the
MATLAB bit-exact resize tests go through it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, require_benchmark, require_shared, with_root_on_path


@pytest.mark.parametrize("value", ["", "false", "0"])
def test_a_missing_path_skips_outside_ci_naming_it(tmp_path: Path, monkeypatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match=r"the golden outputs not found at .*nowhere") as e:
        require_shared(tmp_path / "nowhere", "the golden outputs")
    assert str(tmp_path / "nowhere") in str(e.value)


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes"])
def test_a_missing_path_fails_under_ci_naming_it(tmp_path: Path, monkeypatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match=r"the golden outputs not found at .*nowhere.*CI=true") as e:
        require_shared(tmp_path / "nowhere", "the golden outputs")
    assert str(tmp_path / "nowhere") in str(e.value)


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_present_path_is_returned_under_ci_or_not(tmp_path: Path, monkeypatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    (tmp_path / "Set5").mkdir()
    assert require_shared(tmp_path / "Set5", "Set5") == tmp_path / "Set5"
    assert require_benchmark("Set5", tmp_path) == tmp_path / "Set5"


def test_a_set_shared_never_holds_skips_even_under_ci(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.skip.Exception, match="Urban100 is not one of the sets"):
        require_benchmark("Urban100", tmp_path)
    with pytest.raises(pytest.fail.Exception, match="benchmark set B100 not found"):
        require_benchmark("B100", tmp_path)


def _pytest(tmp_path: Path, ci: str | None, *tests: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_XDIST_WORKER", "PYTEST_CURRENT_TEST")}
    env |= {"IPT_BENCHMARK_ROOT": str(tmp_path / "no-benchmarks"), "IPT_SHARED": str(tmp_path / "no-shared")}
    if ci is not None:
        env["CI"] = ci
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-rfs", *tests]
    return subprocess.run(cmd, cwd=ROOT, env=with_root_on_path(env), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_bit_exact_resize_and_golden_tests_fail_under_ci_and_skip_elsewhere(tmp_path: Path) -> None:
    """In a child pytest with ../shared pointed at nothing: the MATLAB bit-exact resize tests (which used to skip
    even under CI=true) and a golden parity test fail under CI=true, naming what is missing; without CI they skip."""
    tests = (
        "tests/test_corruptions/test_imresize.py::test_matlab_fixture_exact[2]",
        "tests/test_corruptions/test_imresize.py::test_benchmark_lr_exact[2-Set14]",
        "tests/test_model.py::test_matches_official_outputs[0]",
    )
    under_ci = _pytest(tmp_path, "true", *tests)
    out = under_ci.stdout + under_ci.stderr
    assert under_ci.returncode == 1, out
    assert "1 failed, 2 errors" in out, out  # a guard in a fixture is an error at setup, in the test a failure
    assert f"benchmark set Set5 not found at {tmp_path / 'no-benchmarks' / 'Set5'}" in out, out
    assert f"the Set14 x2 LR files not found at {tmp_path / 'no-benchmarks' / 'Set14' / 'LR_bicubic' / 'X2'}" in out
    assert f"the official golden outputs not found at {tmp_path / 'no-shared'}" in out, out
    elsewhere = _pytest(tmp_path, None, *tests)
    out = elsewhere.stdout + elsewhere.stderr
    assert elsewhere.returncode == 0 and "3 skipped" in out, out
    assert "benchmark set Set5 not found" in out and "the official golden outputs not found" in out, out
