"""flows.matrix: the leave-one-type-out columns' paired differences lined up as one matrix (rows: the type left out)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flows import matrix
from ipt.experiment.spec import ExperimentError

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("leave_one_out_sr_x2", "leave_one_out_derain")


def _copy(tmp_path: Path) -> list[str]:
    """The committed column files and their reports, in a folder of their own (the module writes beside them)."""
    (tmp_path / "experiments").mkdir()
    for name in COLUMNS:
        shutil.copy(ROOT / "experiments" / f"{name}.yaml", tmp_path / "experiments")
        shutil.copytree(ROOT / "experiments" / name, tmp_path / "experiments" / name)
    return [str(tmp_path / "experiments" / f"{n}.yaml") for n in COLUMNS]


def test_the_matrix_holds_each_columns_paired_differences_by_the_type_left_out(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the files name params.yaml and ../shared as the checkout does
    files = _copy(tmp_path)
    m = matrix.build(files)
    assert m["columns"] == ["sr_x2 (Set5)", "derain (Rain100L, 10 images)"]
    assert m["rows"] == ["without gaussian_noise", "without rain_streaks", "without bicubic_down"]
    for name, col in zip(COLUMNS, m["columns"], strict=True):
        report = json.loads((ROOT / "experiments" / name / "report.json").read_text())
        got = sorted(c["mean"] for k, c in m["cells"].items() if k.endswith(f"|{col}"))
        assert got == sorted(p["mean"] for p in report["paired"])  # every paired row, nothing else
    assert "without rain_streaks|derain (Rain100L, 10 images)" not in m["cells"]  # derain's own type stays in
    noise = m["cells"]["without gaussian_noise|sr_x2 (Set5)"]
    assert noise["mean"] == pytest.approx(-0.0089, abs=1e-4) and noise["n"] == 3 and not noise["separated"]
    assert m["verdict"].startswith("None of the 4 cells is separated from zero by its seeds")

    paths = matrix.write(m, tmp_path / "experiments" / "leave_one_out")
    text = paths["md"].read_text()
    assert "| without rain_streaks | -0.0113 (t -2.23, n 3) | - |" in text and paths["png"].stat().st_size > 0
    doc = tmp_path / "doc.md"
    doc.write_text("# Doc\n\nbefore\n")
    matrix.render(m, tmp_path / "experiments" / "leave_one_out", "leave_one_out", doc)
    matrix.render(m, tmp_path / "experiments" / "leave_one_out", "leave_one_out", doc)  # replaces, never duplicates
    rendered = doc.read_text()
    assert (
        rendered.count("<!-- matrix_leave_one_out:start -->") == 1
        and "(experiments/leave_one_out/matrix.png)" in rendered
    )


def test_a_column_without_a_report_or_twice_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    files = _copy(tmp_path)
    with pytest.raises(ExperimentError, match="a second file scoring sr_x2"):
        matrix.build([files[0], files[0]])
    shutil.rmtree(tmp_path / "experiments" / COLUMNS[1])
    with pytest.raises(ExperimentError, match="leave_one_out_derain/report.json: no report yet"):
        matrix.build(files)


def test_named_variants_keep_their_names_as_rows(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    m = matrix.build(["experiments/pretraining_sr_x2.yaml"])
    assert m["rows"] == ["scratch, equal fine-tune steps", "scratch, equal total steps"]
    total = m["cells"]["scratch, equal total steps|sr_x2 (Set5)"]
    assert total["separated"] and total["mean"] == pytest.approx(0.1434, abs=1e-4)
    assert m["verdict"].startswith("1 of 2 cells is separated from zero by their seeds: scratch, equal total steps")


def _commit(folder: Path) -> None:
    """The copied files and reports as the one commit of a throwaway git repository (what --against REV reads)."""
    import subprocess

    for args in (["init", "-q"], ["add", "experiments"], ["commit", "-qm", "the first run"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True, capture_output=True
        )


def test_against_an_earlier_revision_sets_each_cell_beside_its_earlier_value(tmp_path: Path, monkeypatch) -> None:
    """--against REV reads the same files' reports as committed at REV; the sentence counts the kept verdicts."""
    monkeypatch.chdir(ROOT)
    files = _copy(tmp_path)
    _commit(tmp_path)
    report_file = tmp_path / "experiments" / COLUMNS[0] / "report.json"
    report = json.loads(report_file.read_text())
    changed = report["paired"][0]
    changed |= {"mean": 0.5, "t": 9.0, "separated": True}
    report_file.write_text(json.dumps(report))

    now, then = matrix.build(files), matrix.build(files, matrix.reader_at("HEAD"))
    assert then["cells"] != now["cells"] and then["cells"][next(iter(then["cells"]))]["mean"] != 0.5
    c = matrix.compare(now, then, "the first run")
    row = matrix.row_label(
        matrix.load(files[0]), {v["variant"]: v["values"] for v in report["variants"]}[changed["variant"]]
    )
    key = f"{row}|sr_x2 (Set5)"
    verdicts = {r["cell"]: r["verdict"] for r in c["rows"]}
    assert verdicts.pop(key) == "separated now only" and set(verdicts.values()) == {"separated neither time"}
    assert c["verdict"].startswith("Of the 4 cells in both runs, 3 keep their verdict")
    assert (
        f"changed: {row} on sr_x2 (Set5) (not separated (" in c["verdict"] and "separated +0.5000 now)" in c["verdict"]
    )
    text = matrix.compare_markdown(c)
    assert f"| {row} | sr_x2 (Set5) | +0.5000 (t 9.00, n 3) **separated** |" in text

    with pytest.raises(ExperimentError, match=f"experiments/{COLUMNS[0]}/report.json: not at git revision nosuch"):
        matrix.build(files, matrix.reader_at("nosuch"))


def test_the_cli_writes_and_renders_the_comparison_only_when_asked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    files = _copy(tmp_path)
    doc = tmp_path / "doc.md"
    doc.write_text("# Doc\n")
    assert matrix.main([*files, "--name", "loo", "--render-against", str(doc)]) == 2  # needs --against
    assert doc.read_text() == "# Doc\n"
    _commit(tmp_path)
    argv = [*files, "--name", "loo", "--against", "HEAD", "--against-label", "the first run"]
    assert matrix.main([*argv, "--render-against", str(doc)]) == 0
    text = doc.read_text()
    assert "<!-- matrix_loo_against:start -->" in text and "<!-- matrix_loo:start -->" not in text
    assert "**Against the first run (computed).** Of the 4 cells in both runs, 4 keep their verdict" in text
    saved = json.loads((tmp_path / "experiments" / "loo" / "against.json").read_text())
    assert saved["revision"] == "HEAD" and saved["label"] == "the first run"
