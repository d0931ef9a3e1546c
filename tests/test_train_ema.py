"""The EMA of the weights: the recurrence, step by step in a run, kept in checkpoints, validated and exported."""

from __future__ import annotations

import pytest
import torch

from helpers_pairs import TINY_MODEL, make_pair_root, tiny_pretrain
from ipt.checkpoint import load_model, read_state
from ipt.config import ModelSpec
from ipt.model import build_ipt
from ipt.train.data import find_shards
from ipt.train.ema import WeightEMA
from ipt.train.loop import pretrain
from ipt.train.state import read_metrics
from ipt.train.validate import evaluate, held_out_sets


def test_the_ema_follows_ema_times_decay_plus_weights_times_one_minus_decay() -> None:
    torch.manual_seed(0)
    model = build_ipt(ModelSpec.from_dict({**TINY_MODEL, "tasks": [["sr_x2", 2]]}))
    ema = WeightEMA(model, 0.75)
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for k, v in ema.model.named_parameters():
        assert torch.allclose(v, w0[k] + 0.25, atol=1e-6), k
    for (k, v), b in zip(ema.model.named_buffers(), model.buffers(), strict=True):
        assert torch.equal(v, b), k  # buffers are copied, not averaged
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())


def test_a_run_with_ema_checkpoints_validates_and_exports_the_average(tmp_path) -> None:
    pairs = make_pair_root(tmp_path / "pairs", samples=16, shards=2)
    kw = dict(steps=4, lr=1e-3, checkpoint_every=1, keep_checkpoints=9, ema_decay=0.8, val_every=4, precision="fp32")
    result = pretrain(tiny_pretrain(pairs, tmp_path / "run", val_fraction=0.3, val_samples=4, **kw))
    ckpts = [read_state(tmp_path / "run" / "checkpoints" / f"step-{s:08d}.pt") for s in range(1, 5)]
    for before, after in zip(ckpts, ckpts[1:], strict=False):  # ema_s = lerp(ema_{s-1}, w_s, 1 - decay), exactly
        for k, e in after["train"]["ema"].items():
            w = after["state_dict"][k]
            want = before["train"]["ema"][k].lerp(w, 0.2) if w.is_floating_point() else w
            assert torch.equal(e, want), k
    final = read_state(tmp_path / "run" / "model.pt")
    assert final["meta"]["weights"] == "ema"
    assert all(torch.equal(final["state_dict"][k], v) for k, v in ckpts[-1]["train"]["ema"].items())
    assert any(not torch.equal(ckpts[-1]["state_dict"][k], v) for k, v in ckpts[-1]["train"]["ema"].items())
    # the validation scored the EMA, not the raw weights
    sets = held_out_sets(
        find_shards(pairs, ("sr_x2", "denoise_s30")),
        {"sr_x2": 2, "denoise_s30": 1},
        seed=result_seed(tmp_path),
        fraction=0.3,
        samples=4,
        patch=12,
    )
    got = evaluate(load_model(tmp_path / "run" / "model.pt"), sets, torch.device("cpu"))
    logged = read_metrics(tmp_path / "run", "validation.jsonl")[-1]
    assert logged["psnr_y"] == pytest.approx(got["psnr_y"], abs=1e-9)
    assert result["best"]["step"] == 4


def result_seed(tmp_path) -> int:
    import json

    return json.loads((tmp_path / "run" / "config.json").read_text())["seed"]
