"""Shared fixtures: tiny model specs, the official golden fixture, and the optional ../shared data root."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from ipt.config import OFFICIAL_PRETRAIN_TASKS, ModelSpec

ROOT = Path(__file__).resolve().parents[1]
# The checkout's prefect.toml points a shell at `make prefect-server` (127.0.0.1:4200); tests use their own servers,
# or Prefect's temporary one (what an empty PREFECT_API_URL means), never a server that happens to run there.
os.environ.setdefault("PREFECT_API_URL", "")
FIXTURES = ROOT / "tests" / "fixtures"
SHARED = Path(os.environ.get("IPT_SHARED", ROOT.parent / "shared"))
BENCHMARK_ROOT = Path(os.environ.get("IPT_BENCHMARK_ROOT", SHARED / "benchmarks"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The end-to-end pipeline test first: under `pytest -n 2` (make test) its ~6 minutes then run beside the rest
    of the suite instead of after it."""
    items.sort(key=lambda item: 0 if item.path.name == "test_e2e_pipeline.py" else 1)


def with_root_on_path(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the checkout first on PYTHONPATH for child processes, keeping what was there (a machine without
    the venv, such as the lent GPU, finds the carried wheels through PYTHONPATH)."""
    rest = env.get("PYTHONPATH", "")
    return env | {"PYTHONPATH": str(ROOT) + (os.pathsep + rest if rest else "")}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for torchrun's master and test servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running_under_ci() -> bool:
    """CI=true (or 1, yes), as .ci/run sets it: read at call time, so a test of the guard can set it."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


CI = running_under_ci()
if CI:  # under CI a dependency of the project is never optional: importorskip fails instead of skipping
    import importlib

    def _import_or_fail(modname: str, *args, **kwargs):
        try:
            return importlib.import_module(modname)
        except ImportError as e:
            pytest.fail(f"{modname} is not importable under CI ({e}); it is a dependency of the project", pytrace=False)

    pytest.importorskip = _import_or_fail

# The benchmark sets ../shared/benchmarks holds (its MANIFEST.md); others (Urban100) are never there, so a test that
# wants one skips under CI too.
SHARED_DATASETS = ("Set5", "Set14", "B100", "CBSD68", "McMaster", "Rain100L")


def require_shared(path: Path, what: str) -> Path:
    """The one guard for tests that need ../shared: ``path`` when it exists; otherwise the test is skipped, naming
    ``what`` is missing and where it was looked for; under CI (CI=true, .ci/run sets it) it fails instead, since CI
    runs with ../shared beside the checkout and the golden and bit-exact tests must never pass by not running."""
    if path.exists():
        return path
    why = f"{what} not found at {path} (../shared, or $IPT_SHARED / $IPT_BENCHMARK_ROOT)"
    if running_under_ci():
        pytest.fail(f"{why}; CI=true runs with ../shared beside the checkout", pytrace=False)
    pytest.skip(why)


def require_benchmark(name: str, root: Path = BENCHMARK_ROOT) -> Path:
    """``root/name`` for a benchmark set through require_shared; a set ../shared does not hold is skipped even
    under CI, saying so."""
    if name not in SHARED_DATASETS and not (root / name).is_dir():
        pytest.skip(f"{name} is not one of the sets ../shared/benchmarks holds and is not under {root}")
    return require_shared(root / name, f"benchmark set {name}")


@pytest.fixture
def sqlite_mlflow_uri(tmp_path, monkeypatch) -> str:
    """A fresh MLflow sqlite store (tracking and registry) for this test, exported as MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path, monkeypatch) -> None:
    """No test reads the checkout's params.yaml or writes an mlflow.db into it unless it asks to."""
    for name in ("IPT_MLFLOW_RUN_ID", "IPT_MLFLOW_PARENT_RUN_ID", "IPT_PIPELINE_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IPT_PARAMS", "none")
    monkeypatch.setenv("IPT_TRACKING", "off")  # stages start no MLflow run of their own (tests that want one: "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'autouse-mlflow.db'}")
    monkeypatch.setenv("IPT_MODEL_CACHE", str(tmp_path / "model-cache"))  # models:/ downloads, never ~/.cache


@pytest.fixture
def one_torch_thread():
    """PTG-RM's many small ops run ~5x slower on 2 threads when the other core is busy (PTGRM_REFERENCE 7)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def golden() -> dict:
    """Outputs of the official code for a tiny random-weight IPT (../shared/golden/README.md). 11 MB of weights and
    outputs: read from ../shared (or $IPT_SHARED), never copied into the repository; skipped when absent."""
    path = require_shared(SHARED / "golden" / "ipt_tiny_golden_fixture.pt", "the official golden outputs")
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def golden_spec() -> ModelSpec:
    return ModelSpec.for_tasks(OFFICIAL_PRETRAIN_TASKS, n_feats=16, num_layers=2, num_queries=6)


@pytest.fixture
def tiny_spec() -> ModelSpec:
    """A CPU-sized IPT: 8 features, 1 layer, 2 heads, 12-px windows, two tasks."""
    return ModelSpec.for_tasks(["sr_x2", "denoise_s30"], n_feats=8, num_layers=1, num_heads=2, patch_size=12)


@pytest.fixture
def benchmark_root() -> Path:
    """The benchmark root (../shared/benchmarks or $IPT_BENCHMARK_ROOT), required to hold at least Set5."""
    require_benchmark("Set5")
    return BENCHMARK_ROOT


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real temporary Prefect server (sqlite) on 127.0.0.1 for the whole session."""
    pytest.importorskip("prefect")
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect_home"))  # per pytest worker, never the checkout's
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
