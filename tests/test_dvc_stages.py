"""`dvc repro` and `dvc exp run` of the data stages in a temporary git + DVC repository built from this project's
files. The whole DAG (training, benchmark, register) runs end to end in tests/test_e2e_pipeline.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from helpers_data import make_sr_set

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
DVC = [sys.executable, "-m", "dvc"]


def _run(cmd: list[str], cwd: Path) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={"DVC_NO_ANALYTICS": "1", **_env()})
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def _env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_") and k != "IPT_PARAMS"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # stage cmds call `python`
    return env


@pytest.fixture
def repo(tmp_path) -> Path:
    pytest.importorskip("dvc")
    repo = tmp_path / "repo"
    repo.mkdir()
    for rel in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / rel, repo / rel)
    for pkg in ("ipt", "corruptions"):  # whole packages: `python -m ipt.cli` in the repo imports these copies
        shutil.copytree(ROOT / pkg, repo / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["benchmark"]["root"] = str(make_sr_set(tmp_path / "bench", scales=(2, 3)))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], repo)
    _run(DVC + ["init", "-q"], repo)
    _run(DVC + ["config", "core.analytics", "false"], repo)
    return repo


def _small_dag(repo: Path, tmp_path: Path, tasks: tuple[str, ...]) -> dict:
    """Shrink the project's params to a CPU-test DAG: three photos, tiny model, a few steps, only ``tasks``."""
    from helpers_images import PHOTOS, photo_folder

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["shard"].update(source=str(photo_folder(tmp_path / "train", PHOTOS[:3])), crops=1, images_per_shard=2)
    params["shard"]["workers"] = params["corrupt"]["workers"] = 1
    params["corrupt"]["tasks"] = {k: v for k, v in params["corrupt"]["tasks"].items() if k in tasks}
    for stage in ("pretrain", "finetune"):
        params[stage].update(steps=2, batch_size=2, checkpoint_every=2, shuffle_buffer=2)
    params["benchmark"]["tiling"] = "overlap"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def _ran(out: str) -> list[str]:
    """Stage names that `dvc repro` output says it ran."""
    return sorted(set(re.findall(r"Running stage '([^']+)'", out)))


@pytest.mark.slow
def test_data_stages_rerun_only_what_changed_and_round_trip_the_default_remote(repo: Path, tmp_path: Path) -> None:
    from helpers_images import folder_bytes

    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")  # the project's default local remote
    params = _small_dag(repo, tmp_path, ("sr_x4",))
    # a task of the user's own (a paper task's name fixes its corruption: denoise_s30 is sigma 30, ipt.tasks)
    params["corrupt"]["tasks"]["noisy"] = {"name": "gaussian_noise", "sigma": 30}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    out = _run(DVC + ["repro", "corrupt"], repo)
    assert _ran(out) == ["corrupt@noisy", "corrupt@sr_x4", "shard"]
    assert json.loads((repo / "data" / "pairs" / "sr_x4" / "manifest.json").read_text())["samples"] == 3
    assert _ran(_run(DVC + ["repro", "corrupt"], repo)) == []

    params["corrupt"]["tasks"]["noisy"]["sigma"] = 25  # edit one corruption: one stage reruns
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _ran(_run(DVC + ["repro", "corrupt"], repo)) == ["corrupt@noisy"]

    params["corrupt"]["tasks"]["denoise_s15"] = {"name": "gaussian_noise", "sigma": 15}  # a new task: only it runs
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _ran(_run(DVC + ["repro", "corrupt"], repo)) == ["corrupt@denoise_s15"]

    # A sweep point as an experiment: `dvc exp run -S` changes one param and reruns what depends on it only.
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid", "commit", "-qm", "data"], repo)
    out = _run(DVC + ["exp", "run", "-S", "corrupt.tasks.noisy.sigma=20", "corrupt"], repo)
    assert _ran(out) == ["corrupt@noisy"]
    diff = json.loads(_run(DVC + ["params", "diff", "--json"], repo).strip().splitlines()[-1])
    assert diff["params.yaml"]["corrupt.tasks.noisy.sigma"] == {"old": 25, "new": 20, "diff": -5}

    outs = ("clean", "pairs/sr_x4", "pairs/noisy", "pairs/denoise_s15")
    before = {d: folder_bytes(repo / "data" / d) for d in outs}
    _run(DVC + ["push", "shard", "corrupt"], repo)
    assert any((repo / ".dvc-remote").rglob("*")), "nothing pushed to the default local remote"
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    _run(DVC + ["pull", "shard", "corrupt"], repo)
    assert {d: folder_bytes(repo / "data" / d) for d in outs} == before


@pytest.mark.slow
def test_paper_scale_dry_run_lists_the_stages_and_the_torchrun_lines(repo: Path) -> None:
    """README "At paper scale": ImageNet on S3, the paper's model, 4 nodes x 8 GPUs. `python -m flows.pipeline
    --dry-run` plans every stage (DVC's status and DAG) without running one, with the exact torchrun lines."""
    import shlex

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["shard"].update(source="s3://my-bucket/ILSVRC2012_img_train.tar", executor="dask")
    params["pretrain"].update(model_size="paper", image_residual=False, batch_size=256, lr=5.0e-5, steps=300000)
    params["launch"].update(nproc_per_node=8, nnodes=4, rdzv_endpoint="node0.cluster:29400", rdzv_id="ipt-paper")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    out = _run([sys.executable, "-m", "flows.pipeline", "--dry-run", "--workdir", str(repo)], ROOT)
    planned = re.findall(r"^(\S+):$", out, flags=re.M)
    tasks = list(params["corrupt"]["tasks"])
    assert planned[0] == "shard" and set(planned) == {"shard", "pretrain", "register-pretrained"} | {
        f"{s}@{t}" for s in ("corrupt", "finetune", "benchmark", "register") for t in tasks
    }
    assert planned.index("pretrain") > max(planned.index(f"corrupt@{t}") for t in tasks)
    assert not (repo / "data" / "clean").exists()  # nothing ran
    torchrun = [line.strip() for line in out.splitlines() if "torch.distributed.run" in line]
    assert len(torchrun) == 1 + len(tasks)  # pretrain and every finetune
    assert shlex.split(torchrun[0]) == [
        "python", "-m", "torch.distributed.run", "--nnodes=4", "--nproc-per-node=8", "--rdzv-backend=c10d",
        "--rdzv-endpoint=node0.cluster:29400", "--rdzv-id=ipt-paper", "--max-restarts=0",
        "-m", "ipt.cli", "pretrain", "--log-every", "0",
    ]  # fmt: skip


def test_adding_a_refine_task_leaves_the_other_refine_stages_params_unchanged(repo: Path) -> None:
    """refine@T depends on the whole `refine:` section; the task list lives outside it (`refine_tasks`), so the
    params values DVC records for refine@sr_x2 are the same before and after a task is added: only the new runs."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    def recorded(tasks: list[str]) -> dict[str, dict]:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["refine_tasks"] = tasks
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        with Repo(str(repo)) as r:
            stages = {s.name: s for s in r.index.stages if s.name.startswith("refine@")}
            assert sorted(stages) == sorted(f"refine@{t}" for t in tasks)
            return {
                name: {k: v for d in s.deps if isinstance(d, ParamsDependency) for k, v in d.read_params().items()}
                for name, s in stages.items()
            }

    one, two = recorded(["sr_x2"]), recorded(["sr_x2", "derain"])
    assert set(one["refine@sr_x2"]) >= {"refine", "benchmark", "seed"}
    assert one["refine@sr_x2"] == two["refine@sr_x2"]


def test_refine_tasks_inside_the_refine_section_is_refused_naming_the_new_key(tmp_path: Path, capsys) -> None:
    from ipt.cli import main

    (tmp_path / "params.yaml").write_text("refine:\n  tasks: [sr_x2]\n  steps: 2\n")
    assert main(["refine", "--task", "sr_x2", "--params", str(tmp_path / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "params.yaml") in err and "refine_tasks" in err


@pytest.mark.slow
def test_dvc_metrics_are_scores_only_and_the_benchmark_stage_rewrites_the_same_bytes(repo: Path) -> None:
    """What `dvc metrics` reads holds scores only: every stage's metrics file is an `ipt benchmark --scores` output,
    its report (hardware, versions, model hash, per-image values) a plain output beside it. The benchmark stage's
    own baseline command, run twice: DVC reads only numbers from its metrics, and the rerun rewrites both files
    byte for byte (no timing in either), so `git status` and `dvc metrics diff` stay quiet."""
    from dvc.repo import Repo

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["corrupt"]["tasks"] = {"sr_x2": params["corrupt"]["tasks"]["sr_x2"]}
    params["refine_tasks"] = ["sr_x2"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with Repo(str(repo)) as r:
        stages = {s.name: s for s in r.index.stages}
    metric_stages = {name: s for name, s in stages.items() if any(o.metric for o in s.outs)}
    assert sorted(metric_stages) == ["benchmark@sr_x2", "refine@sr_x2"]
    for name, stage in metric_stages.items():
        words = " ".join(stage.cmd if isinstance(stage.cmd, list) else [stage.cmd]).split()
        scores = {words[i + 1] for i, w in enumerate(words) if w == "--scores"}
        reports = {words[i + 1] for i, w in enumerate(words) if w == "--out" and words[i - 1] != "--checkpoint"}
        assert {o.def_path for o in stage.outs if o.metric} == scores, name
        plain = {o.def_path for o in stage.outs if not o.metric and not o.plot}
        assert {p for p in reports if not p.startswith("metrics/refine/register")} <= plain, name

    (baseline,) = [c for c in stages["benchmark@sr_x2"].cmd if "--model baseline" in c]
    files = [repo / "metrics" / "baseline" / "sr_x2.json", repo / "metrics" / "scores" / "baseline" / "sr_x2.json"]
    written = []
    for _ in range(2):
        subprocess.run(baseline, shell=True, cwd=repo, env=_env(), check=True, capture_output=True, text=True)
        written.append([f.read_bytes() for f in files])
    assert written[0] == written[1]
    target = "metrics/scores/baseline/sr_x2.json"
    shown = subprocess.run([*DVC, "metrics", "show", "--json", target], cwd=repo, env=_env(), capture_output=True)
    assert shown.returncode == 0, shown.stderr
    shown = json.loads(shown.stdout)

    def leaves(tree):
        for v in tree.values():
            yield from leaves(v) if isinstance(v, dict) else [v]

    values = list(leaves(shown[""]["data"][target]["data"]))
    assert values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values), values
    assert "hardware" in json.loads(files[0].read_text())  # how the scores were made: in the report beside them
