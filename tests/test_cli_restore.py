"""`ipt restore` end to end on the golden fixture's weights saved as a bare state dict."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from ipt.checkpoint import load_model
from ipt.cli import main
from ipt.restore import Restorer


@pytest.fixture(scope="module")
def weights(tmp_path_factory, golden: dict):
    path = tmp_path_factory.mktemp("w") / "IPT_tiny_pretrain.pt"
    torch.save(golden["state_dict"], path)
    return path


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (50, 61, 3), dtype=np.uint8)).save(d / "a.png")
    Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(d / "sub" / "small.jpg", quality=95)
    Image.fromarray(rng.integers(0, 256, (49, 52), dtype=np.uint8), mode="L").save(d / "gray.png")
    Image.fromarray(rng.integers(0, 256, (48, 48, 4), dtype=np.uint8), mode="RGBA").save(d / "alpha.png")
    Image.fromarray(rng.integers(0, 65536, (52, 50), dtype=np.uint16)).save(d / "deep16.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return d


@pytest.mark.parametrize("tiling", ["overlap", "official"])
def test_restore_single_image_matches_the_library(tmp_path, weights, golden: dict, tiling: str) -> None:
    img = (golden["input_chop"][0].permute(1, 2, 0).round().clamp(0, 255)).to(torch.uint8).numpy()
    Image.fromarray(img).save(tmp_path / "x.png")
    rc = main(
        [
            "restore",
            str(tmp_path / "x.png"),
            str(tmp_path / "y.png"),
            "--weights",
            str(weights),
            "--task",
            "sr_x2",
            "--tiling",
            tiling,
            "--precision",
            "fp32",
            "--quiet",
        ]
    )
    assert rc == 0
    out = np.asarray(Image.open(tmp_path / "y.png"))
    assert out.shape == (122, 150, 3)
    expected = Restorer(load_model(weights), "sr_x2", tiling=tiling, precision="fp32")(img)
    assert np.array_equal(out, expected)


def test_restore_folder_continues_past_a_bad_file(tmp_path, weights, images, capsys) -> None:
    out = tmp_path / "out"
    rc = main(["restore", str(images), str(out), "--weights", str(weights), "--task", "denoise_s30", "--quiet"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "failed:" in err and "broken.png" in err and "restored 5/6" in err
    assert "gray.png: grayscale replicated to RGB" in err
    assert "alpha.png: RGBA alpha channel dropped" in err
    assert "deep16.png: 16-bit" in err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["a.png", "alpha.png", "deep16.png", "gray.png", "sub/small.png"]
    assert np.asarray(Image.open(out / "sub" / "small.png")).shape == (30, 20, 3)


@pytest.mark.parametrize(
    "argv_tail,message",
    [
        (["--task", "deblur", "--weights", "{w}"], "task 'deblur' is not in this file"),
        (["--task", "sr_x2", "--weights", "{tmp}/missing.pt"], "missing.pt: no such weights file"),
        (["--task", "sr_x2", "--weights", "{tmp}/junk.pt"], "junk.pt: not a loadable weights file"),
    ],
)
def test_bad_weights_are_one_line_errors(tmp_path, weights, images, capsys, argv_tail, message) -> None:
    (tmp_path / "junk.pt").write_text("junk")
    tail = [a.format(w=weights, tmp=tmp_path) for a in argv_tail]
    rc = main(["restore", str(images / "a.png"), str(tmp_path / "o.png"), *tail])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1


def test_bad_inputs_are_one_line_errors(tmp_path, weights, images, capsys) -> None:
    assert (
        main(["restore", str(tmp_path / "nope"), str(tmp_path / "o"), "--weights", str(weights), "--task", "sr_x2"])
        == 2
    )
    assert "nope: no such file or folder" in capsys.readouterr().err
    assert (
        main(
            [
                "restore",
                str(images / "broken.png"),
                str(tmp_path / "o.png"),
                "--weights",
                str(weights),
                "--task",
                "sr_x2",
            ]
        )
        == 2
    )
    assert "broken.png: cannot decode image" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["restore", str(empty), str(tmp_path / "o"), "--weights", str(weights), "--task", "sr_x2"]) == 2
    assert "no images found" in capsys.readouterr().err


def test_console_script_entry_point(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "ipt.cli", "restore", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "--tiling" in r.stdout


def test_demo_runs_restore_in_both_tilings(tmp_path) -> None:
    assert main(["demo", "--out", str(tmp_path)]) == 0
    for tiling in ("overlap", "official"):
        out = np.asarray(Image.open(tmp_path / tiling / "testcard_x2.png"))
        assert out.shape == (96, 128, 3)
