"""A user's size-changing task, `bd_x3` (blur, then bicubic x3), beside `sr_x3` through the whole chain: corrupt,
pretrain, fine-tune, benchmark on its own corruption of the clean test images, register, restore from the registry.
Its scale comes from its corruption (ipt.tasks), never from its name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from helpers_images import PHOTOS, photo_folder
from ipt.checkpoint import load_model
from ipt.cli import main
from ipt.tasks import TaskError, from_entry, inputs_corruption

BD_X3 = {"name": "blur_down", "scale": 3, "sigma": 1.6, "size": 7}


def test_the_scale_of_a_task_comes_from_its_corruption() -> None:
    assert from_entry("bd_x3", BD_X3).scale == 3
    assert from_entry("my_x1", {"name": "jpeg", "quality": 20}).scale == 1
    assert from_entry("sr_x3", {"name": "blur_down", "scale": 3}).scale == 3  # an SR name with another x3 model
    with pytest.raises(TaskError, match=r"p.yaml: corrupt.tasks.sr_x2: the name says x2 but blur_down .* by 3"):
        from_entry("sr_x2", BD_X3, "p.yaml")
    with pytest.raises(TaskError, match="denoise_s30 is scored with Gaussian noise of sigma 30"):
        from_entry("denoise_s30", {"name": "gaussian_noise", "sigma": 50})


def test_a_paper_task_makes_its_inputs_by_its_name_and_any_other_by_its_entry() -> None:
    tasks = {"bd_x3": BD_X3, "sr_x2": {"name": "bicubic_down", "scale": 2}}
    assert inputs_corruption("sr_x2", tasks) is None  # the name says how its inputs are made
    assert inputs_corruption("derain", {}) is None
    assert inputs_corruption("bd_x3", tasks) == BD_X3
    with pytest.raises(
        TaskError,
        match=r"task 'my_x1' is not a paper task .* in p.yaml corrupt.tasks; known there: "
        r"\['bd_x3', 'sr_x2'\]",
    ):
        inputs_corruption("my_x1", tasks, "p.yaml corrupt.tasks")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    params = {
        "seed": 20210507,
        "patch_size": 12,
        "shard": {"max_scale": 3, "crops": 2, "images_per_shard": 4, "workers": 1, "executor": "serial"},
        "corrupt": {"workers": 1, "executor": "serial", "tasks": {"sr_x3": {"name": "bicubic_down", "scale": 3}}},
    }
    params["corrupt"]["tasks"]["bd_x3"] = BD_X3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    photo_folder(tmp_path / "photos", PHOTOS[:3])
    bench = tmp_path / "bench"
    for name, n in (("Set5", 2), ("Set14", 1)):
        (bench / name / "HR").mkdir(parents=True)
        for i in range(n):
            rng = np.random.default_rng(i)
            y, x = np.mgrid[0:50, 0:62] / 9.0
            img = np.stack([128 + 80 * np.sin(x + c) * np.cos(y * (1 + i)) for c in range(3)], -1)
            img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(bench / name / "HR" / f"img{i}.png")
    return tmp_path


@pytest.mark.slow
def test_a_size_changing_custom_task_trains_benchmarks_and_registers_beside_sr_x3(
    project: Path, monkeypatch, capsys
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.chdir(project)
    monkeypatch.setenv("IPT_PARAMS", str(project / "params.yaml"))
    uri = f"sqlite:///{project / 'mlflow.db'}"
    assert main(["shard", "--source", "photos", "--out", "data/clean", "--quiet"]) == 0
    for task in ("sr_x3", "bd_x3"):
        assert main(["corrupt", "--task", task, "--clean", "data/clean", "--out", "data/pairs/{task}", "--quiet"]) == 0
    manifest = json.loads(Path("data/pairs/bd_x3/manifest.json").read_text())
    assert manifest["params"]["scale"] == 3 and manifest["params"]["corruption"] == "blur_down"

    tiny = ["--model-size", "tiny", "--steps", "2", "--batch-size", "2", "--shuffle-buffer", "2", "--log-every", "0"]
    common = ["--shards", "data/pairs", "--precision", "fp32", "--checkpoint-every", "2"]
    assert main(["pretrain", "--tasks", "sr_x3,bd_x3", "--out", "runs/pretrain", *common, *tiny]) == 0
    assert dict(load_model("runs/pretrain/model.pt").spec.tasks) == {"sr_x3": 3, "bd_x3": 3}
    ft = ["--steps", "2", "--batch-size", "2", "--shuffle-buffer", "2", "--log-every", "0"]
    args = ["finetune", "--task", "bd_x3", "--init", "runs/pretrain", "--out", "runs/finetune/bd_x3", *common, *ft]
    assert main(args) == 0
    assert load_model("runs/finetune/bd_x3/model.pt").spec.tasks == (("bd_x3", 3),)
    capsys.readouterr()

    bench = ["benchmark", "--task", "bd_x3", "--root", "bench", "--tiling", "overlap", "--quiet"]
    assert main([*bench, "--model", "runs/finetune/bd_x3/model.pt", "--out", "r.json"]) == 0
    report = json.loads(Path("r.json").read_text())
    assert report["corruption"]["name"] == "blur_down" and report["corruption"]["scale"] == 3
    assert {n: r["images"] for n, r in report["datasets"].items()} == {"Set5": 2, "Set14": 1}
    assert main([*bench, "--model", "baseline", "--out", "b.json"]) == 0  # bicubic x3 of the blurred LR
    assert json.loads(Path("b.json").read_text())["model"] == "baseline"

    reg = ["register", "--task", "bd_x3", "--checkpoint", "runs/finetune/bd_x3/model.pt", "--report", "r.json"]
    assert main([*reg, "--tracking-uri", uri, "--out", "reg.json"]) == 0
    decision = json.loads(Path("reg.json").read_text())
    assert decision["name"] == "ipt-bd_x3" and decision["promoted"]

    Image.fromarray(np.full((20, 17, 3), 90, np.uint8)).save("small.png")
    restore = ["restore", "small.png", "out.png", "--weights", "models:/ipt-bd_x3@champion", "--quiet"]
    assert main([*restore, "--tracking-uri", uri]) == 0
    assert Image.open("out.png").size == (17 * 3, 20 * 3)
