"""``ipt shard``: clean crops of a source into WebDataset shards (DVC stage ``shard``)."""

from __future__ import annotations

import argparse

from ipt.cli.data import FANOUT_KEYS, add_fanout_flags, report, run_plan
from ipt.cli.params import config_from
from ipt.codedeps import stage_digest


def cmd_shard(args: argparse.Namespace) -> int:
    from ipt.data.clean import ShardConfig, plan_shard

    cfg = config_from(ShardConfig, args, code=stage_digest("shard"))
    manifest = run_plan(args, plan_shard(cfg), "shard")
    report("shard", cfg.out, manifest, args.quiet)
    return 0


def add_shard(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("shard", help="cut clean crops of a source into WebDataset shards (DVC stage `shard`)")
    p.add_argument("--source", help="image folder, ILSVRC2012 train tarball, s3:// URL, or 'skimage'")
    p.add_argument("--out", help="output folder (local or s3://)")
    p.add_argument("--patch-size", type=int, help="LQ patch size of training (crop = patch x max scale; default 48)")
    p.add_argument("--max-scale", type=int, help="largest SR scale any task will need (default 4)")
    p.add_argument("--crops", type=int, help="random crops per image (default 2)")
    p.add_argument("--images-per-shard", type=int, help="default 256")
    p.add_argument("--png-level", type=int, help="zlib level of the stored PNGs (default 0: stored, fastest)")
    p.add_argument("--seed", type=int, help="default: the project seed")
    add_fanout_flags(p)
    p.set_defaults(func=cmd_shard, required_from_params=("source", "out"))
    return p


PARSERS = {"shard": add_shard}
PARAMS_KEYS = {"shard": ("source", "out", "max_scale", "crops", "images_per_shard", "png_level", *FANOUT_KEYS)}
