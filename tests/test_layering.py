"""Import-direction rules (STYLE C1), checked by parsing every module's imports (those inside functions too)."""

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
    "copy",
}
# Per-file exceptions: the JPEG corruption needs a JPEG codec (Pillow, a core dependency, imported inside the function
# that uses it, in memory only: no file I/O).
# The registry imports a corruption's module by its name (corruptions.get("jpeg") -> corruptions.jpeg).
PURE_EXTRA = {"corruptions/jpeg.py": {"PIL", "io"}, "corruptions/registry.py": {"importlib"}}
# the tracking boundary: runs (tracking), reading registered versions (modeluri), writing them (versions), and the
# MLflow Model flavor of a version (serving)
MLFLOW_MODULES = ("ipt/tracking.py", "ipt/modeluri.py", "ipt/versions.py", "ipt/serving.py")
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
            assert rel in MLFLOW_MODULES, f"{rel} imports mlflow (only {', '.join(MLFLOW_MODULES)} may)"


def test_flows_do_not_import_torch() -> None:
    for path in _modules("flows"):
        for name in _imports(path):
            model = name == "ipt.model" or name.startswith("ipt.model.")
            assert name.split(".")[0] != "torch" and not model, f"{path} imports {name}"


# ---------------------------------------------------------------------------------------------------------------
# The allow-list: each module belongs to one layer and imports only from its own layer or the layers below it; and
# over the whole code base no import chain comes back to where it started.
# ---------------------------------------------------------------------------------------------------------------

LAYERS: list[tuple[str, tuple[str, ...]]] = [  # lowest first; a module is in the first layer one of whose names
    (  # is the module or a package above it
        "core: pure functions and small shared facts",
        (
            "corruptions",
            "ipt.errors",
            "ipt.fileio",
            "ipt.provenance",
            "ipt.inference",
            "ipt.metrics",
            "ipt.model",
            "ipt.tasks",
            "ipt.config",
            "ipt.device",
            "ipt.launch",
        ),
    ),
    ("data and checkpoints: files in, files out", ("ipt.data", "ipt.checkpoint")),
    ("tracking: MLflow runs and reading registered versions", ("ipt.tracking", "ipt.modeluri")),
    (
        "engines: restoring, scoring, training, exporting",
        ("ipt.restore", "ipt.scoring", "ipt.score_report", "ipt.train", "ipt.export"),
    ),
    ("the registry and serving", ("ipt.serving", "ipt.versions", "ipt.registry")),
    ("add-ons: PTG-RM plugs in from above", ("ipt.refine",)),
    ("entry points: the ipt command, experiments", ("ipt.cli", "ipt.codedeps", "ipt.experiment")),
    ("the Python API and the flows", ("ipt", "flows")),
]


def _module_files() -> dict[str, Path]:
    out = {}
    for pkg in ("ipt", "corruptions", "flows"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _module_files()


def _known(name: str) -> str | None:
    """The project module ``name`` refers to (the longest known prefix), or None for a third-party module."""
    parts = name.split(".")
    while parts and ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts) or None


def _edges(module: str) -> set[str]:
    """The project modules ``module`` imports. ``from pkg import sub`` is an edge to ``pkg.sub`` only when ``sub``
    is a module, else to ``pkg``; relative imports are resolved."""
    path = MODULES[module]
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {m for a in node.names if (m := _known(a.name))}
        elif isinstance(node, ast.ImportFrom):
            src = (
                ".".join(base[: len(base) - node.level + 1] + [node.module or ""]).strip(".")
                if node.level
                else node.module
            )
            for a in node.names:
                m = _known(f"{src}.{a.name}") if f"{src}.{a.name}" in MODULES else _known(src or "")
                if m:
                    found.add(m)
    found.discard(module)
    return found


GRAPH = {m: _edges(m) for m in MODULES}


def _layer(module: str) -> int:
    for i, (_, names) in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_layering.py: add it where it belongs")


def test_every_module_imports_only_its_own_layer_or_below() -> None:
    climbing = [
        f"{m} ({LAYERS[_layer(m)][0].split(':')[0]}) imports {d} ({LAYERS[_layer(d)][0].split(':')[0]})"
        for m in sorted(GRAPH)
        for d in sorted(GRAPH[m])
        if _layer(d) > _layer(m)
    ]
    assert not climbing, "imports that climb:\n" + "\n".join(climbing)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles() -> None:
    assert not _cycles(GRAPH), f"import cycles: {_cycles(GRAPH)}"


def test_the_structure_checks_can_fail() -> None:
    """The graph is real: known edges are found (a function-level import among them), a planted cycle is seen."""
    assert "ipt.modeluri" in GRAPH["ipt.restore"]  # imported inside open_restorer
    assert "ipt.serving" in GRAPH["ipt.versions"]  # `from ipt import serving`, inside register_files
    assert "ipt.refine" not in {d.rsplit(".", 1)[0] for d in GRAPH["ipt.restore"]}  # the add-on is opened by name
    assert _layer("ipt.restore") > _layer("ipt.inference") and _layer("ipt.cli.restore") > _layer("ipt.restore")
    planted = {k: set(v) for k, v in GRAPH.items()}
    planted["ipt.inference"].add("ipt.restore")  # restore -> inference already
    assert ["ipt.inference", "ipt.restore"] in _cycles(planted)
