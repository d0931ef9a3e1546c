"""`ipt launch`: one process for one worker, torchrun (standalone or c10d across nodes) otherwise; --dry-run."""

from __future__ import annotations

import shlex
import sys

import pytest

from ipt.cli import main


def _dry(argv: list[str], capsys) -> list[str]:
    assert main(["launch", "--dry-run", *argv]) == 0
    return shlex.split(capsys.readouterr().out.strip())


def test_single_process_runs_the_stage_directly(capsys) -> None:
    cmd = _dry(["pretrain", "--", "--steps", "3"], capsys)
    assert cmd == [sys.executable, "-m", "ipt.cli", "pretrain", "--steps", "3"]


def test_one_node_many_gpus_is_standalone_torchrun(capsys) -> None:
    cmd = _dry(["--nproc-per-node", "8", "finetune", "--", "--task", "sr_x2"], capsys)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert {"--nnodes=1", "--nproc-per-node=8", "--standalone"} <= set(cmd)
    assert cmd[-5:] == ["-m", "ipt.cli", "finetune", "--task", "sr_x2"]


def test_paper_scale_params_give_the_multi_node_command(tmp_path, capsys) -> None:
    params = tmp_path / "paper.yaml"
    params.write_text(
        "launch:\n  nproc_per_node: 8\n  nnodes: 4\n  rdzv_endpoint: node0.cluster:29400\n  rdzv_id: ipt-paper\n"
    )
    cmd = _dry(["--params", str(params), "pretrain", "--", "--log-every", "100"], capsys)
    expected = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=4", "--nproc-per-node=8", "--rdzv-backend=c10d",
        "--rdzv-endpoint=node0.cluster:29400", "--rdzv-id=ipt-paper", "--max-restarts=0",
        "-m", "ipt.cli", "pretrain", "--params", str(params), "--log-every", "100",
    ]  # fmt: skip
    assert cmd == expected


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--nnodes", "2"], "needs rdzv_endpoint"),
        (["--nnodes", "2", "--rdzv-endpoint", "node0"], "must be host:port"),
        (["--nproc-per-node", "0"], "must be >= 1"),
    ],
)
def test_bad_launch_settings_are_one_line_errors(flags, message, capsys) -> None:
    assert main(["launch", "--dry-run", *flags, "pretrain"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["pretrain", "--dry-run", "--nnodes", "2", "--rdzv-endpoint", "127.0.0.1:29400", "--", "--steps", "3"],
        ["--nnodes=2", "pretrain", "--rdzv-endpoint=127.0.0.1:29400", "--dry-run", "--steps", "3"],
        ["--dry-run", "--nnodes", "2", "--rdzv-endpoint", "127.0.0.1:29400", "pretrain", "--", "--steps", "3"],
    ],
)
def test_launch_flags_may_follow_the_stage(argv, capsys) -> None:
    """README's `ipt launch pretrain --dry-run`: launch's flags after the stage are launch's, not the stage's."""
    assert main(["launch", *argv]) == 0
    cmd = shlex.split(capsys.readouterr().out.strip())
    assert {"--nnodes=2", "--rdzv-endpoint=127.0.0.1:29400"} <= set(cmd)
    assert cmd[-5:] == ["-m", "ipt.cli", "pretrain", "--steps", "3"]


def test_flags_after_the_double_dash_stay_with_the_stage(capsys) -> None:
    assert main(["launch", "pretrain", "--dry-run", "--", "--nnodes", "2"]) == 0
    assert shlex.split(capsys.readouterr().out.strip()) == [
        sys.executable,
        "-m",
        "ipt.cli",
        "pretrain",
        "--nnodes",
        "2",
    ]


def test_user_errors_stop_launch_before_torchrun_starts_any_rank(tmp_path, capsys, monkeypatch) -> None:
    """Two ranks would print the same error twice, then torchrun its failure report: launch checks once first."""
    from helpers_pairs import make_pair_root
    from ipt import launch
    from ipt.train.state import checkpoint_path

    def no_exec(*argv):
        raise AssertionError(f"torchrun was started: {argv}")

    monkeypatch.setattr(launch.os, "execv", no_exec)
    stage = ["--params", "none", "--tasks", "sr_x2", "--model-size", "tiny", "--steps", "2"]
    missing = ["launch", "--nproc-per-node", "2", "pretrain", "--", *stage, "--shards", str(tmp_path / "none")]
    assert main([*missing, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"{tmp_path / 'none' / 'sr_x2'}: no pair shards" in err

    pairs = make_pair_root(tmp_path / "pairs", tasks=("sr_x2",))
    run = tmp_path / "run"
    checkpoint_path(run, 4).parent.mkdir(parents=True)
    checkpoint_path(run, 4).write_bytes(b"")
    argv = ["launch", "--nproc-per-node", "2", "pretrain", "--", *stage, "--shards", str(pairs), "--out", str(run)]
    assert main(argv) == 2
    assert "holds checkpoints (step-00000004.pt); pass resume" in capsys.readouterr().err
    with pytest.raises(AssertionError, match="torchrun was started"):  # a good configuration does start it
        main([*argv, "--resume"])
