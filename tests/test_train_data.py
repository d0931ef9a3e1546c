"""Pair-shard streams: one task per batch by weight, deterministic for any ranks/workers/resume point, loud errors."""

from __future__ import annotations

import json
import signal
from collections import Counter
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from helpers_pairs import _png, make_pair_root, make_pair_shards, structured_image
from ipt.train.data import (
    StreamSpec,
    augment_code,
    decode_pair,
    dihedral,
    find_shards,
    pair_batches,
    task_for_step,
)
from ipt.train.errors import TrainingError

TASKS = ("sr_x2", "denoise_s30")


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (WebDataset#188: fewer shards than consumers used to hang training)."""

    def fail(*_):
        raise TimeoutError(f"data stream hung for {seconds}s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def spec_for(root, shards=None, **kw) -> StreamSpec:
    base = dict(
        urls=shards or find_shards(root, TASKS),
        tasks=TASKS,
        weights=(1.0, 1.0),
        scales={"sr_x2": 2, "denoise_s30": 1},
        patch_size=12,
        batch_size=4,
        lanes=4,
        seed=7,
        shuffle_buffer=8,
        segment=3,
    )
    return StreamSpec(**(base | kw))


def same(a, b) -> bool:
    return a.task == b.task and a.step == b.step and torch.equal(a.lq, b.lq) and torch.equal(a.hr, b.hr)


@pytest.fixture(scope="module")
def one_shard_root(tmp_path_factory):
    """One shard per task: fewer shards than ranks x workers."""
    return make_pair_root(tmp_path_factory.mktemp("pairs"), samples=6, shards=1)


def test_batches_are_float_chw_in_0_255_with_the_task(one_shard_root) -> None:
    batches = list(pair_batches(spec_for(one_shard_root), stop=4))
    assert [b.step for b in batches] == [0, 1, 2, 3]
    for b in batches:
        assert b.task in TASKS and b.lq.dtype == b.hr.dtype == torch.float32
        assert b.lq.shape == (4, 3, 12, 12)
        assert b.hr.shape == ((4, 3, 24, 24) if b.task == "sr_x2" else (4, 3, 12, 12))
        assert 0 <= b.lq.min() and b.hr.max() <= 255 and b.hr.max() > 1


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_few_shards_many_workers_do_not_hang_and_do_not_change_the_batches(one_shard_root) -> None:
    spec = spec_for(one_shard_root)
    with deadline(60):
        inline = list(pair_batches(spec, stop=5))
        workers = list(pair_batches(spec, stop=5, num_workers=3))  # 3 workers, 1 shard per task
        rank1 = list(pair_batches(spec, rank=1, world=2, stop=5, num_workers=2))  # 2 ranks x 2 workers
    assert all(same(a, b) for a, b in zip(inline, workers, strict=True))
    for a, r in zip(inline, rank1, strict=True):
        assert torch.equal(a.lq[1::2], r.lq) and torch.equal(a.hr[1::2], r.hr)


def test_ranks_split_the_global_batch_row_wise(one_shard_root) -> None:
    spec = spec_for(one_shard_root)
    full = list(pair_batches(spec, stop=4))
    parts = [list(pair_batches(spec, rank=r, world=2, stop=4)) for r in range(2)]
    for step, b in enumerate(full):
        assert parts[0][step].task == parts[1][step].task == b.task
        assert torch.equal(b.lq[0::2], parts[0][step].lq) and torch.equal(b.lq[1::2], parts[1][step].lq)
    with pytest.raises(TrainingError, match="cannot be split over 3 ranks"):
        list(pair_batches(spec, rank=0, world=3, stop=1))


def test_several_rows_per_lane_keep_lane_blocks_together(one_shard_root) -> None:
    spec = spec_for(one_shard_root, lanes=2)  # 2 rows per lane: rank r holds lane r's two rows
    full = list(pair_batches(spec, stop=3))
    assert all(same(a, b) for a, b in zip(full, pair_batches(spec, stop=3, num_workers=2), strict=True))
    for r in range(2):
        for a, b in zip(full, pair_batches(spec, rank=r, world=2, stop=3), strict=True):
            assert torch.equal(a.lq[2 * r : 2 * r + 2], b.lq)


def test_a_stream_started_mid_run_continues_the_same_sequence(one_shard_root) -> None:
    spec = spec_for(one_shard_root)  # segment 3: starting at 4 replays step 3 of the segment without decoding
    full = list(pair_batches(spec, stop=7))
    for start in (3, 4, 5):
        assert all(same(a, b) for a, b in zip(full[start:], pair_batches(spec, start=start, stop=7), strict=True))


def test_different_seeds_give_different_streams(one_shard_root) -> None:
    a = next(pair_batches(spec_for(one_shard_root), stop=1))
    b = next(pair_batches(spec_for(one_shard_root, seed=8), stop=1))
    assert not torch.equal(a.lq, b.lq) or a.task != b.task


def test_task_draws_follow_the_weights() -> None:
    tasks, weights = ("a", "b", "c"), (3.0, 1.0, 0.0)
    counts = Counter(task_for_step(11, s, tasks, weights) for s in range(4000))
    assert counts["c"] == 0
    assert abs(counts["a"] / 4000 - 0.75) < 0.03
    assert [task_for_step(11, s, tasks, weights) for s in range(50)] == [
        task_for_step(11, s, tasks, weights) for s in range(50)
    ]


def test_batches_carry_the_drawn_task(one_shard_root) -> None:
    spec = spec_for(one_shard_root, weights=(1.0, 3.0))
    got = [b.task for b in pair_batches(spec, stop=40)]
    assert got == [task_for_step(7, s, TASKS, (1.0, 3.0)) for s in range(40)]
    assert 20 <= got.count("denoise_s30") <= 38


def test_missing_manifest_task_or_shard_is_named(tmp_path) -> None:
    with pytest.raises(TrainingError, match=f"{tmp_path / 'sr_x2'}: no pair shards for task 'sr_x2'"):
        find_shards(tmp_path, ["sr_x2"])
    (tmp_path / "sr_x2").mkdir()
    with pytest.raises(TrainingError, match=f"{tmp_path / 'sr_x2'}: no manifest.json"):
        find_shards(tmp_path, ["sr_x2"])
    folder = make_pair_shards(tmp_path, "denoise_s30", samples=4, shards=2)
    (folder / "shard-000001.tar").unlink()
    with pytest.raises(TrainingError, match=r"missing: \['shard-000001.tar'\]"):
        find_shards(tmp_path, ["denoise_s30"])
    (folder / "manifest.json").write_text(json.dumps({"format": "ipt-clean-v1", "shards": []}))
    with pytest.raises(TrainingError, match="expected 'ipt-pairs-v1'"):
        find_shards(tmp_path, ["denoise_s30"])


def test_shards_of_another_patch_size_are_refused_naming_the_shard(tmp_path) -> None:
    make_pair_root(tmp_path, samples=2, shards=1, patch=16)
    spec = spec_for(tmp_path)
    with pytest.raises(TrainingError, match=r"shard-000000\.tar: sample .* model needs 12x12"):
        next(pair_batches(spec, stop=1))


def test_a_sample_filed_under_the_wrong_task_is_refused() -> None:
    sample = {"__url__": "x.tar", "__key__": "k", "meta.json": json.dumps({"task": "derain"}).encode()}

    img = structured_image(np.random.default_rng(0), 12)
    sample |= {"lq.png": _png(img), "hr.png": _png(img)}
    with pytest.raises(TrainingError, match="made for task 'derain', found under task 'denoise_s30'"):
        decode_pair(sample, "denoise_s30", 12, 1)


def _symmetry(plain: torch.Tensor, flipped: torch.Tensor) -> int | None:
    return next((c for c in range(8) if torch.equal(dihedral(plain, c), flipped)), None)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_augmentation_flips_and_rotates_each_pair_alike_the_same_for_any_ranks_or_workers(one_shard_root) -> None:
    plain = list(pair_batches(spec_for(one_shard_root), stop=6))
    spec = spec_for(one_shard_root, augment=True)
    with deadline(60):
        inline = list(pair_batches(spec, stop=6))
        workers = list(pair_batches(spec, stop=6, num_workers=3))
        ranks = [list(pair_batches(spec, rank=r, world=2, stop=6, num_workers=2)) for r in range(2)]
        late = list(pair_batches(spec, start=4, stop=6))  # a resume mid-segment
    codes = []
    for p, a in zip(plain, inline, strict=True):
        for row in range(4):  # the same rows, each under one symmetry applied to LQ and HR alike
            c = _symmetry(p.lq[row], a.lq[row])
            assert c is not None and torch.equal(dihedral(p.hr[row], c), a.hr[row])
            assert c == augment_code(7, p.step, row, 0)
            codes.append(c)
    assert len(set(codes)) >= 4  # 24 rows: several of the eight symmetries, not one
    assert all(same(a, b) for a, b in zip(inline, workers, strict=True))
    assert all(same(a, b) for a, b in zip(inline[4:], late, strict=True))
    for a, r0, r1 in zip(inline, *ranks, strict=True):
        assert torch.equal(a.lq[0::2], r0.lq) and torch.equal(a.hr[1::2], r1.hr)


def test_dihedral_gives_the_eight_symmetries_of_the_square() -> None:
    x = torch.arange(9).view(1, 3, 3)
    images = {tuple(dihedral(x, c).flatten().tolist()) for c in range(8)}
    assert len(images) == 8 and torch.equal(dihedral(x, 0), x)
    assert torch.equal(dihedral(x, 5), torch.rot90(x, 1, (-2, -1)))  # a left-right flip, then transposed
