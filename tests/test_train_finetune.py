"""finetune(): from our pretrained run or an official IPT_pretrain.pt layout to a single-task checkpoint that
`ipt restore` and the official layout both load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers_pairs import TINY_MODEL, make_pair_root, tiny_pretrain
from ipt.checkpoint import load_model
from ipt.cli import main as ipt_main
from ipt.config import OFFICIAL_PRETRAIN_TASKS, ModelSpec
from ipt.model import build_ipt
from ipt.train.config import FinetuneConfig
from ipt.train.errors import TrainingError
from ipt.train.loop import finetune, pretrain


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    pairs = make_pair_root(root / "pairs", samples=6, shards=1)
    pretrain(tiny_pretrain(pairs, root / "pre", steps=2))
    return pairs, root / "pre"


def ft_config(pairs, out, init, **kw) -> FinetuneConfig:
    base = dict(shards=str(pairs), out=str(out), init=str(init), task="denoise_s30", steps=3, batch_size=2)
    return FinetuneConfig(**(base | dict(shuffle_buffer=4, checkpoint_every=2) | kw))


@pytest.mark.slow
def test_finetune_writes_a_single_task_checkpoint_restore_can_use(pretrained, tmp_path) -> None:
    pairs, pre = pretrained
    result = finetune(ft_config(pairs, tmp_path / "ft", pre))  # a run folder: its model.pt
    model = load_model(result["model"])
    assert model.spec.tasks == (("denoise_s30", 1),) and model.spec.queries == 1
    start = load_model(pre / "model.pt")
    i = start.spec.index_of("denoise_s30")
    assert not torch.equal(model.head[0][0].weight, start.head[i][0].weight)  # head trained
    assert not torch.equal(model.body.linear_encoding.weight, start.body.linear_encoding.weight)  # body trained

    official = load_model(result["official"], "denoise_s30", num_heads=TINY_MODEL["num_heads"])
    x = torch.rand(2, 3, 12, 12) * 255
    with torch.no_grad():
        assert torch.allclose(official(x, "denoise_s30"), model(x, "denoise_s30"))

    img = np.random.default_rng(0).integers(0, 256, (30, 26, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "noisy.png")
    for weights, extra in ((result["model"], []), (result["official"], ["--num-heads", "2"])):
        out = tmp_path / f"clean-{len(extra)}.png"
        argv = ["restore", str(tmp_path / "noisy.png"), str(out), "--weights", weights, "--task", "denoise_s30"]
        assert ipt_main([*argv, "--precision", "fp32", "--quiet", *extra]) == 0
        assert np.asarray(Image.open(out)).shape == (30, 26, 3)


@pytest.mark.slow
def test_finetune_from_the_official_six_task_pretrain_layout(pretrained, tmp_path) -> None:
    pairs, _ = pretrained
    spec = ModelSpec.for_tasks(OFFICIAL_PRETRAIN_TASKS, num_queries=6, **TINY_MODEL)
    torch.manual_seed(0)
    full = build_ipt(spec)
    torch.save(full.state_dict(), tmp_path / "IPT_pretrain.pt")  # a bare official-layout state dict
    cfg = ft_config(pairs, tmp_path / "ft", tmp_path / "IPT_pretrain.pt", task="sr_x2", init_num_heads=2, lr=1e-12)
    model = load_model(finetune(cfg)["model"])
    assert model.spec.tasks == (("sr_x2", 2),)
    # lr 1e-12: the weights are still the file's head.0 / tail.0 / query row 0 (sr_x2 in the official order)
    assert torch.allclose(model.tail[0][0][0].weight, full.tail[0][0][0].weight, atol=1e-9)
    assert torch.allclose(model.body.query_embed.weight[0], full.body.query_embed.weight[0], atol=1e-9)


def test_finetune_init_problems_are_named(pretrained, tmp_path) -> None:
    pairs, pre = pretrained
    with pytest.raises(TrainingError, match=f"{tmp_path / 'nope.pt'}: no such weights file"):
        finetune(ft_config(pairs, tmp_path / "a", tmp_path / "nope.pt"))
    with pytest.raises(TrainingError, match="'derain' is not in this checkpoint"):
        finetune(ft_config(pairs, tmp_path / "b", pre, task="derain"))
    with pytest.raises(TrainingError, match="needs `init`"):
        FinetuneConfig(shards=str(pairs), task="sr_x2")


@pytest.mark.slow
def test_image_residual_run_keeps_the_switch_and_writes_no_official_layout(tmp_path) -> None:
    pairs = make_pair_root(tmp_path / "pairs", samples=4, shards=1)
    model = dict(TINY_MODEL, image_residual=True)
    pretrain(tiny_pretrain(pairs, tmp_path / "pre", steps=2, model=model))
    result = finetune(ft_config(pairs, tmp_path / "ft", tmp_path / "pre", steps=2))
    assert load_model(result["model"]).spec.image_residual
    assert "official" not in result and not (tmp_path / "ft" / "official.pt").exists()
