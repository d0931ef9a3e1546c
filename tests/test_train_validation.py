"""Validation while training: a held-out split never trained on, scored with the project's protocol, logged per
step; the best validated weights kept with their step; `export` picks what model.pt holds; bad values refused."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_loop import RecordingTracker

from helpers_pairs import TINY_MODEL, make_pair_root, tiny_pretrain
from ipt.checkpoint import load_model, read_state
from ipt.config import ModelSpec
from ipt.metrics import crop_border_for, psnr_y, ssim_y
from ipt.model import build_ipt
from ipt.train.data import StreamSpec, _Lane, find_shards, held_out, source_of
from ipt.train.errors import TrainingError
from ipt.train.loop import finetune, pretrain
from ipt.train.state import list_checkpoints, read_metrics
from ipt.train.validate import evaluate, held_out_sets

TASKS = ("sr_x2", "denoise_s30")
SCALES = {"sr_x2": 2, "denoise_s30": 1}


def numbers(run) -> list[dict]:
    """The per-step training numbers (not the time)."""
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in read_metrics(run)]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pair_root(tmp_path_factory.mktemp("pairs"), samples=16, shards=2)


def test_the_split_is_by_source_image_the_same_in_every_task_and_never_trained(pairs) -> None:
    assert source_of("img_0003-1a2b3c4d-c01") == "img_0003-1a2b3c4d" == source_of("img_0003-1a2b3c4d-c00")
    keys = [f"img{i:04d}-c00" for i in range(16)]
    out = [k for k in keys if held_out(7, 0.3, k)]
    assert 0 < len(out) < 16 and out == [k for k in keys if held_out(7, 0.3, k.replace("-c00", "-c05"))]
    assert out != [k for k in keys if held_out(8, 0.3, k)]  # seeded
    urls = find_shards(pairs, TASKS)
    sets = held_out_sets(urls, SCALES, seed=7, fraction=0.3, samples=99, patch=12)
    assert set(sets["sr_x2"].keys) == set(sets["denoise_s30"].keys) == set(out)
    spec = StreamSpec(urls, TASKS, (1, 1), SCALES, 12, 2, 2, seed=7, holdout=0.3)
    lanes = [_Lane(spec, lane) for lane in (0, 1)]
    trained = {lane.next(task, 0)["__key__"] for lane in lanes for task in TASKS for _ in range(40)}
    assert trained and not trained & set(out)
    assert len(trained) == 16 - len(out)  # 40 draws per lane and task reach every trained pair


def test_scores_are_the_metrics_modules_on_the_held_out_pairs(pairs) -> None:
    sets = held_out_sets(find_shards(pairs, TASKS), SCALES, seed=7, fraction=0.3, samples=4, patch=12)
    torch.manual_seed(0)
    model = build_ipt(ModelSpec.from_dict({**TINY_MODEL, "tasks": [["sr_x2", 2], ["denoise_s30", 1]]})).train()
    got = evaluate(model, sets, torch.device("cpu"))
    assert model.training  # put back as it was
    for task, vs in sets.items():
        with torch.no_grad():
            sr = model.eval()(vs.lq.float(), task)
        border = crop_border_for(vs.scale)
        want_p = sum(psnr_y(s, h, crop_border=border) for s, h in zip(sr, vs.hr, strict=True)) / len(vs.keys)
        want_s = sum(ssim_y(s, h, crop_border=border) for s, h in zip(sr, vs.hr, strict=True)) / len(vs.keys)
        assert got[f"psnr_y_{task}"] == pytest.approx(want_p) and got[f"ssim_y_{task}"] == pytest.approx(want_s)
    assert got["psnr_y"] == pytest.approx((got["psnr_y_sr_x2"] + got["psnr_y_denoise_s30"]) / 2)
    # anchor: an untrained image-residual model is its baseline, the noisy input itself for denoise_s30
    spec = {**TINY_MODEL, "image_residual": True, "tasks": [["denoise_s30", 1]]}
    base = evaluate(build_ipt(ModelSpec.from_dict(spec)), {"denoise_s30": sets["denoise_s30"]}, torch.device("cpu"))
    vs = sets["denoise_s30"]
    noisy = sum(psnr_y(a.float(), b) for a, b in zip(vs.lq, vs.hr, strict=True)) / len(vs.keys)
    assert base["psnr_y"] == pytest.approx(noisy) and 10 < noisy < 30


def test_validation_curve_best_checkpoint_and_export(pairs, tmp_path) -> None:
    tracker = RecordingTracker()
    kw = dict(steps=10, lr=1e-3, val_every=4, val_fraction=0.3, val_samples=4, checkpoint_every=5, seed=7)
    result = pretrain(tiny_pretrain(pairs, tmp_path / "run", **kw), tracker=tracker)
    rows = read_metrics(tmp_path / "run", "validation.jsonl")
    assert [r["step"] for r in rows] == [4, 8, 10]  # every val_every steps and at the end
    logged = {s: m for s, m in tracker.metrics if "val_psnr_y" in m}
    assert sorted(logged) == [4, 8, 10] and {"val_ssim_y", "val_psnr_y_sr_x2", "val_ssim_y_denoise_s30"} <= set(
        logged[4]
    )
    assert [logged[r["step"]]["val_psnr_y"] for r in rows] == [r["psnr_y"] for r in rows]
    best = max(rows, key=lambda r: r["psnr_y"])
    assert result["best"]["step"] == best["step"] and result["best"]["psnr_y"] == best["psnr_y"]
    kept = read_state(tmp_path / "run" / "best.pt")
    assert kept["meta"]["step"] == best["step"] and kept["meta"]["val"]["psnr_y"] == best["psnr_y"]
    ckpt = read_state(tmp_path / "run" / "checkpoints" / "step-00000010.pt")
    assert ckpt["train"]["best"] == result["best"]
    final = read_state(tmp_path / "run" / "model.pt")
    assert final["meta"]["export"] == "last" and final["meta"]["step"] == 10
    assert all(torch.equal(final["state_dict"][k], v) for k, v in ckpt["state_dict"].items())
    # the same run exporting the best step: model.pt holds best.pt's weights; the training is the same
    again = pretrain(tiny_pretrain(pairs, tmp_path / "best", export="best", **kw))
    assert numbers(tmp_path / "best") == numbers(tmp_path / "run") and again["best"] == result["best"]
    final = read_state(tmp_path / "best" / "model.pt")
    assert final["meta"] | {"export": "best", "step": best["step"]} == final["meta"]
    assert all(torch.equal(final["state_dict"][k], v) for k, v in kept["state_dict"].items())
    assert json.loads((tmp_path / "run" / "config.json").read_text())["val_every"] == 4


def test_validation_changes_no_training_number_but_the_held_out_split(pairs, tmp_path) -> None:
    """Validating draws no random numbers: with a val_dir (nothing held out) the run equals one without validation."""
    val = make_pair_root(tmp_path / "val", samples=4, shards=1, seed=3)
    base = dict(steps=6, lr=1e-3, checkpoint_every=6)
    pretrain(tiny_pretrain(pairs, tmp_path / "plain", **base))
    pretrain(tiny_pretrain(pairs, tmp_path / "val_dir", val_every=2, val_dir=str(val), **base))
    assert numbers(tmp_path / "plain") == numbers(tmp_path / "val_dir")
    assert [r["step"] for r in read_metrics(tmp_path / "val_dir", "validation.jsonl")] == [2, 4, 6]


def test_finetune_validates_its_task_and_exports_the_best(pairs, tmp_path) -> None:
    pretrain(tiny_pretrain(pairs, tmp_path / "pre", steps=2))
    from ipt.train.config import FinetuneConfig

    cfg = FinetuneConfig(
        shards=str(pairs),
        out=str(tmp_path / "ft"),
        init=str(tmp_path / "pre"),
        task="sr_x2",
        steps=4,
        batch_size=4,
        lr=1e-3,
        val_every=2,
        val_fraction=0.3,
        val_samples=4,
        export="best",
        shuffle_buffer=8,
    )
    result = finetune(cfg)
    rows = read_metrics(tmp_path / "ft", "validation.jsonl")
    assert [r["step"] for r in rows] == [2, 4] and set(rows[0]) >= {"psnr_y_sr_x2", "ssim_y_sr_x2"}
    assert load_model(tmp_path / "ft" / "model.pt").spec.task_names == ("sr_x2",)
    assert read_state(tmp_path / "ft" / "official.pt") and result["best"]["step"] in (2, 4)
    assert [s for s, _ in list_checkpoints(tmp_path / "ft")] == [4]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("val_every: 0", "PretrainConfig.val_every must be a number of steps >= 1 (leave it out for no validation)"),
        ("val_every: -5", "PretrainConfig.val_every must be a number of steps >= 1"),
        ("ema_decay: 1.0", "PretrainConfig.ema_decay must be in [0, 1) (0: no EMA), got 1.0"),
        ("ema_decay: -0.1", "PretrainConfig.ema_decay must be in [0, 1)"),
        ("export: best", "PretrainConfig.export best needs validation: set val_every"),
        ("val_fraction: 1.5", "PretrainConfig.val_fraction must be in (0, 1)"),
        ("schedule: linear", "pretrain.schedule: 'linear' is not one of step, cosine"),
        ("schedule: cosine\n  milestones: [3]", "PretrainConfig.milestones apply to schedule step, not 'cosine'"),
    ],
)
def test_bad_values_are_refused_in_one_line_naming_the_param_before_training(
    pairs, tmp_path, capsys, line, message
) -> None:
    from ipt.cli import main

    params = tmp_path / "p.yaml"
    params.write_text(f"pretrain:\n  shards: {pairs}\n  out: {tmp_path / 'run'}\n  model_size: tiny\n  {line}\n")
    assert main(["pretrain", "--params", str(params), "--tasks", "sr_x2,denoise_s30"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert not (tmp_path / "run").exists()


def test_an_empty_or_missing_validation_folder_or_split_is_refused_before_training(pairs, tmp_path) -> None:
    val = make_pair_root(tmp_path / "val", tasks=("sr_x2",), samples=2, shards=1)
    with pytest.raises(TrainingError, match=r"^val_dir: .*denoise_s30: no pair shards for task 'denoise_s30'"):
        pretrain(tiny_pretrain(pairs, tmp_path / "a", val_every=2, val_dir=str(val)))
    make_pair_root(val, tasks=("denoise_s30",), samples=2, shards=1)
    manifest = val / "denoise_s30" / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(data | {"shards": [s | {"samples": 0} for s in data["shards"]]}))
    with pytest.raises(TrainingError, match=r"^val_dir: .*manifest.json: lists no non-empty shards") as e:
        pretrain(tiny_pretrain(pairs, tmp_path / "b", val_every=2, val_dir=str(val)))
    assert "\n" not in str(e.value)
    with pytest.raises(TrainingError, match=r"^val_fraction 1e-09: no source image of .* falls in the validation"):
        pretrain(tiny_pretrain(pairs, tmp_path / "c", val_every=2, val_fraction=1e-9))
    assert not any((tmp_path / r).exists() for r in "abc")
    from ipt.train.loop import preflight  # what `ipt launch` checks once before torchrun

    with pytest.raises(TrainingError, match="^val_dir: "):
        preflight(tiny_pretrain(pairs, tmp_path / "d", val_every=2, val_dir=str(tmp_path / "nowhere")))
