"""Registered versions are MLflow Models: `mlflow models serve` answers POST /invocations with the PNG `ipt restore
--precision fp32` writes, `mlflow.pyfunc.load_model(...).predict` does the same in a fresh process, and
`ipt-pretrained` is one too (fine-tuning starts from `models:/ipt-pretrained@champion`)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BENCHMARK_ROOT, free_port, with_root_on_path
from ipt.checkpoint import save_checkpoint
from ipt.cli import main
from ipt.config import ModelSpec
from ipt.model import build_ipt

pytest.importorskip("mlflow")
BIN = Path(sys.executable).parent


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> str:
    """A sqlite store holding ipt-sr_x2 v1 (champion): a tiny random x2 model."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    torch.manual_seed(0)
    model = build_ipt(ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=2, patch_size=12))
    ckpt = save_checkpoint(tmp_path / "m.pt", model, meta={"task": "sr_x2"})
    assert main(["register", "--task", "sr_x2", "--checkpoint", str(ckpt)]) == 0
    return uri


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """Set5's babyx2.png (the issue's image), or a stand-in where the benchmarks are absent."""
    baby = BENCHMARK_ROOT / "Set5" / "LR_bicubic" / "X2" / "babyx2.png"
    if baby.is_file():
        return baby
    path = tmp_path / "babyx2.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(path)
    return path


def _restored(image: Path, tmp_path: Path, weights: str = "models:/ipt-sr_x2@champion") -> bytes:
    out = tmp_path / "restored.png"
    assert main(["restore", str(image), str(out), "--weights", weights, "--precision", "fp32", "--quiet"]) == 0
    return out.read_bytes()


def _env(uri: str) -> dict[str, str]:
    env = with_root_on_path(dict(os.environ)) | {"MLFLOW_TRACKING_URI": uri, "IPT_PARAMS": "none"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # mlflow execs `uvicorn` from PATH
    return env


def _post(url: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_png_ipt_restore_writes(store: str, image: Path, tmp_path: Path) -> None:
    expected = _restored(image, tmp_path)
    port = free_port()
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/ipt-sr_x2@champion", "--env-manager", "local"]
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*cmd, "--host", "127.0.0.1", "-p", str(port)], env=_env(store), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.5)
        b64 = base64.b64encode(image.read_bytes()).decode()
        url = f"http://127.0.0.1:{port}/invocations"
        status, body = _post(url, {"dataframe_split": {"columns": ["image"], "data": [[b64], [b64]]}})
        assert status == 200, body
        assert [base64.b64decode(p) for p in body["predictions"]] == [expected, expected]
        status, body = _post(url, {"dataframe_split": {"columns": ["image"], "data": [["aGVsbG8="]]}})
        assert 400 <= status < 500 and body["message"].splitlines()[-1].endswith(
            "row 0: cannot decode image (not a recognised image format)"
        ), body
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.slow
def test_pyfunc_load_model_predicts_in_a_fresh_process(store: str, image: Path, tmp_path: Path) -> None:
    expected = _restored(image, tmp_path)
    code = (
        "import base64, sys, mlflow, pandas as pd\n"
        "m = mlflow.pyfunc.load_model('models:/ipt-sr_x2@champion')\n"
        "print(m.metadata.signature.inputs.to_dict(), file=sys.stderr)\n"
        "raw = open(sys.argv[1], 'rb').read()\n"
        "df = pd.DataFrame({'image': [base64.b64encode(raw).decode(), raw, bytearray(raw), base64.b64encode(raw)]})\n"
        "sys.stdout.write(' '.join(m.predict(df)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(image)], env=_env(store), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [base64.b64decode(p) for p in r.stdout.split()] == [expected] * 4  # base64 text, bytes, base64 as bytes
    assert "{'type': 'binary', 'name': 'image', 'required': True}" in r.stderr


def test_pyfunc_rows_of_bytes_that_are_no_image_are_refused_naming_the_row(store: str, image: Path) -> None:
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    m = mlflow.pyfunc.load_model("models:/ipt-sr_x2@champion")
    raw = image.read_bytes()
    for bad, why in (
        (raw[:40], "row 1: cannot decode image"),  # a truncated PNG file
        (b"", "row 1: neither an image file's bytes nor a base64-encoded image file"),
        ("not base64!", "row 1: neither an image file's bytes nor a base64-encoded image file"),
    ):
        with pytest.raises(MlflowException, match=why):
            m.predict(pd.DataFrame({"image": [raw, bad]}))


@pytest.mark.slow
def test_the_registered_files_are_an_mlflow_model_with_its_own_files_beside_it(store: str, tmp_path: Path) -> None:
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    version = MlflowClient().get_model_version_by_alias("ipt-sr_x2", "champion")
    folder = Path(download_artifacts(artifact_uri=version.source, dst_path=str(tmp_path / "v")))
    model = Model.load(str(folder))
    assert model.flavors["python_function"]["loader_module"] == "ipt.serving"
    assert model.signature is not None and (folder / "input_example.json").is_file()
    assert not list(folder.rglob("*.pkl"))  # no pickled object: the code is the installed ipt package
    reqs = (folder / "requirements.txt").read_text().split()
    assert any(r.startswith("torch==") for r in reqs) and all("==" in r for r in reqs if not r.startswith("#"))
    assert {"official.pt", "head.pt", "tail.pt"} <= {p.name for p in folder.iterdir()}
    assert version.run_id and json.loads(version.tags["ipt.files_sha256"])


@pytest.mark.slow
def test_the_pretrained_body_is_registered_and_fine_tuning_starts_from_it(tmp_path: Path, monkeypatch) -> None:
    from helpers_pairs import TINY_MODEL, make_pair_root

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    torch.manual_seed(0)
    spec = ModelSpec.for_tasks(["sr_x2", "denoise_s30"], **TINY_MODEL)
    body = save_checkpoint(tmp_path / "pre.pt", build_ipt(spec), meta={"tasks": ["sr_x2", "denoise_s30"]})
    assert main(["register", "--checkpoint", str(body)]) == 0  # ipt-pretrained, champion (no score: the newest)
    pairs = make_pair_root(tmp_path / "pairs", tasks=("denoise_s30",), samples=4, shards=1)
    argv = ["finetune", "--task", "denoise_s30", "--init", "models:/ipt-pretrained@champion", "--shards", str(pairs)]
    argv += ["--out", str(tmp_path / "ft"), "--steps", "1", "--batch-size", "2", "--shuffle-buffer", "2"]
    assert main([*argv, "--log-every", "0", "--precision", "fp32"]) == 0
    assert (tmp_path / "ft" / "model.pt").is_file()
    body2 = save_checkpoint(tmp_path / "pre2.pt", build_ipt(spec), meta={"tasks": ["sr_x2", "denoise_s30"]})
    assert main(["register", "--checkpoint", str(body2)]) == 0
    from mlflow.tracking import MlflowClient

    assert str(MlflowClient().get_model_version_by_alias("ipt-pretrained", "champion").version) == "2"
    import io

    import mlflow
    import pandas as pd

    m = mlflow.pyfunc.load_model("models:/ipt-pretrained@champion")  # two tasks: the request names one
    Image.fromarray(np.full((16, 16, 3), 100, np.uint8)).save(tmp_path / "x.png")
    df = pd.DataFrame({"image": [base64.b64encode((tmp_path / "x.png").read_bytes()).decode()]})
    out = m.predict(df, params={"task": "sr_x2"})
    assert Image.open(io.BytesIO(base64.b64decode(out[0]))).size == (32, 32)
