"""spandrel (what ComfyUI and chaiNNer load IPT through) reads what `ipt export --format official` and `ipt finetune`
write, and restores as `ipt restore --tiling official --precision fp32` does: an independent second implementation of
IPT, checked window by window on random official-layout weights and on whole images of a model trained here.

spandrel needs torchvision, which does not import beside the CPU-only torch wheel of `make venv`: these tests run in
`.venv-spandrel` (`make test-spandrel`: PyPI's default torch 2.13.0 build, torchvision 0.28.0, spandrel 0.4.2) and are
deselected from `make test` (marker `spandrel`). docs/export.md#spandrel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BENCHMARK_ROOT
from ipt.checkpoint import load_model, official_state_dict, save_checkpoint
from ipt.cli import main
from ipt.config import OFFICIAL_PRETRAIN_TASKS, ModelSpec
from ipt.model import build_ipt

try:  # not a dependency of the project (CI's importorskip would fail the whole of `make test` on it)
    import spandrel
except ImportError:
    spandrel = None
pytestmark = [pytest.mark.spandrel, pytest.mark.skipif(spandrel is None, reason="spandrel: make test-spandrel")]

# spandrel's IPT takes 12 heads whatever the file (a state dict does not record them): models here have 12
SPANDREL_MODEL = {"n_feats": 8, "num_layers": 1, "num_heads": 12, "patch_size": 12}


def _descriptor(sd: dict):
    desc = spandrel.ModelLoader().load_from_state_dict(sd)
    assert type(desc.model).__name__ == "IPT"
    return desc.eval()


@pytest.mark.parametrize("task", ["sr_x2", "sr_x3", "sr_x4", "denoise_s30"])
def test_spandrel_computes_our_windows_from_random_official_layout_weights(task: str) -> None:
    torch.manual_seed(0)
    model = build_ipt(ModelSpec.for_tasks([task], **SPANDREL_MODEL)).eval()
    desc = _descriptor(official_state_dict(model, task))
    assert desc.scale == model.scale(task) and desc.model.patch_size == 12
    x = torch.rand(5, 3, 12, 12, generator=torch.Generator().manual_seed(1)) * 255
    with torch.inference_mode():
        desc.model.set_scale(0)
        theirs = desc.model(x.clone())  # spandrel's IPT on windows, [0, 255] as the official code
        ours = model(x, task)
    assert (theirs - ours).abs().max() <= 1e-3  # fp32 sums in another order (their sequence-first attention)


def test_from_a_six_task_file_spandrel_builds_only_the_x4_tail() -> None:
    torch.manual_seed(0)
    model = build_ipt(ModelSpec.for_tasks(OFFICIAL_PRETRAIN_TASKS, **SPANDREL_MODEL, num_queries=6)).eval()
    desc = _descriptor({k: v.clone() for k, v in model.state_dict().items()})
    assert desc.scale == 4  # x2, x3, denoising and deraining of such a file are out of its reach
    img = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(2))
    from ipt.restore import Restorer

    with torch.inference_mode():
        theirs = desc(img)
    ours = Restorer(model, "sr_x4", tiling="official", precision="fp32").restore_tensor(img * 255)
    assert (theirs * 255 - ours.clamp(0, 255)).abs().max() <= 0.01


def _image(tmp_path: Path) -> Path:
    head = BENCHMARK_ROOT / "Set5" / "LR_bicubic" / "X2" / "headx2.png"
    if head.is_file():
        return head
    path = tmp_path / "headx2.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(path)
    return path


def test_a_model_fine_tuned_here_restores_in_spandrel_as_ipt_restore_official_fp32(tmp_path: Path) -> None:
    from helpers_pairs import make_pair_root

    torch.manual_seed(0)
    body = save_checkpoint(tmp_path / "pre.pt", build_ipt(ModelSpec.for_tasks(["sr_x2"], **SPANDREL_MODEL)))
    pairs = make_pair_root(tmp_path / "pairs", tasks=("sr_x2",), samples=4, shards=1)
    argv = ["finetune", "--task", "sr_x2", "--init", str(body), "--shards", str(pairs), "--out", str(tmp_path / "ft")]
    argv += ["--steps", "3", "--batch-size", "2", "--shuffle-buffer", "2", "--log-every", "0", "--precision", "fp32"]
    assert main(argv) == 0
    official = tmp_path / "ft" / "official.pt"  # what finetune writes for a model without image_residual
    assert main(["export", "--format", "official", str(tmp_path / "ft" / "model.pt"), str(tmp_path / "exp.pt")]) == 0
    written, exported = (torch.load(p, weights_only=True) for p in (official, tmp_path / "exp.pt"))
    assert written.keys() == exported.keys() and all(torch.equal(written[k], exported[k]) for k in written)
    image = _image(tmp_path)
    out = tmp_path / "ours.png"
    argv = ["restore", str(image), str(out), "--weights", str(official), "--num-heads", "12", "--task", "sr_x2"]
    assert main([*argv, "--tiling", "official", "--precision", "fp32", "--quiet"]) == 0
    ours = np.asarray(Image.open(out)).astype(int)
    desc = _descriptor(torch.load(official, weights_only=True))
    lr = torch.from_numpy(np.asarray(Image.open(image).convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        theirs = (desc(lr)[0].permute(1, 2, 0) * 255).round().numpy().astype(int)
    assert theirs.shape == ours.shape and np.abs(theirs - ours).max() <= 1  # one grey level
    trained = load_model(tmp_path / "ft" / "model.pt")
    assert not torch.equal(trained.state_dict()["tail.0.1.weight"], load_model(body).state_dict()["tail.0.1.weight"])
