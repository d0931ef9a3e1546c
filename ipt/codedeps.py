"""The project files a command runs: the import closure of its entry modules, from parsing them (nothing is imported).

Design notes: docs/data_pipeline.md#what-dvc-knows.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

PACKAGES = ("ipt", "corruptions")  # the project's own top-level packages
ROOT = Path(__file__).resolve().parents[1]  # the folder that holds the packages (the checkout, or site-packages)


def module_path(name: str, root: Path = ROOT) -> Path | None:
    """``ipt.cli.data`` -> ``<root>/ipt/cli/data.py`` (or the package's ``__init__.py``); None if not a project file."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _resolve(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


@cache
def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imports_of(name: str, root: Path = ROOT) -> set[str]:
    """The project modules the module or package ``name`` imports (any import statement, anywhere in it)."""
    path = module_path(name, root)
    if path is None:
        return set()
    package = _package_of(name, path)
    found: set[str] = set()
    for node in ast.walk(_parsed(path)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(node, package)
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{mod}.{alias.name}"
                found.add(sub if module_path(sub, root) is not None else mod)
    return {m for m in found if m and module_path(m, root) is not None}


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def closure_modules(entries: Iterable[str], root: Path = ROOT) -> set[str]:
    """Every project module that importing ``entries`` runs (their parent packages included)."""
    todo = [p for e in entries for p in _with_parents(e)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or module_path(name, root) is None:
            continue
        seen.add(name)
        todo += [p for m in imports_of(name, root) for p in _with_parents(m)]
    return seen


def closure(entries: Iterable[str], root: Path = ROOT) -> list[str]:
    """:func:`closure_modules` as sorted file paths relative to ``root`` (``ipt/cli/__init__.py`` ...)."""
    return sorted(module_path(m, root).relative_to(root).as_posix() for m in closure_modules(entries, root))


def plugins(package: str = "corruptions", root: Path = ROOT) -> set[str]:
    """The modules ``package``'s catalog lists (``corruptions.bicubic_down`` ...)."""
    return imports_of(f"{package}.catalog", root)


def plugin_file(name: str, package: str = "corruptions", root: Path = ROOT) -> str:
    """The file of registered plugin ``name`` (a corruption's registry name is its module's name)."""
    return f"{package}/{name}.py"


def digest(files: Iterable[str], root: Path = ROOT) -> str:
    """sha256 over the names and bytes of ``files`` (paths relative to ``root``), in sorted order."""
    h = hashlib.sha256()
    for rel in sorted(set(files)):
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ stage commands


def command_entries(argv: list[str]) -> list[str]:
    """The entry modules of one stage command: ``python -m ipt.cli launch pretrain ...`` -> the ``ipt.cli``
    package's ``__main__``, the launch module and the module of the stage it launches."""
    if len(argv) < 3 or argv[1] != "-m" or argv[2].split(".")[0] not in PACKAGES:
        return []  # `python -c ...` and the like run no project module
    if argv[2] != "ipt.cli":
        return [argv[2]]
    from ipt.cli.commands import COMMANDS  # a table of names only (no subcommand module is imported)

    rest = [a for a in argv[3:] if not a.startswith("-")]
    entries = ["ipt.cli.__main__"]
    for command in rest[:1] + (rest[1:2] if rest[:1] == ["launch"] else []):
        if command in COMMANDS:
            entries.append(f"ipt.cli.{COMMANDS[command][0]}")
    return entries


def stage_code(command: str, corruption: str | None = None, root: Path = ROOT) -> list[str]:
    """The code deps of the DVC stage that runs ``ipt <command>`` (and ``corruption``'s module, when the stage runs
    one): what dvc.yaml lists and what the data stages hash into their plan."""
    files = closure(command_entries(["python", "-m", "ipt.cli", command]), root)
    if corruption is not None:
        files = sorted({*files, plugin_file(corruption, root=root)})
    return files


def stage_digest(command: str, corruption: str | None = None, root: Path = ROOT) -> str:
    """sha256 of :func:`stage_code`: part of a data stage's plan digest, so a code change that makes DVC rerun the
    stage also makes it rewrite its shards instead of reusing them."""
    return digest(stage_code(command, corruption, root), root)


# ------------------------------------------------------------------------------------------------ dvc.yaml

BEGIN, END = "# code:", "# end code"
_TEMPLATE = re.compile(r"\$\{[^}]+\}")


def stage_commands(body: dict) -> list[list[str]]:
    cmd = body.get("cmd")
    cmds = cmd if isinstance(cmd, list) else [cmd]
    return [str(c).split() for c in cmds if c]


def expected_code_deps(body: dict, root: Path = ROOT) -> list[str]:
    """The code deps one dvc.yaml stage body should list: the closure of its commands' entry modules, plus the
    ``corruptions/${item.name}.py`` it declares for the task's own corruption."""
    entries = [e for argv in stage_commands(body) for e in command_entries(argv)]
    files = set(closure(entries, root))
    own = [d for d in body.get("deps") or [] if isinstance(d, str) and _TEMPLATE.search(d) and d.endswith(".py")]
    return sorted(files) + own


def write_dvc_yaml(path: Path, root: Path = ROOT) -> bool:
    """Rewrite the ``# code: ...`` ... ``# end code`` block of each stage's deps in ``path`` from the code; True
    if anything changed. Everything outside the blocks (comments included) is kept as it is."""
    import yaml

    text = path.read_text()
    stages = (yaml.safe_load(text) or {}).get("stages") or {}
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    stage = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^  (\S[^:]*):\s*$", line)
        if m:
            stage = m.group(1)
        out.append(line)
        if line.strip().startswith(BEGIN):
            indent = line[: len(line) - len(line.lstrip())]
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(END):
                j += 1
            if j == len(lines):
                raise ValueError(f"{path}: stage {stage}: '{BEGIN}' without '{END}'")
            body = stages[stage].get("do", stages[stage])
            out += [f"{indent}- {f}\n" for f in expected_code_deps(body, root)]
            out.append(lines[j])
            i = j
        i += 1
    new = "".join(out)
    if new != text:
        path.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ipt.codedeps", description=__doc__.splitlines()[0])
    p.add_argument("--write", metavar="DVC_YAML", help="rewrite the code deps blocks of this dvc.yaml")
    p.add_argument("command", nargs="*", help="print the code deps of `ipt <command>` (e.g. shard, benchmark)")
    args = p.parse_args(argv)
    if args.write:
        changed = write_dvc_yaml(Path(args.write))
        print(f"{args.write}: {'updated' if changed else 'up to date'}")
    for command in args.command:
        print("\n".join(stage_code(command)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
