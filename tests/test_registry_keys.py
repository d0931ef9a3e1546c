"""ipt.registry's pure parts: the score key that decides which scores compare, score_of and read_report.

Exact strings, written out here from the key's documented form (ipt.registry.score_key's docstring), so a change of
any part, separator or order fails; the hashes are computed here with hashlib over sorted-key JSON, independently of
the module's helper. No MLflow: these run in well under a second (tests/test_model_registry.py covers registration).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pytest

from ipt.registry import RegistryError, _short_hash, read_report, score_key, score_of


def sha12(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()[:12]


def sr_report(**over) -> dict:
    report = {
        "task": "sr_x2",
        "protocol": "ipt",
        "datasets": {
            "Set5": {
                "psnr_y": 36.5,
                "ssim_y": 0.95,
                "images": 2,
                "per_image": [{"name": "bird", "psnr_y": 36.0}, {"name": "baby", "psnr_y": 37.0}],
            },
            "Set14": {"psnr_y": 32.0, "images": 14},
        },
    }
    return report | over


def test_short_hash_is_twelve_hex_digits_of_sha256_over_sorted_json() -> None:
    obj = {"b": [1, 2], "a": "x"}
    assert _short_hash(obj) == sha12(obj) and len(_short_hash(obj)) == 12
    assert _short_hash({"a": "x", "b": [1, 2]}) == _short_hash(obj)  # key order does not matter
    assert _short_hash({"a": "y", "b": [1, 2]}) != _short_hash(obj)


def test_the_key_of_an_sr_report_names_task_protocol_metric_sets_and_images() -> None:
    report = sr_report()
    images = sha12({"Set5": ["baby", "bird"]})  # sorted names, per dataset that lists them
    assert score_key(report, "psnr_y", ["Set5"]) == f"task=sr_x2|protocol=ipt|metric=psnr_y|sets=Set5:2|images={images}"
    # a set without per-image rows adds its count only, in the order given
    both = sha12({"Set5": ["baby", "bird"]})
    assert score_key(report, "ssim_y", ["Set14", "Set5"]) == (
        f"task=sr_x2|protocol=ipt|metric=ssim_y|sets=Set14:14,Set5:2|images={both}"
    )
    assert score_key(report, "psnr_y", ["Set14"]) == "task=sr_x2|protocol=ipt|metric=psnr_y|sets=Set14:14"
    # the count comes from the per-image rows where 'images' is absent
    del report["datasets"]["Set5"]["images"]
    assert score_key(report, "psnr_y", ["Set5"]).endswith("|sets=Set5:2|images=" + images)
    # no task or protocol recorded: '?' rather than a key that looks like another's
    bare = {"datasets": {"Set5": {"images": 5}}}
    assert score_key(bare, "psnr_y", ["Set5"]) == "task=?|protocol=?|metric=psnr_y|sets=Set5:5"


def test_the_key_says_what_made_the_inputs() -> None:
    noisy = {"task": "denoise_s30", "protocol": "matlab", "seed": 7, "datasets": {"CBSD68": {"images": 10}}}
    assert (
        score_key(noisy, "psnr_y", ["CBSD68"]) == "task=denoise_s30|protocol=matlab|metric=psnr_y|sets=CBSD68:10|seed=7"
    )
    del noisy["seed"]
    assert score_key(noisy, "psnr_y", ["CBSD68"]).endswith("|seed=unrecorded")
    # a task whose inputs are not drawn from the noise seed carries no seed part
    rain = {"task": "derain", "protocol": "ipt", "seed": 7, "datasets": {"Rain100L": {"images": 100}}}
    assert score_key(rain, "psnr_y", ["Rain100L"]) == "task=derain|protocol=ipt|metric=psnr_y|sets=Rain100L:100"
    # a custom task: its corruption's name and a hash of the whole spec (seed included), never the noise seed
    spec = {"name": "jpeg", "quality": 10, "seed": 3}
    custom = {"task": "jpeg_q10", "protocol": "ipt", "seed": 7, "corruption": spec, "datasets": {"Set5": {"images": 5}}}
    assert score_key(custom, "psnr_y", ["Set5"]) == (
        f"task=jpeg_q10|protocol=ipt|metric=psnr_y|sets=Set5:5|inputs=jpeg#{sha12(spec)}"
    )
    assert score_key(custom | {"corruption": {"quality": 10}}, "psnr_y", ["Set5"]).endswith(
        f"|inputs=?#{sha12({'quality': 10})}"
    )


def test_a_report_that_does_not_say_how_many_images_it_scored_is_refused() -> None:
    with pytest.raises(RegistryError, match=r"^benchmark report does not say how many images of Set5 it scored$"):
        score_key({"datasets": {"Set5": {"psnr_y": 30.0}}}, "psnr_y", ["Set5"])
    report = sr_report()
    report["datasets"]["Set5"]["images"] = 3
    with pytest.raises(RegistryError, match=r"^benchmark report: Set5 says 3 images but lists 2$"):
        score_key(report, "psnr_y", ["Set5"])


def test_score_of_is_one_sets_metric_or_the_mean_over_sets_with_its_key() -> None:
    report = sr_report()
    score, key = score_of(report, "psnr_y", "Set5")
    assert score == 36.5 and key == score_key(report, "psnr_y", ["Set5"])
    score, key = score_of(report)  # psnr_y over every dataset, in sorted order
    assert score == pytest.approx((36.5 + 32.0) / 2) and key == score_key(report, "psnr_y", ["Set14", "Set5"])
    with pytest.raises(RegistryError, match=r"^benchmark report has no datasets$"):
        score_of({"datasets": {}})
    with pytest.raises(RegistryError, match=r"lacks ssim_y for \['Set14'\]; it has \['Set14', 'Set5'\]$"):
        score_of(report, "ssim_y")
    with pytest.raises(RegistryError, match=r"lacks psnr_y for \['B100'\]"):
        score_of(report, "psnr_y", "B100")
    report["datasets"]["Set14"]["psnr_y"] = math.nan
    with pytest.raises(RegistryError, match=r"psnr_y is not a finite number for \['Set14'\]; a NaN score never"):
        score_of(report)
    assert score_of(report, "psnr_y", "Set5")[0] == 36.5  # the other set's NaN does not touch this one


def test_read_report_names_the_file_and_the_problem(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(sr_report()))
    assert read_report(good) == sr_report() and read_report(str(good)) == sr_report()
    for name, text, says in [
        ("broken.json", "{not json", "cannot read the benchmark report"),
        ("list.json", "[1, 2]", "not an `ipt benchmark` report (a JSON object with 'datasets')"),
        ("nodatasets.json", '{"task": "sr_x2"}', "not an `ipt benchmark` report"),
        ("datasetlist.json", '{"datasets": [1]}', "not an `ipt benchmark` report"),
    ]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(RegistryError, match=rf"^{path}: {says}".replace("(", r"\(").replace(")", r"\)")):
            read_report(path)
    with pytest.raises(RegistryError, match=rf"^{tmp_path / 'missing.json'}: cannot read the benchmark report \("):
        read_report(tmp_path / "missing.json")


def test_key_parts_and_the_difference_between_two_keys() -> None:
    from ipt.registry import _key_difference, _key_parts

    assert _key_parts("task=sr_x2|sets=Set5:5|images=a=b") == {"task": "sr_x2", "sets": "Set5:5", "images": "a=b"}
    assert _key_parts("ipt:psnr_y:Set5") is None and _key_parts("task=sr_x2|ipt") is None  # the old format
    old = "task=sr_x2|protocol=ipt|sets=Set5:5|images=aaa"
    new = "task=sr_x2|protocol=matlab|sets=Set5:3|seed=7"
    # each part that differs, in the order the keys name them, '-' where one key lacks it
    assert _key_difference(old, new) == "protocol ipt vs matlab; sets Set5:5 vs Set5:3; images aaa vs -; seed - vs 7"
    assert _key_difference(old, old) == ""
    for a, b in [("ipt:psnr_y:Set5", new), (old, "ipt:psnr_y:Set5")]:
        assert _key_difference(a, b) == "the champion's key predates keys that record the images scored"


def test_decide_moves_the_champion_only_on_a_better_score_under_the_same_key() -> None:
    from ipt.registry import TIE_DB, decide

    key = "task=sr_x2|protocol=ipt|metric=psnr_y|sets=Set5:5"
    champ = {"version": "3", "tags": {"score": "30.0", "score_key": key, "checkpoint_sha256": "abc"}}
    # unscored versions (a pretrained body)
    assert decide(None, None, None) == (True, "first version (no score given)")
    assert decide(None, None, {"version": "2", "tags": {}}) == (
        True,
        "no score given, and champion v2 has none: the newest version",
    )
    assert decide(None, None, champ) == (
        False,
        "no score given; champion v3 has one (score this version to compete)",
    )
    # scored versions
    assert decide(29.0, key, None) == (True, "no champion yet")
    assert decide(29.0, key, {"version": "2", "tags": {}}) == (True, "champion v2 has no score")
    assert decide(30.5, key, champ) == (True, "30.5000 beats champion v3 (30.0000)")
    assert decide(29.5, key, champ) == (False, "29.5000 does not beat champion v3 (30.0000)")
    # a tie never moves it: within TIE_DB, and exactly at it
    assert decide(30.0 + TIE_DB / 2, key, champ)[0] is False and decide(30.0 + TIE_DB, key, champ)[0] is False
    assert decide(30.0 + 3 * TIE_DB, key, champ)[0] is True
    # another key: not comparable, unless a new key is allowed
    other = key.replace("Set5:5", "Set5:3")
    why = (
        "champion v3 (30.0000) and this version (31.0000) have different score keys, not comparable "
        "(sets Set5:5 vs Set5:3); nothing was rescored"
    )
    assert decide(31.0, other, champ) == (
        False,
        f"{why}; champion kept (score both the same way, or allow a new score key)",
    )
    assert decide(31.0, other, champ, allow_new_key=True) == (
        True,
        f"{why}; replaces the champion because a new score key was allowed",
    )
    # notes: another setup than the champion's (only tags the champion has), its own checkpoint again
    tagged = {"version": "3", "tags": champ["tags"] | {"score_tiling": "official", "score_precision": "fp32"}}
    setup = {"score_tiling": "overlap", "score_precision": "fp32", "score_device": "cuda"}
    assert decide(30.5, key, tagged, setup=setup) == (
        True,
        "30.5000 beats champion v3 (30.0000); note: scored with a different tiling 'official' (champion) vs 'overlap'",
    )
    two = {"score_tiling": "overlap", "score_precision": "bf16"}
    assert decide(29.0, key, tagged, setup=two)[1] == (
        "29.0000 does not beat champion v3 (30.0000); note: scored with a different tiling 'official' (champion) vs "
        "'overlap', precision 'fp32' (champion) vs 'bf16'"
    )
    assert decide(29.0, key, champ, checkpoint_sha256="abc") == (
        False,
        "29.0000 does not beat champion v3 (30.0000); this is the champion's own checkpoint again",
    )
    assert decide(29.0, key, champ, checkpoint_sha256="def")[1] == "29.0000 does not beat champion v3 (30.0000)"


def test_check_report_model_by_sha256_by_path_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    from ipt.registry import check_report_model

    ckpt = tmp_path / "ft" / "model.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    other = "F" * 64
    assert check_report_model({"model_sha256": sha.upper()}, ckpt, sha) == ("sha256", [])  # case does not matter
    msg = (
        f"r.json: scored weights with sha256 {'F' * 12}..., but {ckpt} has sha256 {sha[:12]}...; it is not a score "
        "of this checkpoint"
    )
    with pytest.raises(RegistryError, match=f"^{re.escape(msg)}$"):
        check_report_model({"model_sha256": other, "model": str(ckpt)}, ckpt, sha, "r.json")
    # (the sha256 decides even where the path matches.) Without one: a models:/ URI is not checked, and a path
    # must resolve to the checkpoint
    assert check_report_model({"model": "models:/ipt-sr_x2/3"}, ckpt, sha, "r.json") == (
        "unchecked",
        [f"r.json records no model_sha256 and scored models:/ipt-sr_x2/3; not checked against {ckpt}"],
    )
    monkeypatch.chdir(tmp_path)
    assert check_report_model({"model": "ft/model.pt"}, ckpt, sha) == (
        "path",
        [
            f"benchmark report records no model_sha256: matched to {ckpt} by path only (the file may have "
            "changed since it was scored)"
        ],
    )
    wrong = (
        f"r.json: scored 'ft/other.pt' ({tmp_path / 'ft' / 'other.pt'}), not {ckpt} ({ckpt}); the report records "
        "no model_sha256, so the paths were compared (relative ones against the current directory)"
    )
    with pytest.raises(RegistryError, match=f"^{re.escape(wrong)}$"):
        check_report_model({"model": "ft/other.pt"}, ckpt, sha, "r.json")
    with pytest.raises(RegistryError, match=r"^benchmark report: records neither model nor model_sha256; cannot tell"):
        check_report_model({"model_sha256": ""}, ckpt, sha)
    for baseline in ("bicubic", "baseline"):
        said = (
            f"r.json: scores the {baseline!r} baseline, not {ckpt}; benchmark the checkpoint "
            f"(ipt benchmark --model {ckpt}) and register that report"
        )
        with pytest.raises(RegistryError, match=f"^{re.escape(said)}$"):
            check_report_model({"model": baseline, "model_sha256": sha}, ckpt, sha, "r.json")


def test_probe_and_generalisation_reports_never_register() -> None:
    from ipt.registry import refuse_probe_report

    for fine in ({}, {"prior_probe": "own"}, {"task": "denoise_s30", "inputs": "denoise_s30"}, {"prior_probe": None}):
        refuse_probe_report(fine, "r.json")  # returns, raises nothing
    probe = (
        "r.json: scores the refiner with its prior's output set to zero (ipt benchmark --prior-probe), not as it "
        "runs; score it without --prior-probe"
    )
    with pytest.raises(RegistryError, match=f"^{re.escape(probe)}$"):
        refuse_probe_report({"prior_probe": "zero"}, "r.json")
    for name, said in (("next", "taken from the next image"), ("half", "'half'")):
        with pytest.raises(RegistryError, match=f"^{re.escape(probe.replace('set to zero', said))}$"):
            refuse_probe_report({"prior_probe": name}, "r.json")
    inputs = (
        "report: scores the denoise_s30 model on denoise_s10's inputs (ipt benchmark --inputs: a generalisation "
        "score), not on its own task's; score it without --inputs"
    )
    with pytest.raises(RegistryError, match=f"^{re.escape(inputs)}$"):
        refuse_probe_report({"task": "denoise_s30", "inputs": "denoise_s10"}, None)
