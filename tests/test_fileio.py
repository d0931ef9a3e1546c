"""Atomic writes leave files with the umask's mode (mkstemp's 0600 used to survive the rename), and whole files."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from ipt.checkpoint import save_checkpoint
from ipt.config import ModelSpec
from ipt.data.images import write_png
from ipt.fileio import atomic_write, write_json
from ipt.model import build_ipt


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_outputs_get_the_umask_mode_not_0600(tmp_path, umask_022) -> None:
    spec = ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=2)
    written = [
        write_png(tmp_path / "a.png", np.zeros((4, 5, 3), np.uint8)),
        save_checkpoint(tmp_path / "m.pt", build_ipt(spec)),
        write_json(tmp_path / "r.json", {"x": 1}),
    ]
    assert [oct(stat.S_IMODE(p.stat().st_mode)) for p in written] == ["0o644"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "m.pt", "r.json"]  # no temporaries left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path) -> None:
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    def boom(f) -> None:
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]
