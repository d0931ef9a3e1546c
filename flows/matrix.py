"""Several experiments' paired differences as one matrix: rows the change made to the reference, columns the score.

The leave-one-type-out question (docs/experiments.md, question e) is one experiment file per scored task, each
pairing pretrainings without one corruption type against the pretraining on all of them. This module reads those
files' reports (it runs nothing) and lines their paired differences up: a row per change of the reference (for
``pretrain.tasks``: the corruption types left out, named by params.yaml's ``corrupt.tasks``), a column per score
(task and dataset), each cell the mean paired difference, its paired t and n, marked where the seeds separate it.
A cell a file does not have (a task's own type, which its head needs) is empty.

    python -m flows.matrix experiments/leave_one_out_*.yaml --name leave_one_out --render docs/experiments.md

writes ``experiments/<name>/matrix.md``, ``.json`` and ``matrix.png`` and, with ``--render``, copies the table into
that markdown file as the section ``matrix_<name>``.

``--against REV`` also builds the same matrix from the reports committed at git revision ``REV`` (an earlier run: other
data, other code) and sets the two side by side, cell by cell, with a sentence computed from them: how many cells
keep their verdict (separated with the same sign both times, or neither time) and which change
(``experiments/<name>/against.{md,json}``; ``--render-against DOC`` copies it there as ``matrix_<name>_against``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipt.experiment.spec import Experiment, ExperimentError, load


def _types(exp: Experiment) -> dict[str, str]:
    """task -> its corruption type's name (params.yaml corrupt.tasks[task].name), the task itself where unnamed."""
    tasks = (exp.base.get("corrupt") or {}).get("tasks") or {}
    return {t: str((v or {}).get("name", t)) for t, v in tasks.items()}


def row_label(exp: Experiment, values: dict[str, Any]) -> str:
    """How a variant differs from the reference, in words."""
    parts = []
    for key, ref in exp.reference.as_dict().items():
        val = values.get(key, ref)
        if val == ref:
            continue
        if isinstance(ref, list) and isinstance(val, list):
            gone, new = [x for x in ref if x not in val], [x for x in val if x not in ref]
            if key == "pretrain.tasks":
                kinds = _types(exp)
                gone = sorted({kinds.get(t, t) for t in gone})
                new = sorted({kinds.get(t, t) for t in new})
            parts += [f"without {', '.join(gone)}"] if gone else []
            parts += [f"with {', '.join(new)}"] if new else []
        else:
            parts.append(f"{key}={val}")
    return "; ".join(parts) or "the reference"


def _read(report_file: Path) -> dict[str, Any]:
    if not report_file.is_file():
        raise ExperimentError(f"{report_file}: no report yet; run `python -m flows.experiment` on its file first")
    return json.loads(report_file.read_text())


def reader_at(rev: str) -> Callable[[Path], dict[str, Any]]:
    """A report reader that takes each report as committed at git revision ``rev`` instead of the working tree's."""

    def read(report_file: Path) -> dict[str, Any]:
        folder = report_file.resolve().parent
        try:
            top = subprocess.run(
                ["git", "rev-parse", "--show-toplevel"], cwd=folder, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            raise ExperimentError(f"{report_file}: not in a git checkout, so --against {rev} cannot read it") from None
        rel = report_file.resolve().relative_to(Path(top).resolve()).as_posix()
        out = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=top, capture_output=True, text=True)
        if out.returncode != 0:
            why = (out.stderr.strip().splitlines() or [f"git show exited {out.returncode}"])[-1]
            raise ExperimentError(f"{rel}: not at git revision {rev} ({why})")
        return json.loads(out.stdout)

    return read


def build(files: list[str], read: Callable[[Path], dict[str, Any]] = _read) -> dict[str, Any]:
    columns: list[str] = []
    rows: list[str] = []
    cells: dict[str, dict[str, Any]] = {}
    for f in files:
        exp = load(f)
        report = read(exp.path.parent / exp.name / "report.json")
        scored = exp.score.task + (f" on {exp.score.inputs} inputs" if exp.score.inputs else "")
        col = f"{scored} ({exp.score.dataset}{f', {exp.score.limit} images' if exp.score.limit else ''})"
        if col in columns:
            raise ExperimentError(f"{f}: a second file scoring {col}; one file per column")
        columns.append(col)
        values = {v["variant"]: v["values"] for v in report["variants"]}
        for p in report["paired"]:
            # named variants keep their names; a factor's levels are told by how they differ from the reference
            label = row_label(exp, values[p["variant"]]) if exp.factors else p["variant"]
            rows += [label] if label not in rows else []
            cells[f"{label}|{col}"] = {k: p[k] for k in ("mean", "sd", "t", "t_crit", "n", "separated")} | {
                "file": f,
                "variant": p["variant"],
            }
    return {"rows": rows, "columns": columns, "cells": cells, "files": list(files), "verdict": verdict(cells)}


def verdict(cells: dict[str, dict[str, Any]]) -> str:
    """The sentence under the matrix, from its cells."""
    n = len(cells)
    sep = {k: c for k, c in cells.items() if c["separated"]}
    if not sep:
        text = f"None of the {n} cells is separated from zero by its seeds"
    else:
        named = "; ".join(
            f"{k.split('|')[0]} on {k.split('|')[1]} {c['mean']:+.4f} dB (t {c['t']:.2f})" for k, c in sep.items()
        )
        verb = "is" if len(sep) == 1 else "are"
        text = f"{len(sep)} of {n} cells {verb} separated from zero by their seeds: {named}"
    biggest = max(cells.items(), key=lambda kv: abs(kv[1]["mean"]), default=None)
    if biggest:
        k, c = biggest
        row, col = k.split("|")
        text += f". The largest change is {row} on {col}: {c['mean']:+.4f} dB (t {c['t']:.2f}, n {c['n']})"
    alpha_false = 0.05 * n
    return text + f". ({n} tests at 5%: about {alpha_false:.2f} false separations expected when nothing differs.)"


def _state(c: dict[str, Any] | None) -> str:
    if c is None:
        return "absent"
    return f"separated {c['mean']:+.4f}" if c["separated"] else f"not separated ({c['mean']:+.4f})"


def compare(now: dict[str, Any], then: dict[str, Any], label: str) -> dict[str, Any]:
    """Two matrices of the same files (``then``: an earlier run, ``label`` saying which) cell by cell; the sentence
    counts the cells whose verdict holds (separated both times with the same sign, or neither time)."""
    keys = list(now["cells"]) + [k for k in then["cells"] if k not in now["cells"]]
    rows, kept, same_sign, both = [], 0, 0, 0
    changed = []
    for k in keys:
        a, b = now["cells"].get(k), then["cells"].get(k)
        if a is None or b is None:
            verdict = "in one run only"
        else:
            both += 1
            same_sign += (a["mean"] > 0) == (b["mean"] > 0)
            if a["separated"] and b["separated"]:
                verdict = (
                    "separated both times, same sign"
                    if (a["mean"] > 0) == (b["mean"] > 0)
                    else "separated both times, opposite signs"
                )
            elif not a["separated"] and not b["separated"]:
                verdict = "separated neither time"
            else:
                verdict = "separated now only" if a["separated"] else f"separated in {label} only"
            if verdict in ("separated both times, same sign", "separated neither time"):
                kept += 1
            else:
                row, col = k.split("|")
                changed.append(f"{row} on {col} ({_state(b)} in {label}, {_state(a)} now)")
        rows.append({"cell": k, "now": a, "then": b, "verdict": verdict})
    text = (
        f"Of the {both} cells in both runs, {kept} keep their verdict (separated both times with the same sign, or "
        f"neither time) and {same_sign} {'has' if same_sign == 1 else 'have'} the same sign both times"
    )
    text += "; changed: " + "; ".join(changed) + "." if changed else "."
    return {"label": label, "rows": rows, "files": now["files"], "verdict": text}


def compare_markdown(c: dict[str, Any]) -> str:
    def cell(x: dict[str, Any] | None) -> str:
        if x is None:
            return "-"
        return f"{x['mean']:+.4f} (t {x['t']:.2f}, n {x['n']})" + (" **separated**" if x["separated"] else "")

    lines = [
        f"| variant (against each file's reference) | score | this run | {c['label']} | verdict |",
        "|---|---|---:|---:|---|",
    ]
    for r in c["rows"]:
        row, col = r["cell"].split("|")
        lines.append(f"| {row} | {col} | {cell(r['now'])} | {cell(r['then'])} | {r['verdict']} |")
    return "\n".join(lines) + f"\n\n**Against {c['label']} (computed).** {c['verdict']}\n"


def markdown(m: dict[str, Any], png: str | None = None) -> str:
    head = "| variant (against each file's reference) | " + " | ".join(m["columns"]) + " |"
    lines = [head, "|---|" + "---:|" * len(m["columns"])]
    for r in m["rows"]:
        out = []
        for c in m["columns"]:
            cell = m["cells"].get(f"{r}|{c}")
            if cell is None:
                out.append("-")
            else:
                mark = " **separated**" if cell["separated"] else ""
                out.append(f"{cell['mean']:+.4f} (t {cell['t']:.2f}, n {cell['n']}){mark}")
        lines.append(f"| {r} | " + " | ".join(out) + " |")
    text = "\n".join(lines) + "\n\n"
    text += (
        "Each cell: the mean paired difference in dB (the row's variant minus its file's reference, paired by "
        "seed), its paired t and n; **separated** where |t| exceeds the two-sided 5% threshold for n - 1 degrees "
        "of freedom. '-': the file of that column has no such variant (in the leave-one-out files, a task's own "
        "type is never left out). "
        f"Files: {', '.join('`' + f + '`' for f in m['files'])}.\n\n"
        f"**Answer (computed).** {m['verdict']}\n"
    )
    if png:
        text += f"\n![the matrix]({png})\n"
    return text


def plot(m: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.full((len(m["rows"]), len(m["columns"])), np.nan)
    for i, r in enumerate(m["rows"]):
        for j, c in enumerate(m["columns"]):
            if (cell := m["cells"].get(f"{r}|{c}")) is not None:
                grid[i, j] = cell["mean"]
    lim = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    fig, ax = plt.subplots(figsize=(2.2 + 2.2 * len(m["columns"]), 1.2 + 0.7 * len(m["rows"])))
    im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim)
    for i, r in enumerate(m["rows"]):
        for j, c in enumerate(m["columns"]):
            cell = m["cells"].get(f"{r}|{c}")
            txt = (
                "-" if cell is None else f"{cell['mean']:+.3f}\nt {cell['t']:.1f}" + (" *" if cell["separated"] else "")
            )
            dark = cell is not None and abs(cell["mean"]) > 0.6 * lim
            ax.text(j, i, txt, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(
        range(len(m["columns"])), [c.replace(" (", "\n(").replace(", ", ",\n") for c in m["columns"]], fontsize=8
    )
    ax.set_yticks(range(len(m["rows"])), m["rows"], fontsize=8)
    fig.colorbar(im, ax=ax, label="paired difference (dB)")
    ax.set_title("paired change against each file's reference (* separated)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(m: dict[str, Any], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "matrix.json", "md": folder / "matrix.md", "png": folder / "matrix.png"}
    from flows.experiment import write_text

    write_text(paths["json"], json.dumps(m, indent=1) + "\n")
    plot(m, paths["png"])
    write_text(paths["md"], markdown(m, "matrix.png"))
    return paths


def render(m: dict[str, Any], folder: Path, name: str, target: Path) -> Path:
    rel = Path(os.path.relpath(folder.resolve(), target.resolve().parent)).as_posix()
    from flows.experiment import replace_section, write_text

    write_text(target, replace_section(target.read_text(), f"matrix_{name}", markdown(m, f"{rel}/matrix.png")))
    return target


def render_against(c: dict[str, Any], name: str, target: Path) -> Path:
    from flows.experiment import replace_section, write_text

    write_text(target, replace_section(target.read_text(), f"matrix_{name}_against", compare_markdown(c)))
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.matrix", description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="experiment files, one per column (each with its report)")
    ap.add_argument("--name", required=True, help="writes experiments/<name>/matrix.{md,json,png}")
    ap.add_argument("--render", type=Path, default=None, help="copy the table into this markdown file too")
    ap.add_argument("--against", default=None, help="git revision of an earlier run's reports to set beside these")
    ap.add_argument("--against-label", default=None, help="what that run was (default: 'the reports at REV')")
    ap.add_argument("--render-against", type=Path, default=None, help="copy the --against table into this file")
    a = ap.parse_args(argv)
    try:
        m = build(a.files)
        folder = Path(a.files[0]).parent / a.name
        paths = write(m, folder)
        against = None
        if a.against:
            from flows.experiment import write_text

            against = compare(m, build(a.files, reader_at(a.against)), a.against_label or f"the reports at {a.against}")
            against["revision"] = a.against
            write_text(folder / "against.json", json.dumps(against, indent=1) + "\n")
            write_text(folder / "against.md", compare_markdown(against))
            print(against["verdict"])
        if a.render:
            render(m, folder, a.name, a.render)
        if a.render_against:
            if against is None:
                raise ExperimentError("--render-against needs --against REV")
            render_against(against, a.name, a.render_against)
    except ExperimentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(paths["md"])
    print(m["verdict"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
