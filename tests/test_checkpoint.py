"""Strict loading of official and project checkpoints; configuration inferred from tensors."""

from __future__ import annotations

import re

import pytest
import torch

from ipt.checkpoint import (
    CheckpointError,
    convert_official_ipt,
    extract_task,
    infer_official_spec,
    load_model,
    official_state_dict,
    save_checkpoint,
    strip_prefixes,
)
from ipt.config import OFFICIAL_PRETRAIN_TASKS, ModelSpec
from ipt.model import build_ipt
from ipt.model.heads import RGB_MEAN


def _official_file(tmp_path, tasks, name="IPT_x.pt", prefix="", **kw):
    torch.manual_seed(0)
    spec = ModelSpec.for_tasks(tasks, n_feats=8, num_layers=1, num_heads=2, patch_size=12, **kw)
    sd = {prefix + k: v for k, v in build_ipt(spec).state_dict().items()}
    path = tmp_path / name
    torch.save(sd, path)
    return path, sd


def test_golden_state_dict_infers_its_config(golden: dict) -> None:
    cfg, scales = infer_official_spec(golden["state_dict"])
    assert scales == [2, 3, 4, 1, 1, 1]
    assert cfg["n_feats"] == 16 and cfg["num_layers"] == 2 and cfg["patch_size"] == 48 and cfg["num_queries"] == 6
    spec, _ = convert_official_ipt(golden["state_dict"])
    assert spec.task_names == OFFICIAL_PRETRAIN_TASKS


def test_golden_fixture_loads_from_a_bare_file_and_matches(tmp_path, golden: dict) -> None:
    path = tmp_path / "IPT_pretrain_tiny.pt"
    torch.save(golden["state_dict"], path)
    model = load_model(path)
    with torch.no_grad():
        out = model(golden["input_48"], "denoise_s50")
    assert (out - golden["outputs_48"][5]).abs().max() <= 1e-3


@pytest.mark.parametrize("task,scale", [("sr_x2", 2), ("sr_x3", 3), ("sr_x4", 4)])
def test_single_task_sr_files_name_their_task(tmp_path, task: str, scale: int) -> None:
    path, _ = _official_file(tmp_path, [task])
    model = load_model(path)
    assert model.tasks == (task,) and model.scale(task) == scale


def test_asking_the_wrong_scale_names_file_and_both_scales(tmp_path) -> None:
    path, _ = _official_file(tmp_path, ["sr_x2"], name="IPT_sr2.pt")
    with pytest.raises(CheckpointError, match=r"IPT_sr2\.pt.*sr_x3.*x3.*x2"):
        load_model(path, "sr_x3")


def test_x1_files_take_the_task_from_the_user_or_the_file_name(tmp_path) -> None:
    path, _ = _official_file(tmp_path, ["denoise_s30"], name="weights.pt")
    with pytest.raises(CheckpointError, match="say which with --task"):
        load_model(path)
    assert load_model(path, "derain").tasks == ("derain",)
    named, _ = _official_file(tmp_path, ["denoise_s30"], name="IPT_denoise50.pt")
    assert load_model(named).tasks == ("denoise_s50",)
    with pytest.warns(UserWarning, match="'denoise_30' is not one of the paper's x1 tasks"):  # a typo is said
        assert load_model(path, "denoise_30").tasks == ("denoise_30",)


def test_prefixes_are_stripped(tmp_path) -> None:
    path, _ = _official_file(tmp_path, ["sr_x4"], prefix="module.")
    assert load_model(path).tasks == ("sr_x4",)


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path) -> None:
    _, sd = _official_file(tmp_path, ["sr_x2"])
    sd = dict(sd)
    del sd["body.encoder.layers.0.linear1.bias"]
    sd["body.extra.weight"] = torch.zeros(1)
    sd["body.linear_encoding.bias"] = torch.zeros(5)
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    msg = str(e.value)
    assert "broken.pt" in msg and "1 missing" in msg and "linear1.bias" in msg
    assert "1 unexpected" in msg and "body.extra.weight" in msg
    assert "mis-shaped" in msg and "body.linear_encoding.bias: file (5,) vs model (72,)" in msg


def test_constants_are_validated(tmp_path) -> None:
    _, sd = _official_file(tmp_path, ["sr_x2"])
    sd = dict(sd, **{"sub_mean.bias": torch.zeros(3)})
    torch.save(sd, tmp_path / "bad_mean.pt")
    with pytest.raises(CheckpointError, match="sub_mean.bias"):
        load_model(tmp_path / "bad_mean.pt")
    optional = {k: v for k, v in sd.items() if not k.startswith(("sub_mean", "add_mean")) and "position_ids" not in k}
    torch.save(optional, tmp_path / "no_consts.pt")
    assert load_model(tmp_path / "no_consts.pt").tasks == ("sr_x2",)


def test_out_proj_bias_is_honoured_with_a_warning(tmp_path) -> None:
    path, sd = _official_file(tmp_path, ["sr_x2"], out_proj_bias=True)
    assert "body.decoder.layers.0.multihead_attn.out_proj.bias" in sd
    with pytest.warns(UserWarning, match="out_proj.bias"):
        model = load_model(path)
    assert model.spec.out_proj_bias


def test_code_in_a_pickle_never_runs(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))

    path = tmp_path / "evil.pt"
    torch.save({"head.0.0.weight": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt: refused: it holds a pickled Python object"):
        load_model(path)
    assert not (tmp_path / "PWNED").exists()


def test_garbage_and_missing_files(tmp_path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a loadable"):
        load_model(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="nope.pt: no such weights file"):
        load_model(tmp_path / "nope.pt")


def test_project_checkpoint_round_trip_and_export(tmp_path, tiny_spec: ModelSpec) -> None:
    torch.manual_seed(1)
    model = build_ipt(tiny_spec).eval()
    path = save_checkpoint(tmp_path / "ckpt" / "tiny.pt", model, meta={"step": 3})
    assert not list(path.parent.glob(".*tmp"))
    loaded = load_model(path)
    assert loaded.spec == tiny_spec
    x = torch.rand(1, 3, 12, 12) * 255
    assert torch.equal(loaded(x, "denoise_s30"), model(x, "denoise_s30"))
    with pytest.raises(CheckpointError, match="task 'derain' is not in this checkpoint"):
        load_model(path, "derain")
    single = extract_task(model, "denoise_s30")
    assert single.tasks == ("denoise_s30",) and torch.allclose(single(x, "denoise_s30"), model(x, "denoise_s30"))
    torch.save(official_state_dict(model, "denoise_s30"), tmp_path / "IPT_denoise30.pt")
    # The official layout cannot carry num_heads (no tensor depends on it): it must be given when not 12.
    reloaded = load_model(tmp_path / "IPT_denoise30.pt", num_heads=tiny_spec.num_heads)
    assert torch.allclose(reloaded(x, "denoise_s30"), model(x, "denoise_s30"), atol=1e-4)


# ------------------------------------------------------------------------------------------------ each class of key
# the strict loader checks, alone: constants, position ids, each wrapper prefix, missing, unexpected, mis-shaped


@pytest.mark.parametrize("key, sign", [("sub_mean.bias", -1), ("add_mean.bias", +1)])
def test_each_mean_constant_is_checked_against_the_rgb_mean(tmp_path, key: str, sign: int) -> None:
    _, sd = _official_file(tmp_path, ["sr_x2"])
    want = sign * torch.tensor(RGB_MEAN) * 255
    assert torch.allclose(sd[key], want)  # the model's own value is the one checked against
    for bad in (-want, want + torch.tensor([0.0, 0.0, 0.01]), want[[2, 1, 0]]):  # sign, a hundredth, channel order
        torch.save(dict(sd, **{key: bad}), tmp_path / "bad.pt")
        with pytest.raises(
            CheckpointError, match=rf"^{re.escape(str(tmp_path / 'bad.pt'))}: {key} is \[.*\], expected "
        ):
            load_model(tmp_path / "bad.pt")
    torch.save(dict(sd, **{key: want + 5e-4}), tmp_path / "close.pt")  # within 1e-3: a float round-off, accepted
    assert torch.equal(load_model(tmp_path / "close.pt").state_dict()[key], want + 5e-4)


def test_position_ids_must_be_arange_of_the_sequence(tmp_path) -> None:
    _, sd = _official_file(tmp_path, ["sr_x2"])
    key = "body.position_encoding.position_ids"
    assert torch.equal(sd[key], torch.arange(16)[None])
    for bad in (torch.arange(1, 17)[None], torch.arange(16).flip(0)[None], torch.arange(15)[None]):
        torch.save(dict(sd, **{key: bad}), tmp_path / "bad_ids.pt")
        with pytest.raises(CheckpointError, match=r"bad_ids\.pt: body\.position_encoding\.position_ids is not "):
            load_model(tmp_path / "bad_ids.pt")
    torch.save(dict(sd, **{key: torch.arange(16, dtype=torch.int32)[None]}), tmp_path / "int32.pt")  # another dtype
    assert load_model(tmp_path / "int32.pt").state_dict()[key].dtype == torch.int64


def test_optional_constants_absent_are_the_models_own_and_nothing_else_is_optional(tmp_path) -> None:
    _, sd = _official_file(tmp_path, ["sr_x2"])
    optional = ("sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias")
    optional += ("body.position_encoding.position_ids",)
    torch.save({k: v for k, v in sd.items() if k not in optional}, tmp_path / "lean.pt")
    loaded = load_model(tmp_path / "lean.pt").state_dict()
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    for key in (
        "head.0.0.bias",
        "tail.0.1.weight",
        "body.encoder.layers.0.linear1.weight",
        "body.decoder.layers.0.norm3.bias",
    ):
        torch.save({k: v for k, v in sd.items() if k != key}, tmp_path / "short.pt")
        with pytest.raises(CheckpointError, match=rf"short\.pt: 1 missing key\(s\): \['{re.escape(key)}'\]$"):
            load_model(tmp_path / "short.pt")


@pytest.mark.parametrize(
    "prefix", ["module.", "_orig_mod.", "model.", "module._orig_mod.", "_orig_mod.module.", "model.module.model."]
)
def test_each_wrapper_prefix_and_their_nestings_are_stripped(tmp_path, prefix: str) -> None:
    path, sd = _official_file(tmp_path, ["sr_x4"], prefix=prefix)
    loaded = load_model(path).state_dict()
    assert set(loaded) == {k[len(prefix) :] for k in sd}
    assert all(torch.equal(loaded[k[len(prefix) :]], v) for k, v in sd.items())
    assert strip_prefixes({f"{prefix}head.0.0.weight": sd[f"{prefix}head.0.0.weight"]}).keys() == {"head.0.0.weight"}


def test_only_leading_wrapper_prefixes_are_stripped() -> None:
    t = torch.zeros(1)
    assert list(strip_prefixes({"body.model.x": t, "xmodule.y": t, "module.model.z": t})) == [
        "body.model.x",
        "xmodule.y",
        "z",
    ]


@pytest.mark.parametrize("form", ["official", "project"])
def test_missing_unexpected_and_misshaped_are_each_refused_alone(tmp_path, form: str) -> None:
    torch.manual_seed(0)
    spec = ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=2, patch_size=12)
    model = build_ipt(spec)
    good = model.state_dict()

    def refused(sd: dict, match: str) -> None:
        path = tmp_path / f"{form}.pt"
        if form == "official":
            torch.save(sd, path)
        else:
            save_checkpoint(path, model)
            obj = torch.load(path, weights_only=True)
            torch.save(dict(obj, state_dict=sd), path)
        with pytest.raises(CheckpointError, match=match):
            load_model(path)

    refused({k: v for k, v in good.items() if k != "tail.0.1.bias"}, r": 1 missing key\(s\): \['tail\.0\.1\.bias'\]$")
    refused(dict(good, **{"tail.0.9.weight": torch.zeros(1)}), r": 1 unexpected key\(s\): \['tail\.0\.9\.weight'\]$")
    refused(
        dict(good, **{"tail.0.1.bias": torch.zeros(4)}),
        r": 1 mis-shaped key\(s\): \['tail\.0\.1\.bias: file \(4,\) vs model \(3,\)'\]$",
    )
    many = dict(good, **{f"extra.{i}": torch.zeros(1) for i in range(10)})
    refused(many, r": 10 unexpected key\(s\): \['extra\.0', .*'extra\.7'\] \(\+2 more\)$")
    if form == "project":  # the constants are optional only when converting an official file
        refused({k: v for k, v in good.items() if k != "sub_mean.bias"}, r"1 missing key\(s\): \['sub_mean\.bias'\]")
        nan = dict(good, **{"tail.0.1.bias": torch.tensor([0.0, float("nan"), 0.0])})
        refused(nan, r": tail\.0\.1\.bias hold NaN or infinite values")


def test_a_half_precision_official_file_loads_as_float32_with_its_values(tmp_path) -> None:
    _, sd = _official_file(tmp_path, ["sr_x2"])
    # (the mean constants stay float32: rounded to float16 they are up to 0.03 off and refused by the constants check)
    half = {k: v.half() if v.is_floating_point() and "_mean." not in k else v for k, v in sd.items()}
    torch.save(half, tmp_path / "half.pt")
    loaded = load_model(tmp_path / "half.pt").state_dict()
    assert all(loaded[k].dtype == sd[k].dtype and torch.equal(loaded[k], half[k].to(sd[k].dtype)) for k in sd)
