"""Two controls IPT's claims need (docs/training.md): a pre-training of 0 steps, whose model.pt is the seeded initial
weights (a fine-tune from it is a fine-tune from scratch with the pretrained model's architecture), and
``data_fraction``, a seeded, nested share of the source images trained on."""

from __future__ import annotations

import pytest
import torch

from helpers_pairs import make_pair_root, tiny_pretrain
from ipt.checkpoint import load_model
from ipt.train.config import FinetuneConfig
from ipt.train.data import StreamSpec, _Lane, find_shards, held_out, in_subset
from ipt.train.errors import TrainingError
from ipt.train.loop import finetune, pretrain
from ipt.train.state import list_checkpoints, read_metrics

TASKS = ("sr_x2", "denoise_s30")
SCALES = {"sr_x2": 2, "denoise_s30": 1}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pair_root(tmp_path_factory.mktemp("pairs"), samples=16, shards=2)


def test_the_fraction_is_a_seeded_nested_draw_per_source_image() -> None:
    keys = [f"img{i:04d}-1a2b3c4d" for i in range(400)]
    quarter = {k for k in keys if in_subset(7, 0.25, k + "-c00")}
    half = {k for k in keys if in_subset(7, 0.5, k + "-c00")}
    assert quarter < half < set(keys)  # nested at one seed
    assert 70 < len(quarter) < 130 and 170 < len(half) < 230  # binomial(400, p): within ~4 sd
    assert all(in_subset(7, 1.0, k) for k in keys)
    assert quarter == {k for k in keys if in_subset(7, 0.25, k + "-c07")}  # every crop of an image goes together
    assert quarter != {k for k in keys if in_subset(8, 0.25, k + "-c00")}  # seeded
    # independent of the validation hold-out's draw: the subset is not the held-out set or its complement
    out = {k for k in keys if held_out(7, 0.25, k + "-c00")}
    assert quarter != out and 0 < len(quarter & out) < len(quarter)


def test_the_stream_trains_only_on_the_fraction_and_never_on_the_held_out_images(pairs) -> None:
    urls = find_shards(pairs, TASKS)
    everything = {f"{k}" for k in _streamed(StreamSpec(urls, TASKS, (1, 1), SCALES, 12, 2, 2, seed=7))}
    assert len(everything) == 16
    spec = StreamSpec(urls, TASKS, (1, 1), SCALES, 12, 2, 2, seed=7, holdout=0.3, subset=0.5)
    got = _streamed(spec)
    want = {k for k in everything if not held_out(7, 0.3, k) and in_subset(7, 0.5, k)}
    assert 0 < len(want) < 16 - sum(held_out(7, 0.3, k) for k in everything)
    assert got == want


def _streamed(spec: StreamSpec) -> set[str]:
    lanes = [_Lane(spec, lane) for lane in (0, 1)]
    return {lane.next(task, 0)["__key__"] for lane in lanes for task in TASKS for _ in range(60)}


def test_a_fraction_changes_the_batches_and_a_fraction_of_one_changes_nothing(pairs, tmp_path) -> None:
    base = dict(steps=4, lr=1e-3, checkpoint_every=4)
    pretrain(tiny_pretrain(pairs, tmp_path / "all", **base))
    pretrain(tiny_pretrain(pairs, tmp_path / "one", data_fraction=1.0, **base))
    pretrain(tiny_pretrain(pairs, tmp_path / "half", data_fraction=0.5, **base))
    loss = [[r["loss"] for r in read_metrics(tmp_path / d)] for d in ("all", "one", "half")]
    assert loss[0] == loss[1] and loss[0] != loss[2]


def test_pretraining_zero_steps_writes_the_seeded_initial_weights_and_a_scratch_finetune_starts_there(
    pairs, tmp_path
) -> None:
    a = pretrain(tiny_pretrain(pairs, tmp_path / "a", steps=0, seed=3))
    pretrain(tiny_pretrain(pairs, tmp_path / "b", steps=0, seed=3))
    pretrain(tiny_pretrain(pairs, tmp_path / "c", steps=0, seed=4))
    assert a["steps"] == 0 and a["last"] == {} and not list_checkpoints(tmp_path / "a")
    sa, sb, sc = (load_model(tmp_path / d / "model.pt").state_dict() for d in "abc")
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)  # the seed decides them
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    # the init is the one a real pre-training of that seed starts from: one step at lr ~0 moves nothing visible
    pretrain(tiny_pretrain(pairs, tmp_path / "one", steps=1, seed=3, lr=1e-30, checkpoint_every=1))
    s1 = load_model(tmp_path / "one" / "model.pt").state_dict()
    assert all(torch.allclose(sa[k].float(), s1[k].float(), rtol=0, atol=1e-20) for k in sa)
    model = load_model(tmp_path / "a" / "model.pt")
    assert model.spec.task_names == TASKS
    cfg = FinetuneConfig(
        shards=str(pairs), out=str(tmp_path / "ft"), init=str(tmp_path / "a"), task="sr_x2", steps=2, batch_size=4,
        lr=1e-3, shuffle_buffer=8,
    )  # fmt: skip
    assert finetune(cfg)["last"]["step"] == 2


@pytest.mark.parametrize(
    ("stage", "line", "message"),
    [
        ("pretrain", "steps: -1", "PretrainConfig.steps must be >= 0, got -1 (0 writes the seeded initial weights"),
        ("finetune", "steps: 0", "FinetuneConfig.steps must be >= 1, got 0"),
        ("pretrain", "data_fraction: 0", "PretrainConfig.data_fraction must be in (0, 1] (1: every source image)"),
        ("pretrain", "data_fraction: 1.5", "PretrainConfig.data_fraction must be in (0, 1]"),
    ],
)
def test_bad_steps_and_fractions_are_refused_in_one_line(pairs, tmp_path, capsys, stage, line, message) -> None:
    from ipt.cli import main

    params = tmp_path / "p.yaml"
    extra = "model_size: tiny" if stage == "pretrain" else f"init: {tmp_path / 'none'}"
    params.write_text(f"{stage}:\n  shards: {pairs}\n  out: {tmp_path / 'run'}\n  {extra}\n  {line}\n")
    args = ["--tasks", "sr_x2,denoise_s30"] if stage == "pretrain" else ["--task", "sr_x2"]
    assert main([stage, "--params", str(params), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert not (tmp_path / "run").exists()


def test_a_zero_step_pretrain_from_the_cli_says_so(pairs, tmp_path, capsys) -> None:
    from ipt.cli import main

    params = tmp_path / "p.yaml"
    params.write_text(f"pretrain:\n  shards: {pairs}\n  out: {tmp_path / 'run'}\n  model_size: tiny\n  steps: 0\n")
    assert main(["pretrain", "--params", str(params), "--tasks", "sr_x2,denoise_s30"]) == 0
    assert "pretrain: nothing left to train" in capsys.readouterr().err
    assert (tmp_path / "run" / "model.pt").is_file()


def test_a_fraction_that_keeps_no_image_is_refused_before_training(tmp_path) -> None:
    from ipt.train.data import first_trained_key

    few = make_pair_root(tmp_path / "few", samples=2, shards=1)
    urls = find_shards(few, TASKS)
    keys = [first_trained_key(urls[t], 7, 0.0, 1.0) for t in TASKS]
    assert all(keys)  # everything trains
    tiny = 1e-9  # no image of two passes a draw below 1e-9 (with this seed)
    assert first_trained_key(urls["sr_x2"], 7, 0.0, tiny) is None
    with pytest.raises(TrainingError, match=r"sr_x2: data_fraction 1e-09 \(after the validation hold-out\) keeps no"):
        pretrain(tiny_pretrain(few, tmp_path / "run", data_fraction=tiny))
    assert not (tmp_path / "run" / "model.pt").exists()
