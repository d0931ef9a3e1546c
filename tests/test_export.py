"""`ipt export`: a task's window model as ONNX, run by onnxruntime on CPU against torch (random weights and a model
fine-tuned by `ipt finetune`, whole images through the project's tiling), and the official layout, refused in one line
for an image-residual model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers_pairs import TINY_MODEL, make_pair_root
from ipt.checkpoint import load_model, save_checkpoint
from ipt.cli import main
from ipt.config import ModelSpec
from ipt.export import ONNX_INPUT, ONNX_OUTPUT, QUANTIZE, onnx_session, quantize_onnx
from ipt.inference import quantize, restore_image
from ipt.model import build_ipt
from ipt.model.body import Attention

ort = pytest.importorskip("onnxruntime")
TINY_TOLERANCE = 0.01  # grey levels (0..255) for tiny models, measured 1e-4 to 5e-4; the export's own check is looser


def _tiny(tmp_path: Path, task: str, residual: bool, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_ipt(ModelSpec.for_tasks([task], **TINY_MODEL, image_residual=residual))
    if residual:  # its correction starts at zero: give the tail's last conv weights, so the test sees it
        torch.nn.init.normal_(model.tail[0][-1].weight, std=0.05)
    return save_checkpoint(tmp_path / f"{task}-{residual}.pt", model, meta={"task": task})


def _ort_vs_torch(onnx: Path, ckpt: Path, batch: int) -> float:
    model = load_model(ckpt)
    task = model.spec.task_names[0]
    x = torch.rand(batch, 3, 12, 12, generator=torch.Generator().manual_seed(1)) * 255
    got = onnx_session(onnx).run([ONNX_OUTPUT], {ONNX_INPUT: x.numpy()})[0]
    with torch.inference_mode():
        ref = model(x, task)
    assert got.shape == tuple(ref.shape) == (batch, 3, 12 * model.scale(task), 12 * model.scale(task))
    return float(np.abs(got - ref.numpy()).max())


@pytest.mark.parametrize(
    ("task", "residual"), [("sr_x2", False), ("sr_x3", True), ("denoise_s30", False), ("derain", True)]
)
def test_onnx_export_of_random_weights_matches_torch_for_any_batch(tmp_path: Path, task: str, residual: bool, capsys):
    ckpt = _tiny(tmp_path, task, residual)
    out = tmp_path / "m.onnx"
    assert main(["export", "--format", "onnx", str(ckpt), str(out)]) == 0
    assert "max abs diff" in capsys.readouterr().out
    session = onnx_session(out)
    assert session.get_inputs()[0].shape[0] == "batch" and session.get_inputs()[0].shape[1:] == [3, 12, 12]
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["ipt.task"] == task and meta["ipt.patch_size"] == "12"
    assert meta["ipt.image_residual"] == str(residual).lower()
    for batch in (1, 5):  # the export saw batch 2: the batch axis is dynamic
        assert _ort_vs_torch(out, ckpt, batch) <= TINY_TOLERANCE


def test_int8_export_quantizes_every_linear_map_the_attention_ones_too(tmp_path: Path) -> None:
    """torch's graph computes each attention's q, k, v weights from in_proj_weight at run time, which
    quantize_dynamic cannot reach; the export folds them first, so every linear map of the model is int8 and only
    the attention's own products (q k^T and the weighted sum of v) stay fp32."""
    onnx = pytest.importorskip("onnx")
    ckpt = _tiny(tmp_path, "sr_x2", False)
    model = load_model(ckpt)
    attentions = sum(isinstance(m, Attention) for m in model.modules())  # in_proj_weight: [W_q; W_k; W_v]
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())  # out_proj and the MLPs'
    assert attentions > 0
    int8, fp32 = tmp_path / "m.int8.onnx", tmp_path / "m.onnx"
    assert main(["export", "--format", "onnx", str(ckpt), str(int8), "--quantize", "int8"]) == 0
    assert main(["export", "--format", "onnx", str(ckpt), str(fp32)]) == 0
    quantize_onnx(fp32, tmp_path / "unfolded.onnx", fold=False, **QUANTIZE["int8"])

    def ops(path: Path) -> tuple[int, int]:
        nodes = onnx.load(str(path), load_external_data=False).graph.node
        return sum(n.op_type == "MatMulInteger" for n in nodes), sum(n.op_type == "MatMul" for n in nodes)

    assert ops(int8) == (linears + 3 * attentions, 2 * attentions)
    assert ops(tmp_path / "unfolded.onnx") == (linears, 5 * attentions)  # q, k, v left in fp32
    assert _ort_vs_torch(int8, ckpt, 3) <= 12  # quantized, not broken: a few grey levels on random weights


def test_onnx_of_a_fine_tuned_model_restores_images_as_ipt_restore_does(tmp_path: Path) -> None:
    torch.manual_seed(0)
    body = save_checkpoint(tmp_path / "pre.pt", build_ipt(ModelSpec.for_tasks(["sr_x2"], **TINY_MODEL)))
    pairs = make_pair_root(tmp_path / "pairs", tasks=("sr_x2",), samples=4, shards=1)
    argv = ["finetune", "--task", "sr_x2", "--init", str(body), "--shards", str(pairs), "--out", str(tmp_path / "ft")]
    argv += ["--steps", "3", "--batch-size", "2", "--shuffle-buffer", "2", "--log-every", "0", "--precision", "fp32"]
    assert main(argv) == 0
    ckpt = tmp_path / "ft" / "model.pt"
    trained = load_model(ckpt)
    assert not torch.equal(
        trained.state_dict()["body.encoder.layers.0.linear1.weight"],
        load_model(body).state_dict()["body.encoder.layers.0.linear1.weight"],
    )  # it did train
    out = tmp_path / "sr.onnx"
    assert main(["export", "--format", "onnx", str(ckpt), str(out)]) == 0
    assert _ort_vs_torch(out, ckpt, 3) <= TINY_TOLERANCE
    # a whole image through the project's overlap tiling, windows by onnxruntime, against `ipt restore` (fp32)
    from PIL import Image

    img = np.random.default_rng(0).integers(0, 256, (29, 41, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "in.png")
    assert (
        main(
            [
                "restore",
                str(tmp_path / "in.png"),
                str(tmp_path / "o.png"),
                "--weights",
                str(ckpt),
                "--precision",
                "fp32",
                "--quiet",
            ]
        )
        == 0
    )
    expected = np.asarray(Image.open(tmp_path / "o.png")).astype(int)
    session = onnx_session(out)

    def windows(w: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([ONNX_OUTPUT], {ONNX_INPUT: w.numpy()})[0])

    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    y = quantize(restore_image(windows, x, 2, tiling="overlap", patch=12, batch=64))[0].permute(1, 2, 0).numpy()
    assert y.shape == expected.shape and np.abs(y.astype(int) - expected).max() <= 1


def test_export_problems_are_one_line_errors(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    two = save_checkpoint(tmp_path / "two.pt", build_ipt(ModelSpec.for_tasks(["sr_x2", "derain"], **TINY_MODEL)))
    assert main(["export", "--format", "onnx", str(two), str(tmp_path / "a.onnx")]) == 2
    assert "holds tasks ['sr_x2', 'derain']; choose one with --task" in capsys.readouterr().err
    assert main(["export", "--format", "onnx", str(two), str(tmp_path / "a.pt"), "--task", "derain"]) == 2
    assert "a --format onnx file is named *.onnx" in capsys.readouterr().err
    assert main(["export", "--format", "onnx", str(tmp_path / "nope.pt"), str(tmp_path / "a.onnx")]) == 2
    assert "no such weights file" in capsys.readouterr().err
    with pytest.MonkeyPatch.context() as mp:  # a core install: no onnxscript
        mp.setitem(sys.modules, "onnxscript", None)
        assert main(["export", "--format", "onnx", str(two), str(tmp_path / "a.onnx"), "--task", "derain"]) == 2
    assert "needs onnx, onnxruntime and onnxscript (onnxscript is not installed)" in capsys.readouterr().err
    with pytest.MonkeyPatch.context() as mp:  # a file onnxruntime does not run as torch does is not kept
        mp.setattr("ipt.export.ONNX_TOLERANCE", 0.0)
        assert main(["export", "--format", "onnx", str(two), str(tmp_path / "z.onnx"), "--task", "derain"]) == 2
    assert "onnxruntime differs from torch by" in capsys.readouterr().err and not (tmp_path / "z.onnx").exists()
    assert main(["export", "--format", "onnx", str(two), str(tmp_path / "d.onnx"), "--task", "derain"]) == 0
    assert onnx_session(tmp_path / "d.onnx").get_modelmeta().custom_metadata_map["ipt.task"] == "derain"
    assert not list(tmp_path.glob(".*.tmp"))


def test_official_export_is_the_released_layout_and_refuses_an_image_residual_model(tmp_path: Path, capsys) -> None:
    plain = _tiny(tmp_path, "sr_x2", residual=False)
    assert main(["export", "--format", "official", str(plain), str(tmp_path / "IPT_sr2.pt")]) == 0
    assert "does not record num_heads (2): spandrel assumes 12" in capsys.readouterr().err  # TINY_MODEL has 2
    sd = torch.load(tmp_path / "IPT_sr2.pt", weights_only=True)
    assert "head.0.0.weight" in sd and "tail.0.0.0.weight" in sd and "model_spec" not in sd  # a bare state dict
    again = load_model(tmp_path / "IPT_sr2.pt", num_heads=TINY_MODEL["num_heads"])  # read back as an official file
    assert all(torch.equal(v, load_model(plain).state_dict()[k]) for k, v in again.state_dict().items())
    residual = _tiny(tmp_path, "sr_x2", residual=True)
    capsys.readouterr()
    assert main(["export", "--format", "official", str(residual), str(tmp_path / "r.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "image-residual model (image_residual: true) has no official-layout form" in err
    assert not (tmp_path / "r.pt").exists()
