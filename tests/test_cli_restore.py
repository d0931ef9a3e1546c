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


@pytest.mark.slow
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


@pytest.mark.slow
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


def _restore(*argv: str) -> int:
    return main(["restore", *map(str, argv), "--quiet"])


def test_a_folder_is_never_restored_into_itself(tmp_path, weights, images, capsys) -> None:
    before = {p: p.read_bytes() for p in images.rglob("*") if p.is_file()}
    for out in (images, images / "restored"):
        assert _restore(images, out, "--weights", weights, "--task", "denoise_s30") == 2
        err = capsys.readouterr().err.strip()
        assert "is the input folder" in err and len(err.splitlines()) == 1
    assert {p: p.read_bytes() for p in images.rglob("*") if p.is_file()} == before  # nothing written, nothing lost


def test_two_inputs_with_one_output_name_are_refused(tmp_path, weights, images, capsys) -> None:
    Image.open(images / "a.png").save(images / "a.jpg", quality=95)
    assert _restore(images, tmp_path / "out", "--weights", weights, "--task", "denoise_s30") == 2
    err = capsys.readouterr().err
    assert "a.jpg and" in err and "a.png would both be written to" in err
    assert not (tmp_path / "out").exists()


def test_an_image_the_tiling_cannot_take_fails_alone(tmp_path, weights, images, capsys) -> None:
    rc = _restore(images, tmp_path / "out", "--weights", weights, "--task", "denoise_s30", "--tiling", "official")
    err = capsys.readouterr().err
    assert rc == 1  # small.jpg (30x20) is below the official 48-px window; the others are restored
    assert "sub/small.jpg: official tiling needs H, W >= 48" in err and "restored 4/6" in err
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.png")) == ["a.png", "alpha.png", "deep16.png", "gray.png"]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--batch", "0"], "--batch must be >= 1"),
        (["--overlap", "-3"], "--overlap must be >= 0"),
        (["--overlap", "100"], "overlap must be in [0, 48)"),
        (["--num-heads", "0"], "--num-heads must be >= 1"),
        (["--device", "gpu"], "gpu"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "cuda"),
    ],
)
def test_bad_flag_values_are_one_line_errors(tmp_path, weights, images, capsys, flags, message) -> None:
    assert _restore(images / "a.png", tmp_path / "o.png", "--weights", weights, "--task", "sr_x2", *flags) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o.png").exists()


def test_outputs_are_png_files_or_folders(tmp_path, weights, images, capsys) -> None:
    assert _restore(images / "a.png", tmp_path / "o.jpg", "--weights", weights, "--task", "denoise_s30") == 2
    assert "o.jpg: outputs are PNG" in capsys.readouterr().err
    assert _restore(images / "a.png", tmp_path / "restored", "--weights", weights, "--task", "denoise_s30") == 0
    assert (tmp_path / "restored" / "a.png").is_file()  # no suffix: a folder, as a trailing slash
    capsys.readouterr()
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert _restore(images / "a.png", blocker / "x.png", "--weights", weights, "--task", "denoise_s30") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {blocker / 'x.png'}: cannot write") and len(err.splitlines()) == 1


def test_exif_orientation_and_16_bit_colour(tmp_path, weights, capsys) -> None:
    rng = np.random.default_rng(1)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape 40x20, shown rotated 90 degrees: portrait 20 wide, 40 high
    Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)).save(tmp_path / "phone.jpg", exif=exif)
    assert _restore(tmp_path / "phone.jpg", tmp_path / "o.png", "--weights", weights, "--task", "sr_x2") == 0
    assert np.asarray(Image.open(tmp_path / "o.png")).shape == (80, 40, 3)
    assert "phone.jpg: EXIF orientation 6 applied" in capsys.readouterr().err
    # 16-bit RGB, which Pillow reads as each sample's high byte: said, not silent
    deep = rng.integers(0, 65536, (24, 30, 3)).astype(">u2")
    (tmp_path / "deep.png").write_bytes(_png16_rgb(deep))
    assert _restore(tmp_path / "deep.png", tmp_path / "d.png", "--weights", weights, "--task", "denoise_s30") == 0
    assert "deep.png: 16-bit colour read at 8 bits" in capsys.readouterr().err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "d.png")).shape, (24, 30, 3))


def _png16_rgb(a: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (Pillow cannot write one): IHDR bit depth 16, colour type 2, unfiltered rows."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = a.shape
    rows = b"".join(b"\0" + a[i].astype(">u2").tobytes() for i in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


NATIVE_BF16 = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"})  # where `auto` would pick bf16


@pytest.mark.slow
@pytest.mark.parametrize("index, task", [(0, "sr_x2"), (1, "sr_x3"), (2, "sr_x4"), (4, "denoise_s30")])
def test_official_tiling_reproduces_the_official_code_through_the_cli_on_a_native_bf16_cpu(
    tmp_path, weights, golden: dict, monkeypatch, capsys, index: int, task: str
) -> None:
    """`ipt restore --tiling official` without a precision flag is the exact path on every CPU kind: here one
    whose flags say native bf16 (where `auto` picks bf16 for the overlap tiling)."""
    import ipt.device
    from ipt.inference import quantize

    monkeypatch.setattr(ipt.device, "cpu_flags", lambda: NATIVE_BF16)
    model = load_model(weights)
    library = Restorer(model, task, tiling="official")  # precision "auto", the CLI's default
    assert library.precision_used == "fp32" and library.notes == []
    official = golden["outputs_chop"][index]
    ours = library.restore_tensor(golden["input_chop"])
    assert (ours - official).abs().max() <= 1e-3  # the official code's floats, on its own (float) input
    near_half = ((official.clamp(0, 255) - official.clamp(0, 255).floor() - 0.5).abs() < 1e-3) & (official > 0)
    assert torch.equal(quantize(ours)[~near_half], quantize(official)[~near_half])  # its uint8 output

    img = golden["input_chop"][0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    Image.fromarray(img).save(tmp_path / "x.png")
    argv = ["restore", str(tmp_path / "x.png"), str(tmp_path / "y.png"), "--weights", str(weights), "--task", task]
    assert main([*argv, "--tiling", "official", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "(official tiling, fp32)" in err and "warning" not in err
    expected = Restorer(model, task, tiling="official", precision="fp32")(img)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "y.png")), expected)


def test_bf16_is_labelled_and_never_taken_for_the_official_output(tmp_path, weights, golden, monkeypatch, capsys):
    import ipt.device

    monkeypatch.setattr(ipt.device, "cpu_flags", lambda: NATIVE_BF16)
    img = golden["input_chop"][0, :, :48, :48].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    Image.fromarray(img).save(tmp_path / "x.png")
    argv = ["restore", str(tmp_path / "x.png"), str(tmp_path / "y.png"), "--weights", str(weights), "--task", "sr_x2"]
    assert main([*argv, "--quiet"]) == 0  # overlap tiling, auto: bf16 on this CPU, and the line says why
    err = capsys.readouterr().err
    assert "(overlap tiling, bf16 (auto: this CPU has native bf16 (amx_bf16,avx512_bf16); --precision fp32 " in err
    assert main([*argv, "--quiet", "--tiling", "official", "--precision", "bf16"]) == 0  # asked for: a warning
    err = capsys.readouterr().err
    assert "warning: bf16 with the official tiling: the output is not the official code's" in err
    assert "(official tiling, bf16)" in err


def test_a_folder_run_records_how_its_outputs_were_made(tmp_path, weights, images, capsys) -> None:
    import json

    from ipt.fileio import file_sha256

    out = tmp_path / "out"
    argv = ["restore", str(images), str(out), "--weights", str(weights), "--task", "denoise_s30", "--quiet"]
    assert main([*argv, "--precision", "fp32"]) == 1  # broken.png
    record = json.loads((out / "ipt-restore.json").read_text())
    assert record["command"] == "ipt restore" and record["weights_sha256"] == file_sha256(weights)
    assert record["precision"] == "fp32" and record["precision_asked"] == "fp32" and record["tiling"] == "overlap"
    assert record["device"] == "cpu" and {"cpu_model", "cpu_bf16", "torch"} <= set(record["hardware"])
    assert sorted(record["outputs"]) == ["a.png", "alpha.png", "deep16.png", "gray.png", "sub/small.png"]
    assert [f["input"].endswith("broken.png") for f in record["failed"]] == [True]
    assert "(how: " in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "ipt-restore.json").write_text('{"my": "notes"}')
    assert main(["restore", str(images), str(tmp_path / "mine"), *argv[3:]]) == 2  # a file it did not write
    assert "was not written by `ipt restore`" in capsys.readouterr().err
    assert (tmp_path / "mine" / "ipt-restore.json").read_text() == '{"my": "notes"}'
    assert not list((tmp_path / "mine").glob("*.png"))
