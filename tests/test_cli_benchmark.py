"""`ipt benchmark` end to end on tiny sets (baselines and the golden fixture's six-task weights) + the runner API."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corruptions import imresize_uint8
from ipt.cli import main
from ipt.data.testsets import BenchmarkPair, BenchmarkSet
from ipt.metrics import PROTOCOLS, PSNR_CAP_DB
from ipt.scoring import evaluate, identity_fn, restorer_fn

TOP_KEYS = {"task", "model", "model_sha256", "protocol", "protocol_id", "tiling", "precision", "seed", "limit"}
TOP_KEYS |= {"precision_reason", "device", "hardware", "datasets"}
SET_KEYS = {"images", "images_total", "psnr_y", "ssim_y", "psnr_rgb", "per_image"}  # no timing: see below


def _smooth(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth colour image (so bicubic scores are sane), deterministic."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    f = rng.uniform(1, 4, (3, 2))
    img = [127 + 100 * np.sin(f[c, 0] * 3 * x + c) * np.cos(f[c, 1] * 3 * y) for c in range(3)]
    return np.clip(np.stack(img, -1) + 0.5, 0, 255).astype(np.uint8)


@pytest.fixture
def sr_root(tmp_path: Path) -> Path:
    """Set5 in the EDSR layout with two 96x96 HR images and their 48x48 x2 LR files."""
    for i, k in enumerate(("baby", "bird")):
        hr = _smooth(96, 96, i)
        (tmp_path / "Set5" / "HR").mkdir(parents=True, exist_ok=True)
        (tmp_path / "Set5" / "LR_bicubic" / "X2").mkdir(parents=True, exist_ok=True)
        Image.fromarray(hr).save(tmp_path / "Set5" / "HR" / f"{k}.png")
        Image.fromarray(imresize_uint8(hr, 0.5)).save(tmp_path / "Set5" / "LR_bicubic" / "X2" / f"{k}x2.png")
    return tmp_path


@pytest.fixture(scope="module")
def weights(tmp_path_factory, golden: dict) -> Path:
    path = tmp_path_factory.mktemp("w") / "IPT_tiny_pretrain.pt"
    torch.save(golden["state_dict"], path)
    return path


def _strict_json(path: Path) -> dict:
    def no_constants(name: str) -> None:
        raise AssertionError(f"non-standard JSON token {name} in {path}")

    return json.loads(path.read_text(), parse_constant=no_constants)


def _check_schema(report: dict, task: str, model: str, datasets: list[str], images: int) -> None:
    assert set(report) == TOP_KEYS
    assert report["task"] == task and report["model"] == model
    assert report["protocol_id"] == PROTOCOLS[report["protocol"]]
    assert {"cpu_model", "cpu_bf16", "torch"} <= set(report["hardware"])
    assert list(report["datasets"]) == datasets
    for r in report["datasets"].values():
        assert set(r) == SET_KEYS and r["images"] == images == len(r["per_image"])
        for rec in r["per_image"]:
            assert set(rec) == {"name", "psnr_y", "ssim_y", "psnr_rgb"}
            assert all(math.isfinite(rec[k]) for k in ("psnr_y", "ssim_y", "psnr_rgb"))
        assert r["psnr_y"] == pytest.approx(np.mean([p["psnr_y"] for p in r["per_image"]]))


def test_bicubic_baseline_cli(sr_root: Path, tmp_path: Path, capsys) -> None:
    out, md = tmp_path / "r" / "bicubic.json", tmp_path / "r" / "bicubic.md"
    argv = ["benchmark", "--task", "sr_x2", "--model", "bicubic", "--root", str(sr_root), "--out", str(out)]
    assert main([*argv, "--markdown", str(md), "--protocol", "matlab"]) == 0
    captured = capsys.readouterr()
    report = _strict_json(out)
    _check_schema(report, "sr_x2", "bicubic", ["Set5"], 2)
    assert report["protocol"] == "matlab" and report["tiling"] is None
    assert 25 < report["datasets"]["Set5"]["psnr_y"] < 60
    assert "| Set5 | 2 |" in captured.out and md.read_text() == captured.out
    assert "skipping default dataset Set14" in captured.err and "Urban100" in captured.err


def test_a_rerun_rewrites_the_same_report_and_scores_and_times_only_where_asked(sr_root: Path, tmp_path: Path, capsys):
    """The report file holds no timing (a rerun that changes nothing rewrites the same bytes, so git and dvc.lock stay
    clean); --scores writes the numbers alone (what the DVC stages declare as metrics); --timings puts them back."""
    argv = ["benchmark", "--task", "sr_x2", "--model", "bicubic", "--root", str(sr_root), "--quiet"]
    for run in ("a", "b"):
        files = ["--out", str(tmp_path / run / "{task}.json"), "--scores", str(tmp_path / run / "s.json")]
        assert main([*argv, *files]) == 0
    assert "| s/image |" in capsys.readouterr().out  # the table still shows the time
    for name in ("sr_x2.json", "s.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    report, scores = _strict_json(tmp_path / "a" / "sr_x2.json"), _strict_json(tmp_path / "a" / "s.json")
    assert list(scores) == ["Set5"] and set(scores["Set5"]) == SET_KEYS - {"per_image"}
    assert scores["Set5"] == {k: v for k, v in report["datasets"]["Set5"].items() if k != "per_image"}
    assert scores["Set5"]["images"] == 2 and 25 < scores["Set5"]["psnr_y"] < 60

    assert main([*argv, "--out", str(tmp_path / "t.json"), "--timings"]) == 0
    timed = _strict_json(tmp_path / "t.json")["datasets"]["Set5"]
    assert timed.pop("seconds_per_image") > 0 and timed == report["datasets"]["Set5"]


def test_cli_errors_are_one_line(sr_root: Path, tmp_path: Path, capsys) -> None:
    base = ["benchmark", "--root", str(sr_root), "--out", str(tmp_path / "x.json")]
    cases = [
        (["--task", "sr_x2", "--model", "bicubic", "--datasets", "Set5,Set14"], "unknown dataset 'Set14'"),
        (
            ["--task", "sr_x2", "--model", "models:/ipt-sr_x2@champion"]
            + ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
            f"no MLflow store at {tmp_path / 'mlflow.db'}",  # not an empty store made on the way
        ),
        (["--task", "denoise_s30", "--model", "bicubic", "--datasets", "Set5"], "use --model identity"),
        (["--task", "sr_x3", "--model", "identity"], "use --model bicubic"),
        (["--task", "sr_x2", "--model", str(tmp_path / "missing.pt")], "no such weights file"),
        (["--task", "sr_x2", "--model", "bicubic", "--limit", "-1"], "benchmark: limit must be >= 1 or None"),
        (["--task", "sr_x2", "--model", "bicubic", "--batch", "0"], "benchmark: batch must be a positive integer"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.startswith("error: "), err
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_weights_on_sr_and_denoise_sets(sr_root: Path, tmp_path: Path, weights: Path, capsys) -> None:
    out = tmp_path / "ipt.json"
    common = ["--model", str(weights), "--root", str(sr_root), "--out", str(out), "--quiet"]
    assert main(["benchmark", "--task", "sr_x2", "--tiling", "official", "--precision", "fp32", *common]) == 0
    report = _strict_json(out)
    _check_schema(report, "sr_x2", str(weights), ["Set5"], 2)
    assert report["tiling"] == "official" and report["precision"] == "fp32" and report["protocol"] == "ipt"

    clean = tmp_path / "den" / "CBSD68"
    clean.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(_smooth(48, 56, i)).save(clean / f"{i}.png")
    common[common.index("--root") + 1] = str(clean.parent)
    assert main(["benchmark", "--task", "denoise_s30", "--datasets", "CBSD68", *common]) == 0
    _check_schema(_strict_json(out), "denoise_s30", str(weights), ["CBSD68"], 2)
    assert "noisy inputs from seed 20210507" in capsys.readouterr().err


def test_inputs_scores_a_model_on_another_tasks_inputs(sr_root: Path, tmp_path: Path, weights: Path, capsys) -> None:
    """Generalisation (issue 35d): the denoise_s30 head on sigma-10 noise. The inputs are exactly the denoise_s10
    task's (same seed), the head is still denoise_s30's, and the report says both."""
    clean = tmp_path / "den" / "CBSD68"
    clean.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(_smooth(48, 56, i)).save(clean / f"{i}.png")
    root = ["--root", str(clean.parent), "--datasets", "CBSD68", "--quiet"]

    def run(task: str, model: str, *extra: str) -> dict:
        out = tmp_path / f"{task}-{Path(model).stem}-{'-'.join(extra)}.json"
        assert main(["benchmark", "--task", task, "--model", model, *root, "--out", str(out), *extra]) == 0
        return _strict_json(out)

    def per_image(r: dict) -> list:
        return r["datasets"]["CBSD68"]["per_image"]

    moved = run("denoise_s30", "identity", "--inputs", "denoise_s10")
    assert per_image(moved) == per_image(run("denoise_s10", "identity"))  # the inputs are denoise_s10's
    assert per_image(moved) != per_image(run("denoise_s30", "identity"))
    assert moved["task"] == "denoise_s30" and moved["inputs"] == "denoise_s10" and set(moved) == TOP_KEYS | {"inputs"}
    assert "**denoise_s30** on **denoise_s10**'s inputs" in capsys.readouterr().out
    head30 = run("denoise_s30", str(weights), "--inputs", "denoise_s10")
    head50 = run("denoise_s50", str(weights), "--inputs", "denoise_s10")
    assert per_image(head30) != per_image(head50)  # the model's head is its task's, not the inputs'
    assert per_image(head30) != per_image(run("denoise_s30", str(weights)))
    assert "inputs" not in run("denoise_s30", "identity", "--inputs", "denoise_s30")  # its own task: a plain report
    capsys.readouterr()
    # another scale is refused before anything is scored
    argv = ["benchmark", "--task", "sr_x2", "--model", "bicubic", "--root", str(sr_root), "--inputs", "denoise_s10"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --inputs denoise_s10: its inputs are at x1, the sr_x2 model restores x2", err


def test_identity_denoise_is_deterministic(tmp_path: Path) -> None:
    (tmp_path / "McMaster").mkdir()
    Image.fromarray(_smooth(40, 40, 3)).save(tmp_path / "McMaster" / "1.png")
    argv = ["benchmark", "--task", "denoise_s50", "--model", "identity", "--root", str(tmp_path), "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "a.json")]) == 0
    assert main([*argv, "--out", str(tmp_path / "b.json")]) == 0
    a, b = _strict_json(tmp_path / "a.json"), _strict_json(tmp_path / "b.json")
    assert a["datasets"]["McMaster"]["per_image"] == b["datasets"]["McMaster"]["per_image"]
    assert 10 < a["datasets"]["McMaster"]["psnr_y"] < 25  # sigma 50 noise on the Y channel


# ------------------------------------------------------------------------------------------------ runner API


def _set(pairs: list[BenchmarkPair], scale: int = 1) -> BenchmarkSet:
    return BenchmarkSet("Tiny", "derain", scale, Path("/nowhere/Tiny"), "test", pairs)


def test_the_benchmark_config_is_built_and_checked_once() -> None:
    """The flags (or a params section) become one frozen BenchmarkConfig; its own checks hold for any builder."""
    import dataclasses

    from ipt.config import ConfigError
    from ipt.scoring import BenchmarkConfig

    cfg = BenchmarkConfig.from_values(
        {"task": "sr_x2", "model": "bicubic", "root": "/sets", "datasets": "Set5, Set14", "limit": 0, "batch": 8}
    )
    assert cfg.datasets == ("Set5", "Set14") and cfg.limit is None and cfg.batch == 8 and cfg.tiling == "official"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.tiling = "overlap"  # type: ignore[misc]
    for bad, why in [
        ({"tiling": "fast"}, "tiling 'fast' is not one of"),
        ({"precision": "fp16"}, "precision 'fp16' is not one of"),
        ({"protocol": "octave"}, "protocol 'octave' is not one of"),
        ({"limit": -2}, "limit must be >= 1"),
        ({"datasets": ","}, None),  # an empty list means the task's standard sets
    ]:
        values = {"task": "sr_x2", "model": "bicubic", "root": "/sets", **bad}
        if why is None:
            assert BenchmarkConfig.from_values(values).datasets is None
            continue
        with pytest.raises(ConfigError, match=why):
            BenchmarkConfig.from_values(values)
    with pytest.raises(ConfigError, match="root is not set"):
        BenchmarkConfig.from_values({"task": "sr_x2", "model": "bicubic"})


def test_evaluate_calls_on_result_and_caps_identical_images() -> None:
    img = _smooth(24, 24, 0)
    seen: list[tuple[str, dict]] = []
    r = evaluate(
        identity_fn, _set([BenchmarkPair("same", img, img)]), scale=1, on_result=lambda d, rec: seen.append((d, rec))
    )
    assert r["psnr_y"] == r["psnr_rgb"] == PSNR_CAP_DB and r["ssim_y"] == pytest.approx(1.0)
    assert seen[0][0] == "Tiny" and seen[0][1]["name"] == "same" and seen[0][1]["seconds"] >= 0
    json.dumps(r, allow_nan=False)


def test_evaluate_rejects_wrong_output_sizes() -> None:
    img = _smooth(24, 24, 0)
    with pytest.raises(ValueError, match="Tiny/a in .*: output is"):
        evaluate(lambda lq: lq[:20], _set([BenchmarkPair("a", img, img)]), scale=1)


def test_restorer_fn_passes_float_inputs_unquantized() -> None:
    class Recorder:
        def restore_tensor(self, x: torch.Tensor) -> torch.Tensor:
            self.x = x
            return x

    rec = Recorder()
    noisy = torch.rand(1, 3, 8, 8) * 255
    assert torch.equal(restorer_fn(rec)(noisy), noisy) and torch.equal(rec.x, noisy)
    u8 = _smooth(8, 8, 1)
    out = restorer_fn(rec)(u8)
    assert out.shape == (1, 3, 8, 8) and out.dtype == torch.float32
    np.testing.assert_array_equal(out[0].permute(1, 2, 0).numpy(), u8)


def test_bad_set_files_and_outputs_are_one_line_errors(sr_root: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """A corrupt image and an image the tiling cannot take are named; an unwritable --out is refused before the
    evaluation starts; the benchmark's own MLflow run ends FAILED, not RUNNING."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("IPT_TRACKING", "on")
    base = ["benchmark", "--task", "sr_x2", "--root", str(sr_root), "--datasets", "Set5", "--tracking-uri", uri]
    base.append("--quiet")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main([*base, "--model", "bicubic", "--out", str(blocker / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {blocker / 'r.json'}: cannot write there") and len(err.splitlines()) == 1, err

    small = _smooth(40, 40, 3)  # a 20x20 LR file: below the official tiling's 48-px window
    Image.fromarray(small).save(sr_root / "Set5" / "HR" / "zebra.png")
    Image.fromarray(imresize_uint8(small, 0.5)).save(sr_root / "Set5" / "LR_bicubic" / "X2" / "zebrax2.png")
    out = tmp_path / "w.json"
    argv = [*base, "--model", str(_weights_sr_x2(tmp_path)), "--tiling", "official", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Set5/zebra in" in err and "official tiling needs H, W >= 48" in err and len(err.splitlines()) == 1, err
    assert not out.exists()

    (sr_root / "Set5" / "HR" / "zebra.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main([*base, "--model", "bicubic", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "zebra.png: cannot decode image" in err and len(err.splitlines()) == 1, err
    statuses = {
        r.info.status
        for r in MlflowClient(uri).search_runs(
            MlflowClient(uri).search_experiments()[0:1]
            and [e.experiment_id for e in MlflowClient(uri).search_experiments()]
        )
    }
    assert "RUNNING" not in statuses and "FAILED" in statuses, statuses


def _weights_sr_x2(tmp_path: Path) -> Path:
    from ipt.config import ModelSpec
    from ipt.model import build_ipt

    torch.manual_seed(0)
    path = tmp_path / "tiny_sr_x2.pt"
    torch.save(build_ipt(ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=2)).state_dict(), path)
    return path


def test_a_hand_run_in_the_project_folder_scores_whole_sets_and_writes_no_dvc_output(monkeypatch, capsys) -> None:
    """The README's command typed in the checkout, with its params.yaml: make run's shortcuts (`dag:` in params.yaml,
    passed by dvc.yaml only) do not apply, so it scores all 14 Set14 images and gives the published bicubic row, and
    without --out it writes nothing, least of all DVC's metrics/benchmark/<task>.json."""
    from conftest import ROOT, require_shared

    require_shared(ROOT / "../shared/benchmarks/Set14", "Set14 under params.yaml's benchmark.root")
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("IPT_PARAMS")
    tracked = ROOT / "metrics" / "benchmark" / "sr_x2.json"
    before = tracked.read_bytes() if tracked.exists() else None
    rc = main(["benchmark", "--task", "sr_x2", "--model", "bicubic", "--protocol", "matlab", "--datasets", "Set14"])
    assert rc == 0
    out, err = capsys.readouterr()
    row = next(line for line in out.splitlines() if line.startswith("| Set14 |"))
    assert row.split("|")[2].strip() == "14"  # every image, no "of"
    assert float(row.split("|")[3]) == pytest.approx(30.24, abs=0.01)  # the published bicubic x2 row
    assert "not comparable" not in out + err
    assert (tracked.read_bytes() if tracked.exists() else None) == before


def test_a_partial_run_says_how_many_images_it_scored_and_warns(sr_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.json"
    argv = ["benchmark", "--task", "sr_x2", "--model", "bicubic", "--root", str(sr_root), "--limit", "1"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    stdout, err = capsys.readouterr()
    assert "warning: Set5: scoring 1 of its 2 images (--limit 1): not comparable with full-set scores" in err
    assert "| Set5 | 1 of 2 |" in stdout and "Part of the sets only (Set5: 1 of 2)" in stdout
    assert "Made with: device cpu, CPU " in stdout and "native bf16: " in stdout
    report = json.loads(out.read_text())
    assert report["datasets"]["Set5"]["images"] == 1 and report["datasets"]["Set5"]["images_total"] == 2
    assert report["limit"] == 1
