"""Strict loading of official and project checkpoints; configuration inferred from tensors."""

from __future__ import annotations

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
)
from ipt.config import OFFICIAL_PRETRAIN_TASKS, ModelSpec
from ipt.model import build_ipt


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
