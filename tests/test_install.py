"""What a core install (`pip install ipt-pipeline`: torch, numpy, pillow, pyyaml, tqdm) can do: `ipt restore`,
`ipt benchmark` and the Python API run with the pipeline's packages absent (they are blocked here, in a fresh
process, the way a core-only environment lacks them); the pipeline and serving are extras."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT, with_root_on_path

PIPELINE = ("mlflow", "prefect", "dvc", "webdataset", "s3fs", "dask", "distributed", "boto3", "botocore", "skimage")
BLOCKER = f"""
import sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {PIPELINE!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, Absent())
"""


def test_the_core_dependencies_are_only_what_restore_and_benchmark_need() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {d.split("=")[0].split(">")[0].split("<")[0].split("[")[0].strip().lower() for d in project["dependencies"]}
    assert core == {"torch", "numpy", "pillow", "pyyaml", "tqdm"}
    assert {"pipeline", "serve", "dev"} <= set(project["optional-dependencies"])


@pytest.mark.slow
def test_restore_benchmark_and_the_python_api_run_without_the_pipeline_packages(tmp_path: Path) -> None:
    script = tmp_path / "core.py"
    script.write_text(
        BLOCKER
        + f"""
import numpy as np, torch
from PIL import Image
import ipt
from ipt.cli import main
torch.manual_seed(0)
model = ipt.build_ipt(ipt.ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=2, patch_size=12))
ipt.save_checkpoint("m.pt", model)
Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save("x.png")
import os
os.makedirs("bench/Set5/HR")
Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save("bench/Set5/HR/a.png")
assert main(["restore", "x.png", "y.png", "--weights", "m.pt", "--precision", "fp32", "--quiet"]) == 0
assert main(["benchmark", "--task", "sr_x2", "--model", "m.pt", "--root", "bench", "--quiet"]) == 0
restorer = ipt.open_restorer("m.pt", precision="fp32")
ipt.restore_file("x.png", "z.png", restorer)
assert open("z.png", "rb").read() == open("y.png", "rb").read()
assert not [m for m in sys.modules if m.split(".")[0] in {PIPELINE!r}]
print("core ok")
"""
    )
    env = with_root_on_path(dict(os.environ)) | {"IPT_PARAMS": "none", "IPT_TRACKING": "on"}
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "core ok" in r.stdout, r.stdout + r.stderr[-3000:]
    assert "note: MLflow is not installed: no ipt-benchmark run is logged" in r.stderr


def test_torch_is_a_range_from_the_oldest_torch_make_tests_to_the_newest_it_tests() -> None:
    import re

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    spec = next(d for d in project["dependencies"] if re.match(r"torch\b", d))
    low, high = re.fullmatch(r"torch>=([\d.]+),<([\d.]+)", spec.replace(" ", "")).groups()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^OLDEST_TORCH \?= {re.escape(low)}$", makefile, re.M), "make test-oldest-torch tests the floor"
    newest = re.search(r"^NEWEST_TORCH \?= ([\d.]+)$", makefile, re.M).group(1)
    pinned = re.search(r"install --quiet torch==([\d.]+)$", makefile, re.M).group(1)

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split("."))

    assert key(low) <= key(pinned) <= key(newest), f"make venv's torch {pinned} is outside {low}..{newest}, the tried"
    assert key(newest) < key(high), f"make test-newest-torch's torch {newest} is outside {spec}"
    # The ceiling is measured: it stops at the first minor release after the newest one make test-newest-torch tries.
    major, minor = key(newest)[:2]
    assert key(high) == (major, minor + 1), f"{spec}: the ceiling is <{major}.{minor + 1}, {newest} the top tried"
