"""The IPT network: official key layout, parity with the official code, configuration switches."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import FIXTURES
from ipt.config import OFFICIAL_PRETRAIN_TASKS, ConfigError, ModelSpec
from ipt.model import build_ipt


def _official_layouts() -> dict[str, dict[str, tuple[int, ...]]]:
    """Parse ipt_official_state_dict.txt into {layout: {key: shape}} for sr2, sr3, sr4, x1 and pretrain."""
    text = (FIXTURES / "ipt_official_state_dict.txt").read_text()
    line = re.compile(r"^#?\s*([\w.]+) \(([\d, ]*)\) (float32|int64)$")
    sections: dict[str, dict[str, tuple[int, ...]]] = {"A": {}, "C": {}}
    tails: dict[str, dict[str, tuple[int, ...]]] = {}
    cur, sub = None, None
    for raw in text.splitlines():
        if "===== SECTION A" in raw:
            cur, sub = "A", None
        elif "===== SECTION B" in raw:
            cur = "B"
        elif "===== SECTION C" in raw:
            cur, sub = "C", None
        elif cur == "B" and (m := re.match(r"^# (IPT_[\w/.]+)", raw)):
            sub = {"IPT_sr3.pt": "sr3", "IPT_sr4.pt": "sr4"}.get(m.group(1).split(" ")[0], "x1")
            tails[sub] = {}
        elif m := line.match(raw.strip()):
            shape = tuple(int(s) for s in m.group(2).replace(" ", "").split(",") if s)
            (tails[sub] if cur == "B" else sections[cur])[m.group(1)] = shape
    base = {k: v for k, v in sections["A"].items() if not k.startswith("tail.")}
    return {
        "sr2": sections["A"],
        "sr3": {**base, **tails["sr3"]},
        "sr4": {**base, **tails["sr4"]},
        "x1": {**base, **tails["x1"]},
        "pretrain": sections["C"],
    }


LAYOUT_TASKS = {
    "sr2": ("sr_x2",),
    "sr3": ("sr_x3",),
    "sr4": ("sr_x4",),
    "x1": ("denoise_s30",),
    "pretrain": OFFICIAL_PRETRAIN_TASKS,
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LAYOUT_TASKS))
def test_default_size_has_exact_official_keys_and_shapes(layout: str) -> None:
    expected = _official_layouts()[layout]
    assert len(expected) in (313, 315, 317, 381)
    with torch.device("meta"):
        model = build_ipt(ModelSpec.for_tasks(LAYOUT_TASKS[layout]))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected


def test_default_size_parameter_count() -> None:
    with torch.device("meta"):
        model = build_ipt(ModelSpec.for_tasks(["sr_x2"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 115_460_419  # the paper's 115.5M; 24 frozen MeanShift values excluded


@pytest.mark.slow
@pytest.mark.parametrize("index", range(6))
def test_matches_official_outputs(golden: dict, golden_spec: ModelSpec, index: int) -> None:
    model = build_ipt(golden_spec).eval()
    model.load_state_dict(golden["state_dict"], strict=True)
    task = golden_spec.task_names[index]
    with torch.no_grad():
        out = model(golden["input_48"], task)
    ref = golden["outputs_48"][index]
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-3


def test_tokens_and_shapes_for_every_task(tiny_spec: ModelSpec) -> None:
    model = build_ipt(tiny_spec).eval()
    x = torch.rand(3, 3, 12, 12) * 255
    out, tokens = model(x, "sr_x2", return_tokens=True)
    assert out.shape == (3, 3, 24, 24)
    assert tokens.shape == (3, tiny_spec.seq_length, tiny_spec.embedding_dim)
    assert model(x, "denoise_s30").shape == (3, 3, 12, 12)


def test_unknown_task_and_wrong_window_are_clear_errors(tiny_spec: ModelSpec) -> None:
    model = build_ipt(tiny_spec)
    with pytest.raises(KeyError, match="derain.*sr_x2"):
        model(torch.zeros(1, 3, 12, 12), "derain")
    with pytest.raises(ValueError, match=r"\(B, 3, 12, 12\)"):
        model(torch.zeros(1, 3, 16, 16), "sr_x2")


@pytest.mark.parametrize(
    "switches",
    [dict(mlp=False), dict(pos_every=True), dict(no_pos=True), dict(no_norm=True), dict(dropout=0.1)],
)
def test_switches_build_and_run(tiny_spec: ModelSpec, switches: dict) -> None:
    spec = ModelSpec(**{**tiny_spec.__dict__, **switches})
    model = build_ipt(spec).train()
    out = model(torch.rand(2, 3, 12, 12) * 255, "sr_x2")
    out.mean().backward()
    keys = model.state_dict().keys()
    assert ("body.query_embed.weight" in keys) == spec.mlp
    assert ("body.position_encoding.pe.weight" in keys) != spec.no_pos
    assert ("body.encoder.layers.0.norm1.weight" in keys) != spec.no_norm


def test_pos_every_changes_the_function(tiny_spec: ModelSpec) -> None:
    torch.manual_seed(0)
    a = build_ipt(tiny_spec).eval()
    b = build_ipt(ModelSpec(**{**tiny_spec.__dict__, "pos_every": True})).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 12, 12) * 255
    assert not torch.allclose(a(x, "sr_x2"), b(x, "sr_x2"))


def test_spec_is_strict() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        ModelSpec.from_dict({"n_feat": 64})
    with pytest.raises(ConfigError, match="expected int"):
        ModelSpec.from_dict({"n_feats": "64"})
    with pytest.raises(ConfigError, match="divisible"):
        ModelSpec(n_feats=8, num_heads=5)
    spec = ModelSpec.from_dict({"tasks": ["sr_x3", "derain"]})
    assert spec.tasks == (("sr_x3", 3), ("derain", 1))
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_image_residual_starts_as_the_baseline_and_keeps_the_keys(tiny_spec: ModelSpec) -> None:
    import torch.nn.functional as F

    torch.manual_seed(0)
    plain = build_ipt(tiny_spec)
    model = build_ipt(ModelSpec(**{**tiny_spec.__dict__, "image_residual": True})).eval()
    assert model.state_dict().keys() == plain.state_dict().keys()
    x = torch.rand(2, 3, 12, 12) * 255
    with torch.no_grad():
        assert torch.equal(model(x, "denoise_s30"), x)  # untrained: the noisy input itself
        up = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
        assert torch.equal(model(x, "sr_x2"), up)  # untrained: bicubic
    model.train()
    model(x, "sr_x2").mean().backward()  # the zero conv still receives a gradient, so training moves it
    assert model.tail[0][-1].weight.grad.abs().sum() > 0
