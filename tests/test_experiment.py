"""Experiments (ipt.experiment, flows/experiment.py): the file checked whole, cells as shared pipeline stages, the
report computed from the numbers, and a real sweep on the Dask task runner that resumes after a kill."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, with_root_on_path
from helpers_data import make_sr_set
from helpers_images import PHOTOS, photo_folder
from ipt.experiment import plan as P
from ipt.experiment import report as R
from ipt.experiment.spec import ExperimentError, load


def tiny_params(tmp: Path) -> Path:
    """A params file for a sweep that runs in seconds: three photos, sr_x2 only, a tiny model, two steps a stage."""
    src = photo_folder(tmp / "src", names=PHOTOS[:3], as_jpeg=False)
    bench = make_sr_set(tmp / "bench", "Set5", n=2, size=(36, 40))
    params = {
        "seed": 5,
        "patch_size": 12,
        "shard": {
            "source": str(src),
            "out": "unused",
            "max_scale": 2,
            "crops": 2,
            "images_per_shard": 64,
            "executor": "serial",
            "workers": 1,
        },
        "corrupt": {
            "clean": "unused",
            "out": "unused/{task}",
            "executor": "serial",
            "workers": 1,
            "tasks": {
                "sr_x2": {"name": "bicubic_down", "scale": 2},
                "denoise_s30": {"name": "gaussian_noise", "sigma": 30},
            },
        },
        "pretrain": {
            "shards": "unused",
            "out": "unused",
            "model_size": "tiny",
            "steps": 2,
            "batch_size": 2,
            "lr": 1.0e-3,
            "checkpoint_every": 1,
            "shuffle_buffer": 4,
        },
        "finetune": {
            "shards": "unused",
            "init": "unused",
            "out": "unused",
            "steps": 2,
            "batch_size": 2,
            "lr": 1.0e-3,
            "checkpoint_every": 1,
            "shuffle_buffer": 4,
        },
        "model": {"n_feats": 64, "num_layers": 12},
        "benchmark": {"root": str(bench)},
    }
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def write_exp(tmp: Path, name: str = "lr", **over) -> Path:
    exp = {
        "question": "Does a larger fine-tuning rate help the tiny model?",
        "factors": {"finetune.lr": [1.0e-3, 1.0e-2]},
        "reference": {"finetune.lr": 1.0e-3},
        "seeds": [1, 2],
        "score": {"task": "sr_x2", "dataset": "Set5", "metric": "psnr_y", "tiling": "overlap"},
        "engine": {"workers": 2, "threads": 1},
    }
    for k, v in over.items():
        if v is None:
            exp.pop(k, None)
        else:
            exp[k] = v
    folder = tmp / "experiments"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------ the file


@pytest.mark.parametrize(
    ("over", "key", "says"),
    [
        ({"factors": {"finetune.learning_rate": [1, 2]}}, "factors.finetune.learning_rate", "no key 'learning_rate'"),
        ({"factors": {"nosuch.lr": [1, 2]}}, "factors.nosuch.lr", "unknown param path"),
        ({"factors": {"finetune.lr": []}}, "factors.finetune.lr", "non-empty list"),
        ({"factors": {"finetune.lr": 0.1}}, "factors.finetune.lr", "non-empty list"),
        ({"seeds": []}, "seeds", "non-empty list"),
        ({"seeds": [1, "two"]}, "seeds", "integer"),
        ({"score": {"task": "sr_x2", "dataset": "Urban999"}}, "score.dataset", "Urban999"),
        ({"score": {"task": "sr_x9", "dataset": "Set5"}}, "score.task", "sr_x9"),
        ({"score": {"task": "sr_x2", "dataset": "Set5", "metric": "lpips"}}, "score.metric", "lpips"),
        ({"reference": {"finetune.lr": 0.5}}, "reference.finetune.lr", "not one of"),
        ({"reference": None}, "reference", "name the variant"),
        ({"base": {"pretrain": {"stepz": 3}}}, "base.pretrain.stepz", "no key 'stepz'"),
        (
            {"factors": {"corrupt.tasks.sr_x2.sigma": [1, 2]}},
            "factors.corrupt.tasks.sr_x2.sigma",
            "no parameter 'sigma'",
        ),
        (
            {"factors": {"finetune.steps": ["many", 3]}, "reference": {"finetune.steps": 3}},
            "finetune.steps",
            "invalid value 'many'",
        ),
        (
            {"factors": {"finetune.pixel_loss": ["l1", "l3"]}, "reference": {"finetune.pixel_loss": "l1"}},
            "finetune.pixel_loss",
            "'l3' is not one of",
        ),
        ({"engine": {"workers": 0}}, "engine.workers", ">= 1"),
        ({"colour": "blue"}, "colour", "unknown key"),
        ({"engine": {"cpus": 2}}, "engine.cpus", "unknown key"),
        ({"params": "nosuch.yaml"}, "params", "not found"),
        ({"factors": {"benchmark.protocol": ["ipt", "matlab"]}}, "factors.benchmark.protocol", "set in `score:`"),
        ({"factors": {"model.n_feats": [8, 16]}}, "factors.model.n_feats", "no stage of an experiment reads"),
        ({"factors": {"finetune.init": ["a", "b"]}}, "factors.finetune.init", "wires each stage"),
        ({"factors": {"refine.steps": [1, 2]}}, "factors.refine.steps", "no cell runs refine"),
        ({"seed_stages": ["refine"]}, "seed_stages", "runs before its score"),
        ({"seed_stages": ["benchmark"]}, "seed_stages", "runs before its score"),
        (
            {"score": {"task": "sr_x2", "dataset": "Set5", "inputs": "denoise_s10"}},
            "score.inputs",
            "'denoise_s10' inputs are at x1, the sr_x2 model restores x2",
        ),
        ({"score": {"task": "sr_x2", "dataset": "Set5", "inputs": "blurry"}}, "score.inputs", "neither a paper task"),
        ({"score": {"task": "sr_x2", "dataset": "Set5", "prior_probe": "zero"}}, "score.prior_probe", "score.model"),
        ({"score": {"task": "sr_x2", "dataset": "Set5", "prior_probe": "half"}}, "score.prior_probe", "zero or next"),
    ],
)
def test_a_bad_experiment_file_is_refused_in_one_line_naming_the_file_and_key(tmp_path, over, key, says) -> None:
    params = tiny_params(tmp_path)
    path = write_exp(tmp_path, **over)
    with pytest.raises(ExperimentError) as e:
        load(path, params_file=None if "params" in over else params)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and key in msg and says in msg, msg


def test_the_grid_named_variants_reference_and_seeds_make_the_cells(tmp_path) -> None:
    params = tiny_params(tmp_path)
    path = write_exp(
        tmp_path,
        factors={"finetune.lr": [0.001, 0.01]},
        variants={"l1": {"finetune.pixel_loss": "l1"}, "charb": {"finetune.pixel_loss": "charbonnier"}},
        reference="charb, lr=0.001",
        seeds=[3, 4, 5],
        seed_stages=["finetune"],
    )
    exp = load(path, params_file=params)
    assert [v.label for v in exp.variants] == ["l1, lr=0.001", "l1, lr=0.01", "charb, lr=0.001", "charb, lr=0.01"]
    assert exp.reference.label == "charb, lr=0.001"
    cells = exp.cells()
    assert len(cells) == 12
    c = cells[7]  # variants in order, each with its 3 seeds: index 7 is the third variant's second seed
    assert (c.variant.label, c.seed) == ("charb, lr=0.001", 4)
    assert c.params["finetune"]["lr"] == 0.001 and c.params["finetune"]["pixel_loss"] == "charbonnier"
    assert c.params["finetune"]["seed"] == 4 and "seed" not in c.params["pretrain"] and c.params["seed"] == 5


def test_cells_share_the_stages_whose_inputs_agree_and_keys_follow_params_and_code(tmp_path, monkeypatch) -> None:
    params = tiny_params(tmp_path)
    exp = load(write_exp(tmp_path, seed_stages=["finetune"]), params_file=params)
    plan = P.build(exp, tmp_path / "work")
    stages = [n.stage for n in plan.nodes.values()]
    # one shard, two corrupts, one pretrain shared by the 4 cells; a finetune and a benchmark per cell
    assert stages.count("shard") == 1 and stages.count("corrupt") == 2 and stages.count("pretrain") == 1
    assert stages.count("finetune") == 4 and stages.count("benchmark") == 4
    assert len({c["pretrain"] for c in plan.cell_nodes}) == 1 and len({c["score"] for c in plan.cell_nodes}) == 4

    # where files go and how many workers write them are no part of a key; what changes the numbers is
    def keyed(p):
        return {
            (n.label, str(n.params["finetune"].get("lr")), n.params["finetune"].get("seed")): n.key
            for n in p.nodes.values()
        }

    keys = keyed(plan)
    assert len(keys) == len(plan.nodes)
    moved = params.read_text().replace("workers: 1", "workers: 2")
    (tmp_path / "p2.yaml").write_text(moved)
    again = P.build(
        load(write_exp(tmp_path, seed_stages=["finetune"]), params_file=tmp_path / "p2.yaml"), tmp_path / "w"
    )
    assert keyed(again) == keys
    (tmp_path / "p3.yaml").write_text(params.read_text().replace("crops: 2", "crops: 3"))
    other = P.build(
        load(write_exp(tmp_path, seed_stages=["finetune"]), params_file=tmp_path / "p3.yaml"), tmp_path / "w"
    )
    assert not {n.key for n in other.nodes.values()} & set(keys.values())  # new data: every stage downstream is new
    real = P._code
    monkeypatch.setattr(P, "_code", lambda c, k=None: real(c, k) + ("x" if c == "finetune" else ""))
    code = P.build(load(write_exp(tmp_path, seed_stages=["finetune"]), params_file=params), tmp_path / "w")
    changed = {n.stage for n in code.nodes.values() if n.key not in set(keys.values())}
    assert changed == {"finetune", "benchmark"}  # a fine-tuning code change reruns fine-tuning and what reads it
    img = next((tmp_path / "src").rglob("*.png"))
    img.write_bytes(img.read_bytes() + b"\0")  # a source image changed: the data stages and all after them are new
    P.files_digest.cache_clear()
    data = P.build(load(write_exp(tmp_path, seed_stages=["finetune"]), params_file=params), tmp_path / "w")
    assert not {n.key for n in data.nodes.values()} & set(keys.values())
    workers = write_exp(tmp_path, name="w", factors={"shard.workers": [1, 2]}, reference={"shard.workers": 1})
    with pytest.raises(ExperimentError, match="run the same stages"):  # a factor that changes no output
        P.build(load(workers, params_file=params), tmp_path / "w")


def test_a_whole_corruption_entry_replaces_the_old_one_and_can_add_a_task(tmp_path) -> None:
    params = tiny_params(tmp_path)
    new = {"name": "gaussian_noise", "sigma": 10}
    path = write_exp(
        tmp_path,
        base={"corrupt": {"tasks": {"denoise_s10": new, "sr_x2": {"name": "gaussian_noise", "sigma": 5}}}},
        factors={"corrupt.tasks.denoise_s10.sigma": [10, 15]},
        reference={"corrupt.tasks.denoise_s10.sigma": 10},
    )
    exp = load(path, params_file=params)
    cell = exp.cells()[2]
    assert cell.params["corrupt"]["tasks"]["sr_x2"] == {"name": "gaussian_noise", "sigma": 5}  # no scale left over
    assert cell.params["corrupt"]["tasks"]["denoise_s10"] == {"name": "gaussian_noise", "sigma": 15}


def test_the_dry_run_lists_every_cell_and_prices_what_is_left(tmp_path) -> None:
    params = tiny_params(tmp_path)
    path = write_exp(tmp_path)
    env = with_root_on_path(dict(os.environ))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.experiment",
            str(path),
            "--params",
            str(params),
            "--dry-run",
            "--work",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert "4 cells" in r.stdout and r.stdout.count("[to run]") == 4 and "core-hours (about" in r.stdout
    assert not (tmp_path / "work").exists()  # nothing ran, nothing written
    bad = write_exp(tmp_path, name="bad", seeds=[])
    r = subprocess.run(
        [sys.executable, "-m", "flows.experiment", str(bad), "--params", str(params), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert r.returncode == 2 and r.stderr.strip() == f"error: {bad}: seeds: needs a non-empty list of integers"
    r = subprocess.run(
        [sys.executable, "-m", "flows.experiment", str(path), "--params", str(params), "--report-only"]
        + ["--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert r.returncode == 2 and r.stderr.strip() == f"error: {path}: no cell has finished yet; nothing to report"


# ------------------------------------------------------------------------------------------------ the report


def test_paired_statistics_match_an_independent_t_test() -> None:
    from scipy.stats import ttest_rel

    ref = {1: 30.0, 2: 30.4, 3: 29.9, 4: 30.2}
    var = {1: 30.5, 2: 30.6, 3: 30.6, 4: 30.3}
    p = R.paired("v", var, ref)
    t = ttest_rel([var[s] for s in sorted(var)], [ref[s] for s in sorted(ref)])
    assert p.n == 4 and math.isclose(p.t, t.statistic, rel_tol=1e-12)
    assert math.isclose(p.mean, 0.375, rel_tol=1e-12) and p.separated == (t.pvalue < 0.05)
    assert math.isclose(p.t_crit, 3.182446305284263, rel_tol=1e-9)  # t(0.975, 3)


def test_the_verdict_is_computed_from_the_numbers_whichever_way_they_go() -> None:
    recs = [
        {"variant": v, "values": {"f": x}, "seed": s, "score": base + d}
        for v, x, base in (("ref", 0, 30.0), ("up", 1, 30.5), ("noise", 2, 30.0))
        for s, d in ((1, 0.01), (2, -0.02), (3, 0.015))
    ]
    for r in recs:  # noise: differences that change sign over the seeds
        if r["variant"] == "noise":
            r["score"] += {1: 0.05, 2: -0.06, 3: 0.02}[r["seed"]]
    out = R.build(recs, reference="ref", factors={"f": [0, 1, 2]}, metric="psnr_y")
    assert out["verdict"].startswith("1 of 2 variant(s) beat the reference 'ref' separably; the largest gain is 'up'")
    assert "'noise' and 'ref' are not separated by these 3 seeds" in out["verdict"]
    down = [dict(r, score=r["score"] - 1.0) if r["variant"] == "up" else r for r in recs]
    out = R.build(down, reference="ref", factors={"f": [0, 1, 2]}, metric="psnr_y")
    assert "'up' scores lower than 'ref' by 0.5000 dB psnr_y" in out["verdict"]
    assert out["verdict"].startswith("No variant beats the reference 'ref'; 1 of 2 score separably lower.")
    means = {v["variant"]: v["mean"] for v in out["variants"]}
    assert math.isclose(means["up"], 29.5 + 0.005 / 3 * 1, abs_tol=1e-9)
    same = [dict(r, score=30.0) for r in recs if r["variant"] in ("ref", "up")]
    out = R.build(same, reference="ref", factors={"f": [0, 1]}, metric="psnr_y")
    assert out["verdict"] == (
        "These seeds separate no variant from the reference 'ref'. 'up' and 'ref' score the same on all 3 seeds."
    )
    # a cell not finished: the comparison uses the seeds both have and says so; the unpaired mean plays no part
    partial = [r for r in recs if not (r["variant"] == "up" and r["seed"] > 1)]
    out = R.build(partial, reference="ref", factors={"f": [0, 1, 2]}, metric="psnr_y")
    assert (
        "'up' minus 'ref': +0.5000 dB on 1 seed(s): fewer than two paired seeds cannot separate them." in out["verdict"]
    )
    assert out["verdict"].startswith("These seeds separate no variant")


def test_the_report_files_hold_the_tables_and_a_plot(tmp_path) -> None:
    recs = [
        {"variant": f"lr={lr}", "values": {"finetune.lr": lr}, "seed": s, "score": 30 + lr * 10 + s / 100}
        for lr in (0.001, 0.01)
        for s in (1, 2)
    ]
    numbers = R.build(recs, reference="lr=0.001", factors={"finetune.lr": [0.001, 0.01]}, metric="psnr_y")
    paths = R.write(tmp_path / "exp", "exp", "Q?", numbers, ["- about"])
    md = paths["md"].read_text()
    assert "| lr=0.01 | 2 | +0.0900 | 0.0000 | inf | 12.71 | yes |" in md and "![psnr_y" in md
    assert json.loads(paths["json"].read_text())["paired"][0]["n"] == 2
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 5000


def test_the_report_draws_and_summarises_the_validation_curves_of_its_cells(tmp_path) -> None:
    def curve(seed: int, top: int) -> list[dict]:
        return [{"step": s, "psnr_y": 30 + seed / 10 - abs(s - top) / 100, "seconds": 0.5} for s in (100, 200, 300)]

    cells = [
        {"variant": v, "values": {}, "seed": seed, "score": 30.0 + seed, "curves": {"finetune": curve(seed, top)}}
        for v, top in (("step", 300), ("cosine", 200))
        for seed in (1, 2)
    ]
    numbers = R.build(cells, reference="step", factors={}, metric="psnr_y") | {"cells": cells}
    paths = R.write(tmp_path / "exp", "exp", "Q?", numbers, [])
    assert paths["curves"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["md"].read_text()
    # step: best at the last step (300) for both seeds, mean of 30.1 and 30.2; cosine: best at 200, last 1 dB lower
    assert "| finetune | step | 2 | 30.1500 (step 300) | 30.1500 | 300, 300 | 3 | 1.5 |" in md, md
    assert "| finetune | cosine | 2 | 29.1500 (step 300) | 30.1500 | 200, 200 | 3 | 1.5 |" in md
    assert "![validation Y-PSNR against the step](curves.png)" in md
    summary = json.loads(paths["json"].read_text())["curves"]
    assert [c["best_steps"] for c in summary] == [[300, 300], [200, 200]]
    # cells without validation: no curves section, no file
    plain = R.write(
        tmp_path / "plain", "plain", "Q?", R.build(cells, reference="step", factors={}, metric="psnr_y"), []
    )
    assert "curves" not in plain and "Validation while training" not in plain["md"].read_text()


# ------------------------------------------------------------------------------------------------ a real sweep


def _run(path: Path, params: Path, work: Path, uri: str, log: Path) -> subprocess.Popen:
    env = with_root_on_path(dict(os.environ)) | {
        "PREFECT_API_URL": "",
        "MLFLOW_TRACKING_URI": uri,
        "IPT_PROJECT_DIR": str(ROOT),
    }
    with log.open("w") as f:  # a file, not a pipe: a flow's log can outgrow a pipe's buffer and stall it
        return subprocess.Popen(
            [sys.executable, "-m", "flows.experiment", str(path), "--params", str(params), "--work", str(work)],
            env=env,
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.slow
def test_a_sweep_killed_midway_resumes_only_its_unfinished_cells_and_reports(tmp_path) -> None:
    pytest.importorskip("prefect_dask")
    from mlflow.tracking import MlflowClient

    params = tiny_params(tmp_path)
    path = write_exp(tmp_path)
    work, uri = tmp_path / "work", f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "sweep.log"
    proc = _run(path, params, work, uri, log)
    deadline = time.time() + 600
    while time.time() < deadline and len(list(work.glob("nodes/benchmark@*/done.json"))) < 1:
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole sweep: flow, Dask workers, the stage they run
    proc.wait()
    first = {p: p.read_bytes() for p in work.glob("nodes/*/done.json")}
    scored = {
        p.parent: json.loads((p.parent / "run" / "report.json").read_text())
        for p in work.glob("nodes/benchmark@*/done.json")
    }
    assert 1 <= len(scored) < 4
    # between sittings: the report of what has finished, nothing run
    env = with_root_on_path(dict(os.environ)) | {"IPT_PROJECT_DIR": str(ROOT)}
    argv = [sys.executable, "-m", "flows.experiment", str(path), "--params", str(params), "--work", str(work)]
    r = subprocess.run([*argv, "--report-only"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0 and f"{len(scored)} of 4 cells finished" in r.stdout, r.stderr
    partial = json.loads((tmp_path / "experiments" / "lr" / "report.json").read_text())
    assert (
        len(partial["cells"]) == len(scored)
        and f"{len(scored)} of 4 finished" in (tmp_path / "experiments" / "lr" / "report.md").read_text()
    )
    assert {p: p.read_bytes() for p in work.glob("nodes/*/done.json")} == first
    proc = _run(path, params, work, uri, log)
    assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    for p, text in first.items():  # nothing that was done ran again
        assert p.read_bytes() == text
    for folder, rep in scored.items():  # and the finished cells' numbers are unchanged
        assert json.loads((folder / "run" / "report.json").read_text()) == rep
    report = json.loads((tmp_path / "experiments" / "lr" / "report.json").read_text())
    assert [v["n"] for v in report["variants"]] == [2, 2] and report["paired"][0]["n"] == 2
    scores = {(c["variant"], c["seed"]): c["score"] for c in report["cells"]}
    for rep in scored.values():
        assert rep["datasets"]["Set5"]["psnr_y"] in scores.values()
    assert (tmp_path / "experiments" / "lr" / "score.png").is_file()
    md = (tmp_path / "experiments" / "lr" / "report.md").read_text()
    assert report["verdict"] in md and "4 of 4 finished" in md
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("exp-lr")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ipt.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("ipt.role") == "cell"]
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted((r.data.params["finetune.lr"], r.data.params["seed"]) for r in children) == [
        ("0.001", "1"),
        ("0.001", "2"),
        ("0.01", "1"),
        ("0.01", "2"),
    ]
    c = children[0]
    assert set(c.data.metrics) >= {"score", "Set5/psnr_y", "finetune/loss", "pretrain/loss"}
    history = client.get_metric_history(c.info.run_id, "finetune/loss")
    assert [m.step for m in history] == [1, 2]
    assert math.isclose(c.data.metrics["score"], scores[(c.data.tags["ipt.variant"], int(c.data.params["seed"]))])
    # a third run has nothing to do: no stage runs, no new MLflow runs, the same report
    proc = _run(path, params, work, uri, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert re.search(r"\b0 of 13 stages to run", log.read_text())
    assert len(client.search_runs([exp.experiment_id])) == 5
    assert json.loads((tmp_path / "experiments" / "lr" / "report.json").read_text()) == report


def test_the_run_experiment_deployment_names_the_flow_and_a_file_that_loads(benchmark_root, monkeypatch) -> None:
    import importlib

    monkeypatch.setenv("IPT_BENCHMARK_ROOT", str(benchmark_root))
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    (dep,) = [d for d in deployments if d["entrypoint"].startswith("flows/experiment.py:")]
    path, name = dep["entrypoint"].split(":")
    module = path.removesuffix(".py").replace("/", ".")
    fl = getattr(importlib.import_module(module), name)
    assert fl.name == "run-experiment" and "file" in fl.parameters.properties
    exp = load(ROOT / dep["parameters"]["file"])  # the checkout's params.yaml and ../shared's Rain100L
    assert exp.name == "derain_loss" and len(exp.cells()) == 9


TIMED_ONE_SEED = {"quality_budget"}  # the minutes are its measurement: each cell ran alone, once (docs/BENCHMARKS.md)


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml")))
def test_the_committed_experiment_files_load(name, benchmark_root, monkeypatch) -> None:
    monkeypatch.setenv("IPT_BENCHMARK_ROOT", str(benchmark_root))
    exp = load(ROOT / "experiments" / f"{name}.yaml")
    # three for the claims of issue 35; quality_recipe ran two; quality_budget times one cell per seed of the budget
    assert len(exp.seeds) >= (1 if name in TIMED_ONE_SEED else 2) and exp.question
    plan = P.build(exp, ROOT / "runs" / "experiments" / name)
    assert sum(n.stage == "benchmark" for n in plan.nodes.values()) == len(exp.cells())


def test_the_report_quotes_the_files_base_overrides(tmp_path) -> None:
    """The Base line names what every cell shares beyond the params file (issue 35's corpus is one such line)."""
    from flows.experiment import base_overrides

    params = tiny_params(tmp_path)
    exp = load(write_exp(tmp_path, base={"finetune": {"batch_size": 4}, "finetune.lr": 0.002}), params_file=params)
    assert base_overrides(exp) == (
        " with `finetune.batch_size: 4`, `finetune.lr: 0.002` (the `base:` of `" + exp.path.as_posix() + "`)"
    )
    quoted = base_overrides(exp)
    exp.path.write_text("base: {finetune.lr: 9}\n")  # edited after the run was planned: the report quotes what ran
    assert base_overrides(exp) == quoted
    plain = load(write_exp(tmp_path, name="plain"), params_file=params)
    assert base_overrides(plain) == f" as it is (`{plain.path.as_posix()}` has no `base:`)"


def test_render_copies_the_computed_report_into_a_docs_section(tmp_path) -> None:
    from flows.experiment import _deeper, heading_depth, render

    params = tiny_params(tmp_path)
    exp = load(write_exp(tmp_path), params_file=params)
    recs = [
        {"variant": v.label, "values": v.as_dict(), "seed": s, "score": 30.0 + i + s / 10}
        for i, v in enumerate(exp.variants)
        for s in exp.seeds
    ]
    numbers = R.build(recs, reference=exp.reference.label, factors=exp.factors, metric="psnr_y")
    R.write(tmp_path / "experiments" / "lr", "lr", exp.question, numbers, ["- about"])
    docs = tmp_path / "docs" / "B.md"
    docs.parent.mkdir()
    docs.write_text("# B\n\n<!-- experiment_lr:start -->\nold\n<!-- experiment_lr:end -->\n\ntail\n")
    render(exp, docs)
    text = docs.read_text()
    assert "\nold\n" not in text and text.endswith("tail\n") and "## Experiment `lr`" in text
    assert numbers["verdict"] in text and "](../experiments/lr/score.png)" in text
    # under a deeper section the report's headings go one level below it (a fenced '# comment' is no heading)
    docs.write_text(
        "# B\n\n### Sub\n\n```bash\n# a comment\n```\n\n<!-- experiment_lr:start -->\n<!-- experiment_lr:end -->\n"
    )
    render(exp, docs)
    text = docs.read_text()
    assert "\n#### Experiment `lr`\n" in text and "\n##### psnr_y per variant" in text
    # a second report rendered right after the first is its sibling, not a level under the first one's headings
    text = text.replace(
        "<!-- experiment_lr:end -->\n",
        "<!-- experiment_lr:end -->\n\n<!-- experiment_lr2:start -->\nx\n<!-- experiment_lr2:end -->\n",
    )
    assert heading_depth(text[: text.index("<!-- experiment_lr2:start -->")]) == 3
    assert heading_depth("# B\n\n###### Deep\n") == 6 and heading_depth("no heading\n") == 1
    assert _deeper("## psnr", 5) == "###### psnr" and _deeper("#x and a line", 2) == "#x and a line"  # markdown's 6


def test_the_docs_walk_through_file_loads_and_plans_as_written(tmp_path, benchmark_root, monkeypatch) -> None:
    """docs/experiments.md's example, copied as a user would, is a valid experiment of 9 cells."""
    text = (ROOT / "docs" / "experiments.md").read_text()
    block = text.split("`experiments/ft_batch.yaml`:\n\n```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "experiments").mkdir()
    path = tmp_path / "experiments" / "ft_batch.yaml"
    path.write_text(block)
    monkeypatch.setenv("IPT_BENCHMARK_ROOT", str(benchmark_root))
    monkeypatch.setenv("IPT_PROJECT_DIR", str(ROOT))  # params: params.yaml of the project folder
    exp = load(path)
    assert [v.label for v in exp.variants] == ["batch_size=4", "batch_size=8", "batch_size=16"]
    assert exp.reference.label == "batch_size=8" and exp.seed_stages == ("finetune",)
    plan = P.build(exp, tmp_path / "work")
    assert len(plan.cells) == 9 and sum(n.stage == "pretrain" for n in plan.nodes.values()) == 1


def test_a_stage_whose_code_changed_after_planning_is_refused_not_run_under_its_old_key(tmp_path, monkeypatch) -> None:
    from flows.experiment import run_node

    exp = load(write_exp(tmp_path), params_file=tiny_params(tmp_path))
    plan = P.build(exp, tmp_path / "work")
    node = next(n for n in plan.nodes.values() if n.stage == "shard")
    assert not node.code_changed()
    real = P._code
    monkeypatch.setattr(P, "_code", lambda c, k=None: real(c, k) + "edited")
    assert node.code_changed()
    with pytest.raises(RuntimeError, match="changed after this sweep was planned"):
        run_node.fn(node, node.label, 1, str(ROOT))
    assert not (node.run).exists() and not node.done()


def test_the_dry_run_prices_a_stage_by_the_finished_stages_of_its_kind(tmp_path) -> None:
    """A stage whose kind already finished in the work folder (another key: an earlier commit, another file that
    shares the folder) is priced by that measurement, core-seconds per training sample, not by the rate tables;
    another model size, a resumed stage or a benchmark record without its command prices nothing."""
    import copy

    from flows.cost import experiment_report, measured_estimate, measured_records, price_key

    exp = load(write_exp(tmp_path), params_file=tiny_params(tmp_path))
    plan = P.build(exp, tmp_path / "work")
    pre = next(n for n in plan.nodes.values() if n.stage == "pretrain")
    steps, batch = pre.params["pretrain"]["steps"], pre.params["pretrain"]["batch_size"]

    def record(name: str, stage: str, params: dict, **done) -> None:
        folder = tmp_path / "work" / "nodes" / name
        folder.mkdir(parents=True)
        (folder / "params.yaml").write_text(yaml.safe_dump(params))
        if done:
            (folder / "done.json").write_text(json.dumps({"key": "0123", "stage": stage, **done}))

    twice = copy.deepcopy(pre.params)
    twice["pretrain"]["steps"] = 2 * steps
    record("pretrain-0123456789ab", "pretrain", twice, seconds=100.0, threads=2)  # twice the samples, 200 core-s
    bigger = copy.deepcopy(twice)
    bigger["pretrain"]["model_size"] = "small"
    record("pretrain-0123456789ac", "pretrain", bigger, seconds=900.0, threads=2)  # another size: not this stage
    record("pretrain-0123456789ad", "pretrain", twice, seconds=1.0, threads=2, resumed=True)  # only its last steps
    record("finetune@sr_x2-0123456789ab", "finetune@sr_x2", pre.params)  # killed before it finished: no record
    record("benchmark@sr_x2-0123456789ab", "benchmark@sr_x2", pre.params, seconds=5.0)  # no command kept

    records = measured_records(tmp_path / "work")
    key = price_key("pretrain", pre.params, pre.argv)
    assert key == price_key("pretrain", twice, None) != price_key("pretrain", bigger, None)
    assert records[key] == [{"seconds": 100.0, "threads": 2, "samples": 2.0 * steps * batch}]
    assert len(records) == 2 and not any(k.startswith("benchmark") for k in records)
    assert measured_estimate(pre, records, threads=1) == (pytest.approx(100.0 / 3600), 1)  # half of 200 core-s
    unsaid = {key: [records[key][0] | {"threads": None}]}  # a record from before threads were kept
    assert measured_estimate(pre, unsaid, threads=3) == (pytest.approx(150.0 / 3600), 1)
    assert measured_estimate(next(n for n in plan.nodes.values() if n.stage == "finetune"), records, 1) is None
    text = experiment_report(plan)
    assert re.search(r"pretrain-\w{8} +\d+ +0\.028 .* to run, measured \(1 finished pretrain\)", text)
    assert re.search(r"finetune@sr_x2-\w{8} .* to run, rate$", text, re.M)
    assert "plus 4 benchmark stage(s) not priced" in text  # no benchmark has finished here

    bench = next(n for n in plan.nodes.values() if n.stage == "benchmark")
    same = [a.replace(bench.key[:12], "fedcba987654") for a in bench.argv]  # another key's folder, the same command
    assert price_key(bench.label, bench.params, same) == price_key(bench.label, bench.params, bench.argv)
    other = [*bench.argv, "--limit", "3"]
    assert price_key(bench.label, bench.params, other) != price_key(bench.label, bench.params, bench.argv)


def test_a_training_stage_asked_onto_a_gpu_is_priced_in_gpu_hours_only(tmp_path) -> None:
    import copy

    from flows.cost import stage_estimate

    exp = load(write_exp(tmp_path), params_file=tiny_params(tmp_path))
    pre = next(n for n in P.build(exp, tmp_path / "work").nodes.values() if n.stage == "pretrain")
    on_cpu = stage_estimate(pre)
    gpu = copy.copy(pre)
    gpu.params = copy.deepcopy(pre.params)
    gpu.params["pretrain"]["device"] = "cuda:1"
    on_gpu = stage_estimate(gpu)
    assert on_cpu["cpu_h"] > 0 and on_gpu["cpu_h"] == 0.0
    assert on_gpu["gpu_h"] == on_cpu["gpu_h"]  # the GPU estimate itself does not depend on where it was asked

    # in the dry run: a finished CPU pretraining of the same kind prices the CPU stage, never the one on cuda
    from flows.cost import experiment_report

    plan = P.build(exp, tmp_path / "work")
    pre = next(n for n in plan.nodes.values() if n.stage == "pretrain")
    folder = tmp_path / "work" / "nodes" / "pretrain-0123456789ab"
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(pre.params))
    (folder / "done.json").write_text(json.dumps({"key": "0123", "stage": "pretrain", "seconds": 50.0, "threads": 1}))
    assert re.search(r"pretrain-\w{8} .* to run, measured \(1 finished pretrain\)", experiment_report(plan))
    pre.params["pretrain"]["device"] = "cuda"
    text = experiment_report(plan)
    assert re.search(r"pretrain-\w{8} +\d+ +0\.000 .* to run, GPU rate \(cuda\)", text)
    assert "plus 1 stage(s) on cuda, in GPU-hours only and not in the wall time" in text


def test_the_wall_estimate_runs_each_stage_after_the_ones_it_reads() -> None:
    from types import SimpleNamespace as NS

    from flows.cost import schedule_hours, stage_cores

    def node(key: str, deps: tuple[str, ...] = (), done: bool = False) -> NS:
        return NS(key=key, deps=deps, done=lambda: done)

    nodes = [node("a"), node("b", ("a",)), node("c"), node("d", ("b", "c"))]
    plan = NS(nodes={n.key: n for n in nodes})
    costs = {"a": {"cpu_h": 2.0}, "b": {"cpu_h": 1.0}, "c": {"cpu_h": 1.0}, "d": {"cpu_h": 0.5}}
    assert schedule_hours(plan, costs, workers=1, per_stage_cores=1.0) == 4.5  # one worker: one after another
    assert schedule_hours(plan, costs, workers=2, per_stage_cores=1.0) == 3.5  # c beside a; d waits for b
    assert schedule_hours(plan, costs, workers=4, per_stage_cores=2.0) == 1.75  # the chain a, b, d on 2 cores each
    nodes[0] = node("a", done=True)
    plan = NS(nodes={n.key: n for n in nodes})
    assert schedule_hours(plan, costs, workers=2, per_stage_cores=1.0) == 1.5  # b and c at once, then d
    assert schedule_hours(plan, costs | {"c": {"cpu_h": float("nan")}}, workers=1, per_stage_cores=1.0) == 1.5
    outside = NS(nodes={"e": node("e", ("gone",))})  # a key that is no stage of the plan: nothing to wait for
    assert schedule_hours(outside, {"e": {"cpu_h": 1.0}}, workers=1, per_stage_cores=1.0) == 1.0
    # four one-thread workers on two cores: each stage has half a core
    assert stage_cores(workers=4, threads=1, cores=2) == 0.5 and stage_cores(workers=2, threads=1, cores=2) == 1.0
    assert stage_cores(workers=1, threads=4, cores=2) == 2.0
    four = NS(nodes={k: node(k) for k in "wxyz"})
    assert schedule_hours(four, {k: {"cpu_h": 1.0} for k in "wxyz"}, 4, stage_cores(4, 1, 2)) == 2.0


def test_dry_run_names_the_cpu_kind_of_its_rates_and_warns_on_a_bf16_mismatch() -> None:
    from flows.cost import rate_kind_lines

    avx2 = {"hardware": {"cpu_model": "AMD EPYC", "cpu_capability": "AVX2", "fast_bf16": "False"}}
    here = {"cpu_model": "AMD EPYC", "cpu_capability": "AVX512", "fast_bf16": "True"}
    lines = rate_kind_lines(avx2, ["finetune", "pretrain"], here)
    assert lines[0] == (
        "CPU training rates measured on: AMD EPYC, AVX2, native bf16 False; "
        "this CPU: AMD EPYC, AVX512, native bf16 True"
    )
    assert len(lines) == 2 and lines[1].startswith("warning: finetune, pretrain train(s) in bf16")
    assert "without native bf16 while this one has it" in lines[1]
    # fp32 plans, or a CPU of the same bf16 kind: the line says where the rates come from and warns of nothing
    assert len(rate_kind_lines(avx2, [], here)) == 1
    assert len(rate_kind_lines(avx2, ["finetune"], here | {"fast_bf16": "False"})) == 1
    assert rate_kind_lines({}, ["finetune"], here) == [
        "CPU training rates: none measured (docs/bench_train.json missing); CPU hours are not priced"
    ]


def test_a_score_on_another_tasks_inputs_shares_every_training_stage_and_passes_inputs(tmp_path) -> None:
    """Generalisation (issue 35d): the same cells scored on denoise_s10's inputs train exactly the stages of the plain
    score (so files that differ only there share them in one --work folder); only the benchmark differs."""
    params = tiny_params(tmp_path)
    score = {"task": "denoise_s30", "dataset": "Set5", "metric": "psnr_y", "tiling": "overlap"}
    plain = load(write_exp(tmp_path, "plain", score=score), params_file=params)
    moved = load(write_exp(tmp_path, "moved", score=score | {"inputs": "denoise_s10"}), params_file=params)
    assert plain.score.inputs is None and moved.score.inputs == "denoise_s10"
    same = load(write_exp(tmp_path, "same", score=score | {"inputs": "denoise_s30"}), params_file=params)
    assert same.score.inputs is None  # its own task: the plain score
    a, b = P.build(plain, tmp_path / "work"), P.build(moved, tmp_path / "work")
    train = {k for k, n in a.nodes.items() if n.stage != "benchmark"}
    assert train == {k for k, n in b.nodes.items() if n.stage != "benchmark"}
    bench_a = [n for n in a.nodes.values() if n.stage == "benchmark"]
    bench_b = [n for n in b.nodes.values() if n.stage == "benchmark"]
    assert not {n.key for n in bench_a} & {n.key for n in bench_b}
    assert all("--inputs" not in n.argv for n in bench_a)
    assert all(n.argv[n.argv.index("--inputs") + 1] == "denoise_s10" for n in bench_b)
    assert len(bench_b) == len(moved.cells())


def test_a_prior_probe_score_shares_the_refiner_and_passes_the_probe(tmp_path) -> None:
    """PTG-RM's probe (docs/refine.md): the same refiners scored with g = 0, from a second file in one work folder."""
    params = tiny_params(tmp_path)
    data = yaml.safe_load(params.read_text())
    data["refine"] = {"base": "unused", "shards": "unused", "out": "unused", "prior": "random", "steps": 2}
    data["refine"] |= {"batch_size": 2, "shuffle_buffer": 4}
    params.write_text(yaml.safe_dump(data))
    score = {"task": "sr_x2", "dataset": "Set5", "metric": "psnr_y", "tiling": "overlap", "model": "refine"}
    own = load(write_exp(tmp_path, "own", score=score), params_file=params)
    zero = load(write_exp(tmp_path, "zero", score=score | {"prior_probe": "zero"}), params_file=params)
    a, b = P.build(own, tmp_path / "work"), P.build(zero, tmp_path / "work")
    assert {k for k, n in a.nodes.items() if n.stage == "refine"} == {
        k for k, n in b.nodes.items() if n.stage == "refine"
    }
    bench_b = [n for n in b.nodes.values() if n.stage == "benchmark"]
    assert all(n.argv[n.argv.index("--prior-probe") + 1] == "zero" for n in bench_b)
    assert not any("--prior-probe" in n.argv for n in a.nodes.values() if n.stage == "benchmark")
    # the next image's g: a pooled prior and two images at least, refused before anything runs otherwise
    nxt = score | {"prior_probe": "next"}
    assert load(write_exp(tmp_path, "next", score=nxt), params_file=params).score.prior_probe == "next"
    with pytest.raises(ExperimentError, match=r"score.limit: the 'next' prior probe needs at least two images"):
        load(write_exp(tmp_path, "one", score=nxt | {"limit": 1}), params_file=params)
    maps = {"spatial": {"refine.prior_spatial": True}, "pooled": {}}
    with pytest.raises(ExperimentError, match=r"score.prior_probe: .* variant 'spatial' sets refine.prior_spatial"):
        path = write_exp(tmp_path, "maps", score=nxt, factors=None, variants=maps, reference="pooled")
        load(path, params_file=params)
