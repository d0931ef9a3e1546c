"""Strict loading of official and project checkpoints; configuration inferred from tensors."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

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

    refused(
        {k: v for k, v in good.items() if k != "tail.0.1.bias"},
        rf"{form}\.pt: 1 missing key\(s\): \['tail\.0\.1\.bias'\]$",
    )
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
        refused(nan, r"project\.pt: tail\.0\.1\.bias hold NaN or infinite values")


def test_a_half_precision_official_file_loads_as_float32_with_its_values(tmp_path) -> None:
    _, sd = _official_file(tmp_path, ["sr_x2"])
    # (the mean constants stay float32: rounded to float16 they are up to 0.03 off and refused by the constants check)
    half = {k: v.half() if v.is_floating_point() and "_mean." not in k else v for k, v in sd.items()}
    torch.save(half, tmp_path / "half.pt")
    loaded = load_model(tmp_path / "half.pt").state_dict()
    assert all(loaded[k].dtype == sd[k].dtype and torch.equal(loaded[k], half[k].to(sd[k].dtype)) for k in sd)


# ------------------------------------------------------------------------------------------------ inferring a layout


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"no_pos": True},
        {"no_norm": True},
        {"mlp": False, "num_queries": 0},
        {"n_colors": 1},
        {"patch_dim": 4, "patch_size": 16},
        {"num_layers": 2},
        {"tasks": ["sr_x8"]},
    ],
    ids=lambda kw: ",".join(kw) or "default",
)
def test_every_inferred_setting_comes_back_from_the_tensors(tmp_path, kw: dict) -> None:
    kw = dict(kw)
    tasks = kw.pop("tasks", ["sr_x3"])
    spec = ModelSpec.for_tasks(tasks, **({"n_feats": 8, "num_layers": 1, "num_heads": 2, "patch_size": 12} | kw))
    torch.manual_seed(0)
    sd = build_ipt(spec).state_dict()
    torch.save(sd, tmp_path / "f.pt")
    loaded = load_model(tmp_path / "f.pt", num_heads=2)
    assert dataclasses.replace(loaded.spec, num_queries=spec.num_queries) == spec
    assert loaded.spec.num_queries == (1 if spec.mlp else 0)  # the query rows the file holds
    assert all(torch.equal(v, sd[k]) for k, v in loaded.state_dict().items())
    cfg, scales = infer_official_spec(sd)
    assert cfg["num_heads"] == 12 and scales == [spec.tasks[0][1]]  # the official 12 heads unless told


def test_six_heads_of_other_scales_or_two_heads_are_no_known_layout(tmp_path) -> None:
    spec = ModelSpec.for_tasks([f"sr_x{s}" for s in (2, 2, 2, 2, 2, 2)][:1], n_feats=8, num_layers=1, num_heads=2)
    sd = build_ipt(spec).state_dict()
    heads = {
        k.replace("head.0.", f"head.{i}.").replace("tail.0.", f"tail.{i}."): v for i in range(6) for k, v in sd.items()
    }
    with pytest.raises(CheckpointError, match=r"^<state_dict>: 6 heads with scales \[2, 2, 2, 2, 2, 2\]: not a known "):
        convert_official_ipt(sd | heads)
    two = {k: v for k, v in (sd | heads).items() if not k.startswith(("head.", "tail.")) or k[5] in "01"}
    with pytest.raises(CheckpointError, match=r"^f\.pt: 2 heads with scales \[2, 2\]: not a known official layout$"):
        convert_official_ipt(two, source="f.pt")
    gap = {k: v for k, v in (sd | heads).items() if not k.startswith(("head.1.", "tail.1."))}
    with pytest.raises(CheckpointError, match=r"^<state_dict>: head indices are not 0\.\.n-1: \[0, 2, 3, 4, 5\]$"):
        convert_official_ipt(gap)


def test_the_layout_errors_name_what_is_missing() -> None:
    spec = ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=2, patch_size=12)
    sd = build_ipt(spec).state_dict()
    with pytest.raises(CheckpointError, match=r"^<state_dict>: an empty state dict \(no tensors\)$"):
        convert_official_ipt({})
    with pytest.raises(CheckpointError, match=r"^<state_dict>: no 'head\.0\.0\.weight': not an IPT state dict$"):
        convert_official_ipt({"x": torch.zeros(1)})
    no_pe = {
        k: v for k, v in sd.items() if k not in ("body.position_encoding.pe.weight", "body.linear_encoding.weight")
    }
    with pytest.raises(CheckpointError, match=r"^g: cannot infer patch_size: no position encoding and no query embed"):
        convert_official_ipt({k: v for k, v in no_pe.items() if "linear_encoding" not in k}, source="g")
    no_query = {k: v for k, v in sd.items() if k != "body.query_embed.weight"}
    with pytest.raises(
        CheckpointError, match=r"^<state_dict>: no 'body\.query_embed\.weight': not a complete IPT state dict in the"
    ):
        convert_official_ipt(no_query)
    odd = dict(sd, **{"tail.0.0.0.weight": torch.zeros(5, 8, 3, 3)})
    with pytest.raises(
        CheckpointError, match=r"^<state_dict>: tail\.0: cannot infer its scale from shapes \[\(5, 8, 3, "
    ):
        convert_official_ipt(odd)


def test_a_six_task_file_refuses_a_task_it_lacks_and_extracts_each_exactly(tmp_path) -> None:
    spec = ModelSpec.for_tasks(OFFICIAL_PRETRAIN_TASKS, n_feats=8, num_layers=1, num_heads=2, patch_size=12)
    torch.manual_seed(0)
    model = build_ipt(spec).eval()
    torch.save(model.state_dict(), tmp_path / "six.pt")
    with pytest.raises(CheckpointError, match=r"six\.pt: task 'jpeg_q10' is not in this file; it has \['sr_x2', "):
        load_model(tmp_path / "six.pt", "jpeg_q10", num_heads=2)
    x = torch.rand(1, 3, 12, 12) * 255
    loaded = load_model(tmp_path / "six.pt", num_heads=2)  # its spec says 6 query rows, where for_tasks says 0
    assert loaded.spec.num_queries == 6
    for source in (model, loaded):
        for task in ("sr_x2", "denoise_s30"):  # a first and a middle task: one query row each
            single = extract_task(source, task)
            assert single.spec.num_queries == 0 and single.spec.tasks == ((task, model.spec.scale_of(task)),)
            assert single.state_dict()["body.query_embed.weight"].shape[0] == 1
            with torch.no_grad():
                assert torch.equal(single(x, task), model(x, task))


def test_a_task_beyond_the_papers_is_warned_about_from_the_callers_line(tmp_path) -> None:
    _, sd = _official_file(tmp_path, ["denoise_s30"])
    with pytest.warns(UserWarning) as w:
        convert_official_ipt(sd, "denoise_s10", source="w.pt")
    assert len(w) == 1
    assert str(w[0].message) == (
        "w.pt: task 'denoise_s10' is not one of the paper's x1 tasks (derain, denoise_s30, denoise_s50); this file "
        "does not name its task, so 'denoise_s10' is taken as given (x1, from its tail)"
    )
    _, sd8 = _official_file(tmp_path, ["sr_x8"])
    with pytest.warns(UserWarning, match=r"not one of the paper's x8 tasks \(none\)"):
        convert_official_ipt(sd8, "zoom_x8")


def test_constant_errors_say_the_expected_values_and_round_off_is_accepted(tmp_path) -> None:
    _, sd = _official_file(tmp_path, ["sr_x2"])
    want = torch.tensor(RGB_MEAN) * 255
    with pytest.raises(CheckpointError) as e:
        convert_official_ipt(dict(sd, **{"add_mean.bias": torch.zeros(3)}))
    assert str(e.value) == f"<state_dict>: add_mean.bias is [0.0, 0.0, 0.0], expected {want.tolist()}"
    spec, full = convert_official_ipt(dict(sd, **{"add_mean.bias": want + 1.5e-3}))  # within atol 1e-3 + rtol
    assert torch.equal(full["add_mean.bias"], want + 1.5e-3)
    with pytest.raises(CheckpointError, match="add_mean.bias is"):
        convert_official_ipt(dict(sd, **{"add_mean.bias": want + 3e-3}))


def test_load_failures_are_said_in_one_line() -> None:
    from ipt.checkpoint import _load_failure

    assert _load_failure(RuntimeError("")) == "not a loadable weights file (RuntimeError)"
    assert _load_failure(ValueError("first\nsecond")) == "not a loadable weights file (first)"
    text = "Weights only load failed.\nWeightsUnpickler error: Unsupported operand 149\n\nCheck the documentation"
    assert _load_failure(RuntimeError(text)) == (
        "not a loadable weights file (not written by torch.save, or damaged: Unsupported operand 149)"
    )
    multi = "WeightsUnpickler error: bad\nthing Check the documentation"
    assert (
        _load_failure(RuntimeError(multi)) == "not a loadable weights file (not written by torch.save, or damaged: bad)"
    )
    pickled = _load_failure(RuntimeError("Unsupported global: GLOBAL builtins.exec was not an allowed global"))
    assert pickled == (
        "refused: it holds a pickled Python object (builtins.exec) besides tensors, and loading it could run code; "
        "ipt reads tensors only (save the state dict alone: torch.save(model.state_dict(), path))"
    )


def test_project_checkpoint_errors_and_fields(tmp_path, tiny_spec: ModelSpec) -> None:
    model = build_ipt(tiny_spec)
    path = save_checkpoint(tmp_path / "a" / "b" / "m.pt", model, meta={"step": 3})  # parents made
    obj = torch.load(path, weights_only=True)
    assert obj["meta"] == {"step": 3} and obj["kind"] == "ipt" and obj["format_version"] == 1

    def refused(match: str, **changes) -> None:
        torch.save(obj | changes, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match=match):
            load_model(tmp_path / "bad.pt")

    refused(r"bad\.pt: checkpoint format_version 2; this code reads 1$", format_version=2)
    refused(r"bad\.pt: model_spec is a list, not a mapping of ModelSpec keys$", model_spec=[1])
    refused(r"bad\.pt: state_dict is not a mapping of names to tensors \(list\)$", state_dict=[1])
    refused(r"bad\.pt: state_dict is not a mapping of names to tensors \(dict\)$", state_dict={"a": 1})
    refused(r"bad\.pt: bad model_spec: ", model_spec=obj["model_spec"] | {"n_feats": -1})
    with pytest.raises(CheckpointError, match=r"m\.pt: task 'derain' is not in this checkpoint; it has \['sr_x2', 'de"):
        load_model(path, "derain")


def test_checkpoint_kind_reads_only_a_string_kind(tmp_path, tiny_spec: ModelSpec) -> None:
    from ipt.checkpoint import checkpoint_kind, is_project_checkpoint

    path = save_checkpoint(tmp_path / "m.pt", build_ipt(tiny_spec))
    assert checkpoint_kind(path) == "ipt"
    torch.save({"kind": "ipt-ptgrm", "state_dict": {}}, tmp_path / "r.pt")
    assert checkpoint_kind(tmp_path / "r.pt") == "ipt-ptgrm"
    torch.save({"kind": 3}, tmp_path / "n.pt")
    torch.save([1, 2], tmp_path / "l.pt")
    torch.save(build_ipt(tiny_spec).state_dict(), tmp_path / "bare.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    for name in ("n.pt", "l.pt", "bare.pt", "junk.pt", "absent.pt"):
        assert checkpoint_kind(tmp_path / name) is None, name

    class Evil:
        def __reduce__(self):
            return (Path.write_text, (tmp_path / "PWNED", "ran"))

    torch.save({"kind": "ipt", "x": Evil()}, tmp_path / "evil.pt")
    assert checkpoint_kind(tmp_path / "evil.pt") is None and not (tmp_path / "PWNED").exists()  # never unpickled
    obj = torch.load(path, weights_only=True)
    assert is_project_checkpoint(obj)
    for key in ("model_spec", "state_dict"):
        assert not is_project_checkpoint({k: v for k, v in obj.items() if k != key})
    assert not is_project_checkpoint(obj | {"kind": "ipt-ptgrm"})


def test_non_finite_weights_are_named_with_how_many(tmp_path, tiny_spec: ModelSpec) -> None:
    from ipt.checkpoint import check_finite

    sd = build_ipt(tiny_spec).state_dict()
    check_finite(sd, "ok.pt")  # integer position ids are not checked for finiteness
    bad = dict(sd, **{"head.0.0.bias": torch.full((8,), float("inf")), "tail.0.1.bias": torch.full((3,), float("nan"))})
    with pytest.raises(CheckpointError) as e:
        check_finite(bad, "x.pt")
    assert str(e.value) == (
        "x.pt: head.0.0.bias and 1 more tensor(s) hold NaN or infinite values; these weights cannot restore"
    )
    with pytest.raises(CheckpointError, match=r"^y\.pt: tail\.0\.1\.bias hold NaN"):
        check_finite(dict(sd, **{"tail.0.1.bias": torch.tensor([0.0, float("-inf"), 0.0])}), "y.pt")


def test_the_key_report_lists_eight_then_counts_and_joins_the_kinds(tmp_path) -> None:
    _, sd = _official_file(tmp_path, ["sr_x2"])
    eight = dict(sd, **{f"extra.{i}": torch.zeros(1) for i in range(8)})
    with pytest.raises(CheckpointError, match=r"8 unexpected key\(s\): \[.*'extra\.7'\]$"):
        convert_official_ipt(eight)
    nine = dict(sd, **{f"extra.{i}": torch.zeros(1) for i in range(9)})
    with pytest.raises(CheckpointError, match=r"9 unexpected key\(s\): \[.*'extra\.7'\] \(\+1 more\)$"):
        convert_official_ipt(nine)
    both = dict({k: v for k, v in sd.items() if k != "tail.0.1.bias"}, **{"extra.0": torch.zeros(1)})
    with pytest.raises(CheckpointError) as e:
        convert_official_ipt(both, source="b.pt")
    assert str(e.value) == "b.pt: 1 missing key(s): ['tail.0.1.bias']; 1 unexpected key(s): ['extra.0']"


def test_what_is_not_a_weights_file_is_said(tmp_path) -> None:
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt: expected a state dict or an IPT checkpoint dict, got list$"):
        load_model(tmp_path / "list.pt")
    torch.save({"head.0.0.weight": torch.zeros(1), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(
        CheckpointError, match=r"mixed\.pt: neither an IPT checkpoint nor a bare state dict of tensors$"
    ):
        load_model(tmp_path / "mixed.pt")


def test_an_impossible_inferred_configuration_and_the_out_proj_warning_name_the_source(tmp_path) -> None:
    _, sd = _official_file(tmp_path, ["sr_x2"])
    with pytest.raises(CheckpointError, match=r"^s\.pt: inferred an invalid configuration: "):
        convert_official_ipt(sd, num_heads=5, source="s.pt")  # 72-wide tokens do not split into 5 heads
    _, with_bias = _official_file(tmp_path, ["sr_x2"], out_proj_bias=True)
    with pytest.warns(UserWarning) as w:
        convert_official_ipt(with_bias, source="o.pt")
    assert [str(x.message) for x in w] == [
        "o.pt: file has attention out_proj.bias (saved by torch ~1.5-1.8); loading it"
    ]


def test_the_converted_state_dict_takes_the_models_dtypes(tmp_path) -> None:
    _, sd = _official_file(tmp_path, ["sr_x2"])
    half = {k: v.half() if v.is_floating_point() and "_mean." not in k else v for k, v in sd.items()}
    half["body.position_encoding.position_ids"] = sd["body.position_encoding.position_ids"].int()
    _, full = convert_official_ipt(half)
    assert {k: v.dtype for k, v in full.items()} == {k: v.dtype for k, v in sd.items()}


def test_warnings_point_at_the_line_that_called_the_converter(tmp_path) -> None:
    """stacklevel: both warnings name the caller's file, not ipt/checkpoint.py. (Not run under make mutation: mutmut
    puts a wrapper frame around every function, which moves any stacklevel; docs/mutation.md.)"""
    _, sd = _official_file(tmp_path, ["denoise_s30"])
    with pytest.warns(UserWarning, match="not one of the paper's") as w:
        convert_official_ipt(sd, "denoise_s10")
    assert [x.filename for x in w] == [__file__]
    _, with_bias = _official_file(tmp_path, ["sr_x2"], out_proj_bias=True)
    with pytest.warns(UserWarning, match="out_proj.bias") as w:
        convert_official_ipt(with_bias)
    assert [x.filename for x in w] == [__file__]
