"""Each command's config dataclass is the one home of its defaults: its flags default to None, the params section
fills what the command line leaves out, and the dataclass supplies the rest."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from ipt.cli.params import config_from
from ipt.cli.parsing import build_parser, parse_args
from ipt.config import DEFAULT_SEED
from ipt.data.clean import ShardConfig
from ipt.data.pairs import CorruptConfig
from ipt.launch import LaunchConfig
from ipt.refine.config import RefineConfig
from ipt.scoring import BenchmarkConfig
from ipt.train.config import FinetuneConfig, PretrainConfig

# "default 48", "default 'official'", "default fp32", "default on"; "default: the project seed" is prose, not a value
HELP_DEFAULT = r"\bdefault (?:'([^']*)'|([-\w./]+))"
SAID = {"on": "True", "off": "False"}
CONFIGS = {
    "shard": ShardConfig,
    "corrupt": CorruptConfig,
    "launch": LaunchConfig,
    "benchmark": BenchmarkConfig,
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
    "refine": RefineConfig,
}


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_flags_that_set_a_config_field_leave_its_default_to_the_dataclass(command: str) -> None:
    _, sub = build_parser(command)
    fields = {f.name for f in dataclasses.fields(CONFIGS[command])}
    flagged = [a for a in sub._actions if a.dest in fields]
    assert flagged, f"no flag of '{command}' sets a field of {CONFIGS[command].__name__}"
    with_defaults = {a.dest: a.default for a in flagged if a.default is not None and a.default is not False}
    assert not with_defaults, f"'{command}' flags default what {CONFIGS[command].__name__} defaults: {with_defaults}"


def test_params_section_then_dataclass_defaults_then_flags(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("seed: 7\nshard:\n  source: imgs\n  out: shards\n  crops: 5\n  png_level: 3\n")
    args = parse_args(["shard", "--params", str(params)])
    cfg = config_from(ShardConfig, args, code="x")
    assert (cfg.source, cfg.out, cfg.crops, cfg.png_level, cfg.seed, cfg.code) == ("imgs", "shards", 5, 3, 7, "x")
    assert (cfg.patch_size, cfg.images_per_shard, cfg.max_scale) == (48, 256, 4)  # ShardConfig's own defaults
    cfg = config_from(ShardConfig, parse_args(["shard", "--params", str(params), "--crops", "9", "--seed", "1"]))
    assert (cfg.crops, cfg.seed, cfg.png_level) == (9, 1, 3)


def test_no_params_file_gives_the_dataclass_defaults(tmp_path: Path) -> None:
    assert config_from(LaunchConfig, parse_args(["launch", "pretrain", "--params", "none"])) == LaunchConfig()
    args = parse_args(["benchmark", "--params", "none", "--task", "sr_x2", "--model", "bicubic", "--root", "r"])
    cfg = BenchmarkConfig.from_values(vars(args))
    assert (cfg.tiling, cfg.precision, cfg.batch, cfg.seed) == ("official", "fp32", 64, DEFAULT_SEED)


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_a_default_a_flag_s_help_names_is_the_dataclass_default(command: str) -> None:
    """Help texts may name a default ("default 48", "default 'official'"); it must be the dataclass's."""
    _, sub = build_parser(command)
    fields = dataclasses.fields(CONFIGS[command])
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    named = {
        a.dest: m.group(1) if m.group(1) is not None else SAID.get(m.group(2), m.group(2))
        for a in sub._actions
        if a.dest in defaults and (m := re.search(HELP_DEFAULT, a.help or ""))
    }
    wrong = {dest: (said, defaults[dest]) for dest, said in named.items() if said != str(defaults[dest])}
    assert not wrong, f"'{command}' help names defaults the dataclass does not have (said, actual): {wrong}"
