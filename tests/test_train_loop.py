"""pretrain() in one process: learning, fail-fast on non-finite losses, checkpoints, metrics, run-folder rules."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from helpers_pairs import make_pair_root, make_pair_shards, tiny_pretrain
from ipt.checkpoint import load_model, read_state
from ipt.train.errors import TrainingError
from ipt.train.loop import pretrain
from ipt.train.schedule import CosineDecay, StepDecay, schedule_from_state
from ipt.train.state import list_checkpoints, read_metrics


class RecordingTracker:
    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict]] = []
        self.params: dict = {}

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_params(self, params) -> None:
        self.params |= params

    def set_tags(self, tags) -> None:
        pass

    def log_image(self, image, artifact_file) -> None:
        pass

    def log_artifact(self, path, artifact_path=None) -> None:
        pass


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pair_root(tmp_path_factory.mktemp("pairs"), samples=8, shards=2)


@pytest.mark.slow
def test_loss_goes_down_on_a_fixed_tiny_set(pairs, tmp_path) -> None:
    tracker = RecordingTracker()
    cfg = tiny_pretrain(pairs, tmp_path / "run", steps=30, lr=1e-3, checkpoint_every=100, milestones=())
    result = pretrain(cfg, tracker=tracker)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run")]
    assert len(losses) == 30 and result["last"]["step"] == 30
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5, losses
    assert [s for s, _ in tracker.metrics] == list(range(1, 31))
    assert {"loss", "l1", "contrastive", "lr", "samples_per_s"} <= set(tracker.metrics[0][1])
    assert tracker.params["pretrain.lr"] == 1e-3


def test_non_finite_loss_stops_the_run_naming_step_and_task(pairs, tmp_path) -> None:
    cfg = tiny_pretrain(pairs, tmp_path / "run", lr=1e30)  # one Adam step of 1e30 overflows every output
    with pytest.raises(TrainingError, match=r"non-finite loss nan at step 2 \(task (sr_x2|denoise_s30)"):
        pretrain(cfg)
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.slow
def test_checkpoints_hold_everything_a_resume_needs_and_restore_can_load(pairs, tmp_path) -> None:
    cfg = tiny_pretrain(pairs, tmp_path / "run", steps=7, checkpoint_every=2, keep_checkpoints=2)
    pretrain(cfg)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [6, 7]  # pruned to the newest two
    ckpt = read_state(tmp_path / "run" / "checkpoints" / "step-00000007.pt")  # weights_only=True
    train = ckpt["train"]
    assert train["step"] == 7 and train["config"] == cfg.to_dict()
    assert {"state", "param_groups"} <= set(train["optimizer"]) and train["scheduler"]["milestones"] == [5]
    assert set(train["rng"][0]) == {"torch", "cuda", "numpy", "python"}
    assert train["data"] | {"position": 7} == train["data"] and train["data"]["lanes"] == 4
    final = load_model(tmp_path / "run" / "model.pt")
    assert final.spec.task_names == ("sr_x2", "denoise_s30")
    step = load_model(tmp_path / "run" / "checkpoints" / "step-00000007.pt")
    for k, v in final.state_dict().items():
        assert torch.equal(v, step.state_dict()[k])
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 8))
    assert float(rows[5]["lr"]) == pytest.approx(cfg.lr * 0.5) and float(rows[4]["lr"]) == cfg.lr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["stage"] == "pretrain"


def test_a_finished_run_is_not_overwritten_and_resumes_only_with_the_same_config(pairs, tmp_path) -> None:
    cfg = tiny_pretrain(pairs, tmp_path / "run", steps=3)
    pretrain(cfg)
    with pytest.raises(TrainingError, match="holds checkpoints .* pass resume"):
        pretrain(cfg)
    with pytest.raises(TrainingError, match="different configuration: lr"):
        pretrain(tiny_pretrain(pairs, tmp_path / "run", steps=3, lr=1e-4, resume=True))
    again = pretrain(tiny_pretrain(pairs, tmp_path / "run", steps=3, resume=True))
    assert again["resumed_from"] == 3 and len(read_metrics(tmp_path / "run")) == 3
    model = (tmp_path / "run" / "model.pt").read_bytes()
    with pytest.raises(TrainingError, match="already at step 3, past steps 2"):  # QA: it relabelled the model
        pretrain(tiny_pretrain(pairs, tmp_path / "run", steps=2, resume=True))
    assert (tmp_path / "run" / "model.pt").read_bytes() == model


def test_resume_refuses_shards_that_changed_since_the_checkpoint(tmp_path) -> None:
    pairs = make_pair_root(tmp_path / "pairs", samples=8, shards=2)
    run = tmp_path / "run"
    pretrain(tiny_pretrain(pairs, run, steps=2, checkpoint_every=1))
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    make_pair_shards(pairs, "sr_x2", samples=8, shards=2, seed=1)  # same names and counts, other pixels
    with pytest.raises(TrainingError, match=r"shards under .* changed since the checkpoint: sr_x2 \("):
        pretrain(tiny_pretrain(pairs, run, steps=4, checkpoint_every=1, resume=True))
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
    make_pair_shards(pairs, "sr_x2", samples=8, shards=2, seed=0)  # the same bytes again (e.g. `dvc checkout`)
    assert pretrain(tiny_pretrain(pairs, run, steps=4, checkpoint_every=1, resume=True))["resumed_from"] == 2


def test_recipe_hash_follows_the_numbers_not_the_paths() -> None:
    base = tiny_pretrain(Path("a"), Path("out1"), steps=3)
    assert base.recipe_hash() == tiny_pretrain(Path("b"), Path("out2"), steps=9, resume=True).recipe_hash()
    assert base.recipe_hash() != tiny_pretrain(Path("a"), Path("out1"), steps=3, lr=1e-4).recipe_hash()


@pytest.mark.parametrize("bad", [{"lr": float("nan")}, {"lr": float("inf")}, {"grad_clip": float("nan")}])
def test_non_finite_hyperparameters_are_refused(pairs, tmp_path, bad) -> None:
    with pytest.raises(TrainingError, match="must be a finite number"):
        tiny_pretrain(pairs, tmp_path / "run", **bad)


def test_a_truncated_shard_is_named(tmp_path) -> None:
    """QA: a truncated pair shard gave a tarfile.ReadError traceback (with DataLoader workers, wrapped in another)."""
    pairs = make_pair_root(tmp_path / "pairs", samples=8, shards=1)
    shard = pairs / "sr_x2" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    for workers in (0, 2):
        with pytest.raises(TrainingError) as e:
            pretrain(tiny_pretrain(pairs, tmp_path / f"run{workers}", steps=4, num_workers=workers))
        assert str(e.value).startswith(f"{shard}: unreadable pair shard") and "\n" not in str(e.value)


def test_step_decay_by_global_step() -> None:
    s = StepDecay(1.0, (2, 4), 0.5)
    assert [s.lr(i) for i in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_bad_config_is_a_training_error(pairs, tmp_path) -> None:
    from ipt.train.config import PretrainConfig

    with pytest.raises(TrainingError, match="unknown key"):
        PretrainConfig.from_dict({"shards": "x", "bogus": 1})
    with pytest.raises(TrainingError, match="steps: expected int"):
        PretrainConfig.from_dict({"steps": "10"})
    with pytest.raises(TrainingError, match="model: .*unknown key"):
        PretrainConfig(model={"n_feets": 8})
    with pytest.raises(TrainingError, match="task_weights"):
        PretrainConfig(tasks=("sr_x2",), task_weights=(1.0, 2.0))
    with pytest.raises(TrainingError, match="unknown pixel_loss 'l2'"):
        PretrainConfig(pixel_loss="l2")
    with pytest.raises(TrainingError, match="charbonnier_eps must be > 0"):
        PretrainConfig(pixel_loss="charbonnier", charbonnier_eps=0.0)


def test_cosine_with_linear_warmup_by_global_step() -> None:
    s = CosineDecay(1.0, total=12, warmup=4, min_lr=0.1)
    lrs = [s.lr(i) for i in range(13)]
    assert lrs[:5] == [0.25, 0.5, 0.75, 1.0, 1.0]  # update s of the warm-up uses (s + 1) / warmup
    assert lrs[8] == pytest.approx(0.1 + 0.9 * 0.5) and lrs[12] == pytest.approx(0.1)  # halfway; the end
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))
    assert [StepDecay(1.0, (4,), 0.5, warmup=2).lr(i) for i in range(6)] == [0.5, 1.0, 1.0, 1.0, 0.5, 0.5]
    again = schedule_from_state(s.state_dict())
    assert isinstance(again, CosineDecay) and [again.lr(i) for i in range(13)] == lrs
    old = {"base_lr": 1.0, "milestones": [2], "gamma": 0.5}  # a checkpoint from before kinds and warm-up
    assert [schedule_from_state(old).lr(i) for i in range(4)] == [1.0, 1.0, 0.5, 0.5]


def test_a_cosine_run_logs_its_rates_and_keeps_its_curve_when_extended(pairs, tmp_path) -> None:
    kw = dict(schedule="cosine", warmup_steps=2, lr=1e-3, min_lr=1e-4, checkpoint_every=2)
    pretrain(tiny_pretrain(pairs, tmp_path / "run", steps=6, **kw))
    want = CosineDecay(1e-3, total=6, warmup=2, min_lr=1e-4)
    assert [r["lr"] for r in read_metrics(tmp_path / "run")] == pytest.approx([want.lr(i) for i in range(6)])
    pretrain(tiny_pretrain(pairs, tmp_path / "run", steps=8, resume=True, **kw))
    assert [r["lr"] for r in read_metrics(tmp_path / "run")][6:] == pytest.approx([1e-4, 1e-4])
