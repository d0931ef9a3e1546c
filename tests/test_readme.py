"""The README's Python example runs as written (with a tiny model saved as IPT_sr2.pt and a photo.png)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from ipt.config import ModelSpec
from ipt.model import build_ipt


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path: Path, monkeypatch) -> None:
    text = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"In Python:\n\n```python\n(.*?)```", text, flags=re.S)
    torch.manual_seed(0)
    spec = ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=2, patch_size=12)
    torch.save(build_ipt(spec).state_dict(), tmp_path / "IPT_sr2.pt")  # the released files' layout: a state dict
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 37, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    source = code.replace(
        'open_restorer("IPT_sr2.pt", task="sr_x2",', 'open_restorer("IPT_sr2.pt", task="sr_x2", num_heads=2,'
    )
    assert source != code  # the tiny stand-in has 2 heads (the released files have 12, the default)
    exec(compile(source, "README.md", "exec"), {})
    assert Image.open("photo_x2.png").size == (74, 60)
