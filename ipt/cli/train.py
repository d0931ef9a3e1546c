"""``ipt pretrain`` and ``ipt finetune`` (also under ``torchrun ... -m ipt.cli pretrain ...``).

Flags left out fall back to the config dataclasses' defaults (ipt/train/config.py), so the defaults live once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipt.device import TRAIN_PRECISIONS


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        return [kind(x) for x in text.split(",") if x.strip()]

    return parse


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shards", help="root holding one pair-shard folder per task (data/pairs)")
    p.add_argument("--out", help="run folder: checkpoints/, model.pt, metrics.jsonl/.csv ('{task}' is replaced)")
    p.add_argument("--params", default=None, help="params file (default ./params.yaml; 'none' ignores it)")
    p.add_argument(
        "--steps",
        type=int,
        help="optimizer updates in total (a resumed run continues up to it); pretrain 0 writes the seeded init",
    )
    p.add_argument("--batch-size", type=int, help="global batch, split evenly over the ranks")
    p.add_argument("--lr", type=float, help="Adam learning rate (pretrain 5e-5, finetune 2e-5)")
    p.add_argument(
        "--schedule",
        choices=("step", "cosine"),
        help="lr schedule: step (milestones x gamma; default step, the paper's) or cosine (to --min-lr at --steps)",
    )
    p.add_argument("--milestones", type=_csv(int), help="comma-separated steps where lr *= gamma ('' = none)")
    p.add_argument("--gamma", type=float, help="step-decay factor (0.5)")
    p.add_argument("--warmup-steps", type=int, help="linear lr warm-up over the first N updates (0 = none)")
    p.add_argument("--min-lr", type=float, help="the rate cosine ends at (0)")
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random flips and 90-degree rotations of each training pair, seeded (default on)",
    )
    p.add_argument("--ema-decay", type=float, help="EMA of the weights, validated and exported (0 = off)")
    p.add_argument("--val-every", type=int, help="validate every N steps and at the end (left out: never)")
    p.add_argument("--val-dir", help="pair-shard root to validate on (else a held-out split of --shards)")
    p.add_argument("--val-fraction", type=float, help="share of source images held out when no --val-dir (0.1)")
    p.add_argument("--val-samples", type=int, help="validation pairs per task (32)")
    p.add_argument(
        "--data-fraction",
        type=float,
        help="share of the source images trained on, a seeded nested draw per image (1 = all)",
    )
    p.add_argument("--export", choices=("last", "best"), help="weights model.pt gets: the last or best validated")
    p.add_argument("--grad-clip", type=float, help="max global gradient norm (0 = off)")
    p.add_argument("--contrastive-weight", type=float, help="lambda of the patch contrastive loss (0.1 / 0)")
    p.add_argument("--temperature", type=float, help="contrastive temperature (0.07)")
    p.add_argument("--pixel-loss", choices=("l1", "charbonnier"), help="reconstruction loss (l1, the paper's)")
    p.add_argument("--charbonnier-eps", type=float, help="eps of the Charbonnier loss in grey levels (1.0)")
    p.add_argument("--seed", type=int, help="seeds the init, the task draws and every data stream")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (one is always written at the end)")
    p.add_argument("--keep-checkpoints", type=int, help="step checkpoints kept (newest)")
    p.add_argument("--workers", dest="num_workers", type=int, help="DataLoader workers per rank (0: in-process)")
    p.add_argument("--lanes", type=int, help="independent data streams per task (0: one per global batch row)")
    p.add_argument("--shuffle-buffer", type=int, help="samples in each stream's shuffle buffer")
    p.add_argument("--stream-segment", type=int, help="steps after which every stream restarts from a fresh seed")
    p.add_argument(
        "--precision",
        choices=TRAIN_PRECISIONS,
        help="auto: bf16 autocast where the device runs it natively (CUDA, AMX / AVX512-BF16 CPUs), else fp32",
    )
    p.add_argument("--device", help="auto, cpu, cuda")
    p.add_argument("--resume", action="store_true", default=None, help="continue from the run's latest checkpoint")
    p.add_argument("--mlflow-run-id", default=None, help="log per-step metrics to this existing MLflow run")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--log-every", type=int, default=10, help="print a progress line every N steps (0: never)")


def add_pretrain(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("pretrain", help="multi-task IPT pre-training on pair shards (DDP-ready)")
    _common(p)
    p.add_argument("--tasks", type=_csv(str), help="comma-separated tasks (default: the paper's six)")
    p.add_argument("--task-weights", type=_csv(float), help="comma-separated draw weights, one per task (uniform)")
    p.add_argument("--model-size", choices=("paper", "small", "tiny"), default=None, help="named model size")
    p.add_argument("--model-config", default=None, help="YAML/JSON mapping of ModelSpec keys (or a file with `model:`)")
    for flag in ("n-feats", "num-layers", "num-heads", "patch-size"):
        p.add_argument(f"--{flag}", type=int, default=None, help="override of the model size")
    p.add_argument(
        "--image-residual",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="output = baseline (input, bicubic for SR) + learned correction; not the released layout",
    )
    p.set_defaults(func=cmd_pretrain, required_from_params=("shards", "out"))
    return p


def add_finetune(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    f = sub.add_parser("finetune", help="fine-tune a pretrained IPT on one task; writes a single-task checkpoint")
    _common(f)
    f.add_argument(
        "--init",
        help="project checkpoint, run folder (its model.pt), official IPT_*.pt, or models:/ipt-pretrained@champion",
    )
    f.add_argument("--task", required=True, help="the task to fine-tune (sr_x2, denoise_s30, derain, ...)")
    f.add_argument("--init-num-heads", type=int, help="attention heads of an official-layout init (12)")
    f.set_defaults(func=cmd_finetune, required_from_params=("shards", "out", "init"))
    return f


TRAIN_KEYS = (  # the flags of both stages, also the keys their params.yaml sections may set
    "shards out steps batch_size lr schedule milestones gamma warmup_steps min_lr grad_clip contrastive_weight "
    "temperature pixel_loss charbonnier_eps seed checkpoint_every keep_checkpoints num_workers lanes shuffle_buffer "
    "stream_segment augment ema_decay val_every val_dir val_fraction val_samples data_fraction export precision"
    " device resume"
).split()


def _given(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _read_mapping(path: str) -> dict[str, Any]:
    import yaml

    from ipt.train.errors import TrainingError

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise TrainingError(f"{path}: cannot read model config ({str(e).splitlines()[0]})") from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict):
        raise TrainingError(f"{path}: model config must be a mapping of ModelSpec keys")
    return data


def _model_dict(args: argparse.Namespace) -> dict[str, Any]:
    from ipt.train.config import model_size

    model = model_size(args.model_size) if args.model_size else {}
    if args.model_config:
        model |= _read_mapping(args.model_config)
    return model | _given(args, ["n_feats", "num_layers", "num_heads", "patch_size", "image_residual"])


def _tracker(args: argparse.Namespace, stage: str) -> tuple[Any, bool]:
    """(tracker, owned) on rank 0: ``--mlflow-run-id`` / $IPT_MLFLOW_RUN_ID, else a new run in ``ipt-<stage>``."""
    if int(os.environ.get("RANK", "0")) != 0:
        return None, False
    from ipt.tracking import stage_run

    task = getattr(args, "task", None)
    tags = {"ipt.stage": stage} | ({"ipt.task": task} if task else {})
    name = f"{stage} {task}" if task else stage
    return stage_run(f"ipt-{stage}", name, run_id=args.mlflow_run_id, tracking_uri=args.tracking_uri, tags=tags)


def _progress(every: int) -> Callable[[dict[str, Any]], None] | None:
    if every <= 0:
        return None

    def show(row: dict[str, Any]) -> None:
        if row.get("validation"):
            print(
                f"step {row['step']} validation: Y-PSNR {row['psnr_y']:.3f} dB, SSIM {row['ssim_y']:.4f} "
                f"(best at step {row['best_step']}; {row['seconds']:.1f} s)",
                file=sys.stderr,
            )
        elif row["step"] % every == 0:
            print(
                f"step {row['step']} {row['task']}: loss {row['loss']:.4f} (l1 {row['l1']:.4f}, "
                f"con {row['contrastive']:.4f}) lr {row['lr']:.2e} {row['samples_per_s']:.1f} samples/s",
                file=sys.stderr,
            )

    return show


def _dvc_tags(cfg: Any) -> dict[str, str]:
    """``ipt.dvc.<task>``: DVC's version of each task's shard folder where ./dvc.lock (the project this command
    runs in) records it as a stage output."""
    from ipt.provenance import dvc_versions

    found = dvc_versions({t: Path(cfg.shards) / t for t in cfg.train_tasks})
    return {f"ipt.dvc.{t}": v for t, v in found.items()}


def _run(stage: str, args: argparse.Namespace, data: dict[str, Any]) -> int:
    from ipt.tracking import run_scope, write_run_file
    from ipt.train import loop
    from ipt.train.config import config_for

    cfg = config_for(stage, data)
    tracker, owned = _tracker(args, stage)
    fn = loop.pretrain if stage == "pretrain" else loop.finetune
    with run_scope(tracker, owned):  # FINISHED, FAILED on an error, KILLED on an interrupt
        result = fn(cfg, tracker=tracker, progress=_progress(args.log_every), tags=_dvc_tags(cfg))
        if tracker is not None:
            write_run_file(result["run_dir"], tracker)
    if int(os.environ.get("RANK", "0")) == 0:
        last = result["last"]
        done = f"loss {last['loss']:.4f} at step {last['step']}" if last else "nothing left to train"
        print(f"{stage}: {done} -> {result['model']}", file=sys.stderr)
        print(json.dumps({k: v for k, v in result.items() if k != "last"} | {"last": last}))
    return 0


def stage_data(stage: str, args: argparse.Namespace) -> dict[str, Any]:
    """The config mapping of ``stage`` from its parsed flags (params.yaml defaults included); finetune's ``out``
    gets its ``{task}`` filled in. Raises TrainingError for an unreadable model config."""
    if stage == "pretrain":
        return _given(args, TRAIN_KEYS + ["tasks", "task_weights"]) | {"model": _model_dict(args)}
    args.out = args.out.format(task=args.task)
    data = _given(args, TRAIN_KEYS + ["init", "task", "init_num_heads"])
    from ipt.modeluri import MODEL_URI_PREFIX, resolve_model_uri

    if str(data.get("init", "")).startswith(MODEL_URI_PREFIX):  # a registered version: its model.pt, downloaded once
        data["init"] = str(resolve_model_uri(data["init"], args.tracking_uri))
    return data


def preflight(stage: str, args: argparse.Namespace) -> None:
    """What every rank would check first (config, shards, run folder), once, for `ipt launch` (raises TrainingError)."""
    from ipt.train import loop
    from ipt.train.config import config_for

    loop.preflight(config_for(stage, stage_data(stage, args)))


def cmd_pretrain(args: argparse.Namespace) -> int:
    return _run("pretrain", args, stage_data("pretrain", args))


def cmd_finetune(args: argparse.Namespace) -> int:
    return _run("finetune", args, stage_data("finetune", args))


PARSERS = {"pretrain": add_pretrain, "finetune": add_finetune}
_KEYS = (*(k for k in TRAIN_KEYS if k != "resume"), "patch_size")  # --resume stays a flag
PARAMS_KEYS = {
    "pretrain": (*_KEYS, "tasks", "task_weights", "model_size", "model_config", "n_feats", "num_layers", "num_heads")
    + ("image_residual",),
    "finetune": (*_KEYS, "init", "init_num_heads"),
}
