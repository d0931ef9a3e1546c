"""Tiled whole-image inference: the official forward_chop exactly, and the default overlap tiling."""

from __future__ import annotations

import pytest
import torch

from ipt.config import ModelSpec
from ipt.inference import forward_chop_official, forward_tiled, quantize, restore_image, window_starts
from ipt.model import build_ipt


@pytest.fixture(scope="module")
def golden_model(golden: dict, golden_spec: ModelSpec):
    model = build_ipt(golden_spec).eval()
    model.load_state_dict(golden["state_dict"], strict=True)
    return model


@pytest.mark.parametrize("index", [0, 1, 2, 4])
def test_official_tiling_matches_official_forward_chop(golden: dict, golden_model, index: int) -> None:
    task = golden_model.tasks[index]
    with torch.no_grad():
        out = forward_chop_official(lambda w: golden_model(w, task), golden["input_chop"], golden_model.scale(task))
    ref = golden["outputs_chop"][index]
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-3


def _shift_fn(scale: int):
    """A window model whose output depends on the window position content only: nearest upsampling of x."""
    return lambda w: torch.nn.functional.interpolate(w, scale_factor=scale, mode="nearest")


@pytest.mark.parametrize("hw", [(48, 48), (61, 75), (100, 59), (131, 49)])
@pytest.mark.parametrize("scale", [1, 2, 3])
def test_tilings_reconstruct_a_translation_equivariant_model(hw: tuple[int, int], scale: int) -> None:
    x = torch.rand(1, 3, *hw) * 255
    ref = _shift_fn(scale)(x)
    official = forward_chop_official(_shift_fn(scale), x, scale)
    overlap = forward_tiled(_shift_fn(scale), x, scale)
    assert torch.allclose(official, ref, atol=1e-3)
    assert torch.allclose(overlap, ref, atol=1e-3)


@pytest.mark.parametrize("hw", [(5, 7), (1, 1), (30, 60), (48, 10)])
def test_overlap_tiling_handles_images_smaller_than_a_window(hw: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *hw) * 255
    out = forward_tiled(_shift_fn(2), x, 2)
    assert out.shape == (2, 3, hw[0] * 2, hw[1] * 2)
    assert torch.allclose(out, _shift_fn(2)(x), atol=1e-3)


def test_official_tiling_refuses_small_images_clearly() -> None:
    with pytest.raises(ValueError, match="H, W >= 48"):
        forward_chop_official(_shift_fn(1), torch.rand(1, 3, 40, 60), 1)


def test_each_window_is_computed_once() -> None:
    calls = []

    def fn(w):
        calls.append(w.shape[0])
        return w

    forward_tiled(fn, torch.rand(1, 3, 256, 256), 1, overlap=12, batch=64)
    # overlaps >= 12 px: 7 starts 0, 35, 69, 104, 139, 173, 208 per axis -> 49 windows, in ceil(49 / 64) = 1 batch
    assert calls == [49]
    calls.clear()
    forward_chop_official(fn, torch.rand(1, 3, 256, 256), 1, batch=64)
    # 256 = 48 + 12*17 + 4: grid 18 x 18, plus bottom/right strips and a corner (official code evaluates 397)
    assert sum(calls) == 18 * 18 + 18 + 18 + 1


@pytest.mark.parametrize("patch", [12, 48])
def test_window_starts_are_the_fewest_windows_spread_evenly(patch: int) -> None:
    for length in range(1, 5 * patch):
        for overlap in range(patch):
            starts = window_starts(length, patch, overlap)
            assert starts[0] == 0 and starts[-1] == max(0, length - patch), (length, overlap)
            gaps = [b - a for a, b in zip(starts[:-1], starts[1:], strict=True)]
            assert all(0 < g <= patch - overlap for g in gaps), (length, overlap, starts)  # covered, overlaps kept
            assert not gaps or max(gaps) - min(gaps) <= 1, (length, overlap, starts)  # even: no thin last overlap
            # one window fewer could not cover the span with the overlap asked
            assert len(starts) == 1 or (len(starts) - 2) * (patch - overlap) < length - patch, (length, overlap)
    assert window_starts(256, 48, 12) == [0, 35, 69, 104, 139, 173, 208]
    assert window_starts(256, 48, 6) == [0, 42, 83, 125, 166, 208]
    with pytest.raises(ValueError, match=r"overlap must be in \[0, 48\)"):
        window_starts(256, 48, 48)


def test_restore_image_dispatch_and_quantize(tiny_spec: ModelSpec) -> None:
    model = build_ipt(tiny_spec).eval()
    x = torch.rand(1, 3, 30, 20) * 255
    with torch.no_grad():
        a = restore_image(lambda w: model(w, "sr_x2"), x, 2, patch=12, overlap=4)
        b = restore_image(lambda w: model(w, "sr_x2"), x, 2, tiling="official", patch=12)
    assert a.shape == b.shape == (1, 3, 60, 40)
    q = quantize(torch.tensor([-3.0, 0.49, 0.5, 254.6, 300.0]))
    assert q.tolist() == [0.0, 0.0, 0.0, 255.0, 255.0]  # torch.round is half-to-even, as the official quantize
    with pytest.raises(ValueError, match="unknown tiling"):
        restore_image(lambda w: w, x, 1, tiling="nope")


@pytest.mark.parametrize("tiling", ["official", "overlap"])
def test_tilings_build_their_output_on_the_input_device(tiling: str) -> None:
    """Every buffer of a tiling lives where the input does. A "meta" input (shapes only) stands for a GPU here: a
    CPU-made canvas breaks it just as it broke the official tiling on CUDA (found on the lent H200)."""
    x = torch.empty(1, 3, 60, 70, device="meta")
    out = restore_image(lambda w: w.repeat_interleave(2, -1).repeat_interleave(2, -2), x, 2, tiling=tiling)
    assert (out.device.type, tuple(out.shape)) == ("meta", (1, 3, 120, 140))


def test_overlap_tiling_streams_windows_with_one_batch_of_outputs_alive() -> None:
    """Memory grows with the image, not with its window count: each batch of outputs is blended into the canvas as
    it comes and dropped, so while a batch is computed at most the previous batch's output is still alive."""
    import weakref

    alive_at_call: list[int] = []
    outputs: list[weakref.ref] = []

    def fn(w):
        alive_at_call.append(sum(r() is not None for r in outputs))
        y = w.repeat_interleave(2, -1).repeat_interleave(2, -2).clone()
        outputs.append(weakref.ref(y))
        return y

    x = torch.rand(1, 3, 300, 260) * 255
    out = forward_tiled(fn, x, 2, batch=4)
    assert len(alive_at_call) > 10  # 9 x 8 windows in batches of 4
    assert max(alive_at_call) <= 1, alive_at_call
    assert torch.allclose(out, _shift_fn(2)(x), atol=1e-3)


def test_a_restorer_records_the_overlap_it_used(tiny_spec: ModelSpec) -> None:
    """Reports say which overlap made a number: the default resolved (a quarter of the window), an explicit one
    (0 included) as given, and none for the official tiling, which has no overlap setting."""
    from ipt.restore import Restorer

    model = build_ipt(tiny_spec).eval()
    assert Restorer(model, "sr_x2", precision="fp32").describe()["overlap"] == tiny_spec.patch_size // 4
    assert Restorer(model, "sr_x2", precision="fp32", overlap=0).describe()["overlap"] == 0
    assert Restorer(model, "sr_x2", precision="fp32", tiling="official").describe()["overlap"] is None
