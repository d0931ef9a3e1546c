"""Import-direction rules (STYLE C1), checked by parsing every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PURE = ["corruptions", "ipt/model", "ipt/inference.py", "ipt/config.py", "ipt/metrics.py"]
PURE_ALLOWED = {"torch", "numpy", "__future__", "ipt", "corruptions"} | {
    "math",
    "re",
    "dataclasses",
    "typing",
    "collections",
    "functools",
    "hashlib",
    "struct",
    "inspect",
    "itertools",
    "warnings",
    "enum",
    "abc",
    "json",
}
# Per-file exceptions: the JPEG corruption needs a JPEG codec (Pillow, a core dependency, imported inside the function
# that uses it, in memory only: no file I/O).
# The registry imports a corruption's module by its name (corruptions.get("jpeg") -> corruptions.jpeg).
PURE_EXTRA = {"corruptions/jpeg.py": {"PIL", "io"}, "corruptions/registry.py": {"importlib"}}
NO_ORCHESTRATION = ["ipt"]  # nothing in ipt/ but ipt/tracking.py imports mlflow; nothing imports prefect or dvc
FORBIDDEN_IN_PURE_FROM_IPT = ("ipt.data", "ipt.cli", "ipt.checkpoint", "ipt.tracking", "ipt.train")


def _modules(rel: str) -> list[Path]:
    p = ROOT / rel
    return [p] if p.is_file() else sorted(p.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    "path", [p for rel in PURE for p in _modules(rel)], ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_pure_modules_import_only_torch_numpy_and_stdlib(path: Path) -> None:
    for name in _imports(path):
        allowed = PURE_ALLOWED | PURE_EXTRA.get(path.relative_to(ROOT).as_posix(), set())
        assert name.split(".")[0] in allowed, f"{path.relative_to(ROOT)} imports {name}"
        assert not name.startswith(FORBIDDEN_IN_PURE_FROM_IPT), f"{path.relative_to(ROOT)} imports {name}"


@pytest.mark.parametrize(
    "path", [p for rel in NO_ORCHESTRATION for p in _modules(rel)], ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_orchestration_stays_at_the_boundary(path: Path) -> None:
    for name in _imports(path):
        top = name.split(".")[0]
        assert top not in ("prefect", "dvc"), f"{path.relative_to(ROOT)} imports {name}"
        if top == "mlflow":  # the tracking boundary, and the MLflow Model flavor of registered versions
            rel = path.relative_to(ROOT).as_posix()
            assert rel in ("ipt/tracking.py", "ipt/serving.py"), f"{rel} imports mlflow (only tracking/serving may)"


def test_flows_do_not_import_torch() -> None:
    for path in _modules("flows"):
        for name in _imports(path):
            assert name.split(".")[0] != "torch" and not name.startswith("ipt.model"), f"{path} imports {name}"
