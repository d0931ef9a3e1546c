"""`ipt register`: registry contents per task, and the champion alias moving only on a better score."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ipt.checkpoint import load_model, official_state_dict, save_checkpoint
from ipt.cli import main
from ipt.config import ModelSpec
from ipt.model import build_ipt

pytest.importorskip("mlflow")


@pytest.fixture
def uri(sqlite_mlflow_uri: str) -> str:
    return sqlite_mlflow_uri


def _report(
    task: str, set5: float, set14: float, ckpt: Path, protocol: str = "ipt", counts: tuple[int, int] = (5, 14), **extra
) -> dict:
    """A report of ``ckpt`` (by its sha256) as ``ipt benchmark`` writes it: per-dataset means, counts and images."""
    import hashlib

    def block(psnr: float, n: int) -> dict:
        return {"psnr_y": psnr, "images": n, "per_image": [{"name": f"{i:03d}", "psnr_y": psnr} for i in range(n)]}

    return {
        "task": task,
        "model": str(ckpt),
        "model_sha256": hashlib.sha256(Path(ckpt).read_bytes()).hexdigest(),
        "protocol": protocol,
        **extra,
        "datasets": {"Set5": block(set5, counts[0]), "Set14": block(set14, counts[1])},
    }


def _register(tmp_path: Path, ckpt: Path, task: str | None, report: dict | None, n: int) -> dict:
    argv = ["register", "--checkpoint", str(ckpt), "--out", str(tmp_path / f"decision{n}.json")]
    if task:
        argv += ["--task", task]
    if report is not None:
        (tmp_path / f"r{n}.json").write_text(json.dumps(report))
        argv += ["--report", str(tmp_path / f"r{n}.json")]
    assert main(argv) == 0
    return json.loads((tmp_path / f"decision{n}.json").read_text())


def test_task_versions_hold_model_head_tail_and_champion_moves_only_up(tmp_path: Path, uri: str) -> None:
    from mlflow.tracking import MlflowClient

    torch.manual_seed(0)
    spec = ModelSpec.for_tasks(["sr_x2", "denoise_s30"], n_feats=8, num_layers=1, num_heads=2, patch_size=12)
    model = build_ipt(spec)
    ckpt = save_checkpoint(tmp_path / "pretrained.pt", model)

    d1 = _register(tmp_path, ckpt, "sr_x2", _report("sr_x2", 30.0, 28.0, ckpt), 1)
    assert d1["version"] == "1" and d1["promoted"] and d1["reason"] == "no champion yet"
    d2 = _register(tmp_path, ckpt, "sr_x2", _report("sr_x2", 29.0, 28.5, ckpt), 2)  # mean 28.75 < 29.0
    assert not d2["promoted"] and d2["champion"] == "1" and "does not beat" in d2["reason"]
    d3 = _register(tmp_path, ckpt, "sr_x2", _report("sr_x2", 30.5, 28.0, ckpt), 3)
    assert d3["promoted"] and d3["champion"] == "3"

    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias("ipt-sr_x2", "champion").version) == "3"
    from ipt.modeluri import resolve_model_uri

    latest, three = resolve_model_uri("models:/ipt-sr_x2/latest"), resolve_model_uri("models:/ipt-sr_x2/3")
    assert latest == three  # the same cached download, not a fresh temp copy per call
    cache = Path(os.environ["IPT_MODEL_CACHE"])
    assert cache in three.parents and resolve_model_uri("models:/ipt-sr_x2@champion") == three
    assert [p.name for p in three.parents if p.parent.parent == cache] == ["ipt-sr_x2"]
    assert sorted(p.name for p in (cache / three.relative_to(cache).parts[0] / "ipt-sr_x2").iterdir()) == ["3"]
    mv = client.get_model_version("ipt-sr_x2", "2")
    assert mv.tags["task"] == "sr_x2" and float(mv.tags["score"]) == pytest.approx(28.75)
    files = {a.path.split("/")[-1] for a in client.list_artifacts(mv.run_id, "ipt-sr_x2")}
    assert {"benchmark.json", "head.pt", "official.pt", "tail.pt", "MLmodel", "data"} <= files  # an MLflow Model
    weights = {a.path.split("/")[-1] for a in client.list_artifacts(mv.run_id, "ipt-sr_x2/data/weights")}
    assert weights == {"model.pt"}

    local = Path(client.download_artifacts(mv.run_id, "ipt-sr_x2", str(tmp_path / "dl")))
    official = official_state_dict(model, "sr_x2")
    head = torch.load(local / "head.pt", weights_only=True)
    tail = torch.load(local / "tail.pt", weights_only=True)
    assert head and all(k.startswith("head.0.") and torch.equal(v, official[k]) for k, v in head.items())
    assert tail and all(k.startswith("tail.0.") and torch.equal(v, official[k]) for k, v in tail.items())
    single = load_model(local / "data" / "weights" / "model.pt")
    assert single.spec.task_names == ("sr_x2",)
    assert all(torch.equal(v, official[k]) for k, v in single.state_dict().items())

    x = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(x).save(tmp_path / "in.png")
    argv = ["restore", str(tmp_path / "in.png"), str(tmp_path / "out.png"), "--weights", "models:/ipt-sr_x2@champion"]
    assert main(argv + ["--quiet"]) == 0
    assert np.asarray(Image.open(tmp_path / "out.png")).shape == (40, 48, 3)


def test_pretrained_and_rescoring_rules(tmp_path: Path, uri: str) -> None:
    torch.manual_seed(0)
    model = build_ipt(ModelSpec.for_tasks(["sr_x2", "denoise_s30"], n_feats=8, num_layers=1, num_heads=2))
    ckpt = save_checkpoint(tmp_path / "pretrained.pt", model)
    d = _register(tmp_path, ckpt, None, None, 1)
    assert d["name"] == "ipt-pretrained" and d["promoted"] and d["score"] is None
    d2 = _register(tmp_path, ckpt, None, None, 2)  # unscored after unscored: the newest is the champion
    assert d2["promoted"] and d2["champion"] == "2" and "the newest version" in d2["reason"]
    _register(tmp_path, ckpt, "denoise_s30", _report("denoise_s30", 30.0, 30.0, ckpt, seed=1), 3)
    d = _register(tmp_path, ckpt, "denoise_s30", _report("denoise_s30", 40.0, 40.0, ckpt, "matlab", seed=1), 4)
    # another protocol is not comparable: the champion stays, the version is registered, no rescore is claimed
    assert not d["promoted"] and d["champion"] == "1" and d["version"] == "2"
    assert "not comparable" in d["reason"] and "protocol ipt vs matlab" in d["reason"]
    assert "champion kept" in d["reason"] and d["reason"].count("rescored") == d["reason"].count("nothing was rescored")

    from ipt import registry, tracking

    tracker, _ = tracking.stage_run("ipt-register", "register", required=True)
    report = _report("denoise_s30", 20.0, 20.0, ckpt, "matlab", seed=1)
    kept = registry.register(ckpt, task="denoise_s30", report=report, tracker=tracker)
    assert not kept["promoted"] and kept["champion"] == "1"
    moved = registry.register(ckpt, task="denoise_s30", report=report, tracker=tracker, allow_new_key=True)
    assert moved["promoted"] and moved["champion"] == moved["version"] == "4"
    assert "nothing was rescored" in moved["reason"] and "a new score key was allowed" in moved["reason"]
    # from then on, matlab-protocol scores compare with the new champion's
    assert not registry.register(ckpt, task="denoise_s30", report=report, tracker=tracker)["promoted"]
    tracker.finish()


def test_register_errors_are_one_line(tmp_path: Path, uri: str, capsys) -> None:
    model = build_ipt(ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=2))
    ckpt = save_checkpoint(tmp_path / "m.pt", model)
    (tmp_path / "r.json").write_text(json.dumps(_report("sr_x3", 1, 1, ckpt)))
    assert main(["register", "--checkpoint", str(ckpt), "--task", "sr_x2", "--report", str(tmp_path / "r.json")]) == 2
    assert "scores task 'sr_x3', not 'sr_x2'" in capsys.readouterr().err
    (tmp_path / "g.json").write_text(json.dumps(_report("sr_x2", 1, 1, ckpt) | {"inputs": "sr_x2_blur"}))
    assert main(["register", "--checkpoint", str(ckpt), "--task", "sr_x2", "--report", str(tmp_path / "g.json")]) == 2
    err = capsys.readouterr().err
    assert "scores the sr_x2 model on sr_x2_blur's inputs (ipt benchmark --inputs" in err and len(err.splitlines()) == 1
    assert main(["register", "--checkpoint", str(ckpt), "--task", "sr_x4"]) == 2
    assert "task 'sr_x4' is not in this checkpoint" in capsys.readouterr().err
    assert main(["register", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_a_score_on_fewer_or_other_images_does_not_compare(tmp_path: Path, uri: str) -> None:
    """QA: a `--limit 1` report (one image, 37.33 dB) beat the full-set champion (34.00) and locked it in."""
    from ipt.registry import score_of

    torch.manual_seed(0)
    model = build_ipt(ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=2))
    ckpt = save_checkpoint(tmp_path / "m.pt", model)
    full = _report("sr_x2", 34.0, 34.0, ckpt, tiling="official")
    d1 = _register(tmp_path, ckpt, "sr_x2", full, 1)
    d2 = _register(tmp_path, ckpt, "sr_x2", _report("sr_x2", 37.33, 37.33, ckpt, counts=(1, 1)), 2)
    assert d1["promoted"] and not d2["promoted"] and d2["champion"] == "1"
    assert "sets Set14:14,Set5:5 vs Set14:1,Set5:1" in d2["reason"]
    d3 = _register(tmp_path, ckpt, "sr_x2", _report("sr_x2", 34.5, 34.0, ckpt, tiling="overlap"), 3)
    assert d3["promoted"] and "note: scored with a different tiling 'official' (champion) vs 'overlap'" in d3["reason"]

    # the same counts of other images, another noise seed, another corruption: other keys; tiling: the same key
    key = score_of(full)[1]
    other_names = json.loads(json.dumps(full))
    other_names["datasets"]["Set5"]["per_image"][0]["name"] = "zebra"
    assert score_of(other_names)[1] != key
    assert score_of(_report("sr_x2", 1.0, 1.0, ckpt, tiling="overlap", precision="bf16"))[1] == key
    noise = [score_of(_report("denoise_s30", 30.0, 30.0, ckpt, seed=s))[1] for s in (1, 2)]
    assert noise[0] != noise[1] and "seed=1" in noise[0]
    jpeg = [
        score_of(_report("jpeg_q10", 30.0, 30.0, ckpt, corruption={"name": "jpeg", "params": {"quality": q}}))[1]
        for q in (10, 20)
    ]
    assert jpeg[0] != jpeg[1] and "inputs=jpeg#" in jpeg[0]


def test_c_report_must_be_of_the_checkpoint(tmp_path: Path, uri: str, capsys) -> None:
    """QA: a `--model bicubic` report was attached to a fine-tuned checkpoint and made it champion."""
    torch.manual_seed(0)
    model = build_ipt(ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=2))
    ckpt = save_checkpoint(tmp_path / "m.pt", model)
    other = save_checkpoint(tmp_path / "other.pt", build_ipt(ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1)))
    argv = ["register", "--checkpoint", str(ckpt), "--task", "sr_x2", "--report", str(tmp_path / "r.json")]

    def refused(report: dict) -> str:
        (tmp_path / "r.json").write_text(json.dumps(report))
        assert main(argv) == 2
        return capsys.readouterr().err

    bicubic = _report("sr_x2", 40.0, 40.0, ckpt) | {"model": "bicubic"}
    del bicubic["model_sha256"]
    err = refused(bicubic)
    assert str(tmp_path / "r.json") in err and "'bicubic' baseline" in err
    err = refused(_report("sr_x2", 40.0, 40.0, other))  # the other file's sha256
    assert str(tmp_path / "r.json") in err and "not a score of this checkpoint" in err
    old = _report("sr_x2", 40.0, 40.0, other)
    del old["model_sha256"]  # a report from before model_sha256: compared by path
    err = refused(old)
    assert "other.pt" in err and "paths were compared" in err

    old["model"] = str(ckpt)
    d = _register(tmp_path, ckpt, "sr_x2", old, 1)
    assert d["promoted"] and d["report_check"] == "path" and d["warnings"]
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "by path only" in err  # one warning: line, no Python warnings noise
    d = _register(tmp_path, ckpt, "sr_x2", _report("sr_x2", 41.0, 40.0, ckpt), 2)
    assert d["promoted"] and d["report_check"] == "sha256" and not d["warnings"]


def test_nan_scores_ties_and_the_same_checkpoint_never_move_the_champion(tmp_path: Path, uri: str, capsys) -> None:
    """QA round 2: a NaN report became champion for good; the same checkpoint registered again beat itself (its
    stored score was rounded to 6 decimals)."""
    torch.manual_seed(0)
    spec = ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=2)
    ckpt = save_checkpoint(tmp_path / "a.pt", build_ipt(spec))
    twin = save_checkpoint(tmp_path / "b.pt", build_ipt(spec))  # other bytes (other init), same task
    argv = ["register", "--task", "sr_x2", "--checkpoint", str(ckpt), "--report", str(tmp_path / "nan.json")]
    (tmp_path / "nan.json").write_text(json.dumps(_report("sr_x2", float("nan"), 30.0, ckpt)))
    assert main(argv) == 2
    assert "psnr_y is not a finite number for ['Set5']" in capsys.readouterr().err
    (tmp_path / "nan.json").write_text(json.dumps([1, 2]))
    assert main(argv) == 2
    assert "not an `ipt benchmark` report" in capsys.readouterr().err

    score = 32.1234564  # stored as 32.123456 with 6 decimals, which the same score then "beat"
    first = _register(tmp_path, ckpt, "sr_x2", _report("sr_x2", score, score, ckpt), 1)
    assert first["promoted"]
    again = _register(tmp_path, ckpt, "sr_x2", _report("sr_x2", score, score, ckpt), 2)
    assert not again["promoted"] and again["reason"].endswith("this is the champion's own checkpoint again")
    tie = _register(tmp_path, twin, "sr_x2", _report("sr_x2", score, score, twin), 3)
    assert not tie["promoted"] and "does not beat champion v1" in tie["reason"]
    better = _register(tmp_path, twin, "sr_x2", _report("sr_x2", score + 0.01, score, twin), 4)
    assert better["promoted"] and better["champion"] == "4"


def _store_and_tracker(tmp_path: Path):
    """A sqlite store of the test's own and a run in it; $MLFLOW_TRACKING_URI (the autouse fixture's) names another
    store, so a call that fell back to the environment's URI would read or write the wrong one."""
    from mlflow.tracking import MlflowClient

    from ipt import tracking

    store = f"sqlite:///{tmp_path / 'store.db'}"
    assert os.environ["MLFLOW_TRACKING_URI"] != store
    return MlflowClient(store), tracking.MlflowTracker.start("ipt-register", "register", tracking_uri=store)


def test_register_writes_every_tag_file_and_field_into_its_trackers_store(tmp_path: Path) -> None:
    """register() to the letter: the refusals' first words, each tag, each stored file, every returned field, all
    in the store of the tracker it is given."""
    import yaml
    from mlflow.tracking import MlflowClient

    from ipt import registry
    from ipt.checkpoint import read_state
    from ipt.fileio import file_sha256
    from ipt.modeluri import FILES_SHA256_TAG

    torch.manual_seed(0)
    model = build_ipt(ModelSpec.for_tasks(["sr_x2", "denoise_s30"], n_feats=8, num_layers=1, num_heads=2))
    ckpt = save_checkpoint(tmp_path / "pretrained.pt", model)
    client, tracker = _store_and_tracker(tmp_path)

    unseeded = _report("denoise_s30", 30.0, 29.0, ckpt, tiling="overlap", precision="bf16")
    with pytest.raises(registry.RegistryError) as e:  # no report path given: the message says "report"
        registry.register(ckpt, task="sr_x2", report=unseeded, tracker=tracker)
    assert str(e.value) == "report: scores task 'denoise_s30', not 'sr_x2'"
    with pytest.raises(registry.RegistryError) as e:
        probe = unseeded | {"prior_probe": "zero"}
        registry.register(ckpt, task="denoise_s30", report=probe, report_path="probe.json", tracker=tracker)
    assert str(e.value).startswith("probe.json: scores the refiner with its prior's output set to zero")
    assert client.search_registered_models() == []  # refused before anything was registered

    first = registry.register(ckpt, task="denoise_s30", report=unseeded, dataset="Set14", tracker=tracker)
    key = registry.score_of(unseeded, "psnr_y", "Set14")[1]
    assert "sets=Set14:14" in key and "seed=unrecorded" in key
    assert first == {  # Set14's 29.0, not the mean over both sets (29.5)
        "name": "ipt-denoise_s30",
        "version": "1",
        "score": 29.0,
        "score_key": key,
        "report_check": "sha256",
        "warnings": ["benchmark report records no noise seed; its score compares only with others that record none"],
        "champion_before": None,
        "champion": "1",
        "promoted": True,
        "reason": "no champion yet",
        "uri": "models:/ipt-denoise_s30/1",
    }
    mv = client.get_model_version("ipt-denoise_s30", "1")
    assert {k: v for k, v in mv.tags.items() if k != FILES_SHA256_TAG} == {
        "checkpoint_sha256": file_sha256(ckpt),
        "source": str(ckpt),
        "score": "29.0",
        "score_key": key,
        "report_check": "sha256",
        "score_tiling": "overlap",
        "score_precision": "bf16",
        "task": "denoise_s30",
    }
    assert str(client.get_model_version_by_alias("ipt-denoise_s30", "champion").version) == "1"
    assert MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).search_registered_models() == []

    local = Path(client.download_artifacts(mv.run_id, "ipt-denoise_s30", str(tmp_path / "task")))
    assert json.loads((local / "benchmark.json").read_text()) == unseeded
    official = official_state_dict(model, "denoise_s30")
    stored = torch.load(local / "official.pt", weights_only=True)
    assert stored.keys() == official.keys() and all(torch.equal(stored[k], v) for k, v in official.items())
    assert read_state(local / "data" / "weights" / "model.pt")["meta"] == {"task": "denoise_s30"}
    served = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert served["config"] == {"task": "denoise_s30"}  # the served model restores this task by default

    seeded = _report("denoise_s30", 31.0, 31.0, ckpt, seed=1)
    second = registry.register(ckpt, task="denoise_s30", report=seeded, report_path="s.json", tracker=tracker)
    assert second["warnings"] == [] and second["champion_before"] == {"version": "1", "tags": mv.tags}
    third = registry.register(ckpt, task="denoise_s30", report=unseeded, report_path="u.json", tracker=tracker)
    assert third["warnings"] == ["u.json records no noise seed; its score compares only with others that record none"]

    whole = registry.register(ckpt, tracker=tracker)
    assert whole["name"] == "ipt-pretrained" and whole["score_key"] is None and whole["report_check"] is None
    mv = client.get_model_version("ipt-pretrained", whole["version"])
    local = Path(client.download_artifacts(mv.run_id, "ipt-pretrained", str(tmp_path / "whole")))
    assert read_state(local / "data" / "weights" / "model.pt")["meta"] == {"tasks": ("sr_x2", "denoise_s30")}
    assert "config" not in yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    tracker.finish()


def test_a_failed_champion_decision_leaves_no_version_behind(tmp_path: Path, monkeypatch) -> None:
    """The store failing after the version was created (here: setting the alias) deletes that version again, in the
    tracker's store; the model itself goes too when it was its only version."""
    from ipt import registry, versions
    from ipt.errors import IPTError

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "m.pt", build_ipt(ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1)))
    client, tracker = _store_and_tracker(tmp_path)

    def store_down(*args, **kwargs):
        raise IPTError("the store went away")

    with monkeypatch.context() as m:
        m.setattr(versions, "set_alias", store_down)
        with pytest.raises(IPTError, match="the store went away"):
            registry.register(ckpt, task="sr_x2", report=_report("sr_x2", 30.0, 30.0, ckpt), tracker=tracker)
    assert client.search_registered_models() == []
    assert registry.register(ckpt, task="sr_x2", report=_report("sr_x2", 30.0, 30.0, ckpt), tracker=tracker)["promoted"]
    with monkeypatch.context() as m:
        m.setattr(versions, "set_alias", store_down)
        with pytest.raises(IPTError, match="the store went away"):
            registry.register(ckpt, task="sr_x2", report=_report("sr_x2", 31.0, 31.0, ckpt), tracker=tracker)
    assert [str(mv.version) for mv in client.search_model_versions("name = 'ipt-sr_x2'")] == ["1"]
    assert str(client.get_model_version_by_alias("ipt-sr_x2", "champion").version) == "1"
    tracker.finish()
