"""PTG-RM prior ablation on CPU: does a pretrained prior beat a random one behind a tiny fine-tuned IPT?

For derain (Rain100L), denoise_s50 (CBSD68) and sr_x2 (Set5, Set14): a tiny IPT is pretrained on the three tasks
and fine-tuned per task with the project's own CLIs on crops of ../shared/train; then PTG-RM is trained behind
the frozen base with each prior (same steps, batch, crops, seed) and everything is scored with `ipt benchmark`.
Every step is a subprocess of `python -m ipt.cli`, so the numbers are what a user's commands give. PTG-RM starts as
the identity on the base (`--zero-init`, the default of `ipt refine`); `--no-zero-init` gives the reference's init.

    python benchmarks/ptgrm_ablation.py --train ../shared/train --bench ../shared/benchmarks \\
        --work runs/ptgrm_ablation --out docs/BENCHMARKS.md

A finished stage is not rerun (delete its folder under --work to redo it); a refinement whose config.json differs
from this invocation's (steps, batch, crop, zero-init) is rerun and rescored. MLflow: one parent run in experiment
`ptgrm-ablation`, a child run per (task, prior) holding the refinement's per-step metrics and its benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import write_section  # noqa: E402

from ipt.config import DEFAULT_SEED  # noqa: E402

SECTION = "ptgrm_ablation"
DATASETS = {"derain": "Rain100L", "denoise_s50": "CBSD68", "sr_x2": "Set5,Set14"}
CORRUPT = {
    "derain": {
        "name": "rain_streaks",
        "density": 0.0027,
        "length": [15, 35],
        "angle": [-20, 20],
        "intensity": [0.3, 0.6],
        "width": 0.6,
    },
    "denoise_s50": {"name": "gaussian_noise", "sigma": 50},
    "sr_x2": {"name": "bicubic_down", "scale": 2},
}
PRIORS = ("mobilenet_v2_imagenet", "ipt-body", "random", "none")


def base_params(
    work: Path,
    *,
    train: Path,
    tasks: list[str],
    crops: int,
    model_size: str,
    pretrain_steps: int,
    finetune_steps: int,
    batch: int,
    lr: float,
    finetune_lr: float,
    milestones: list[int] | None = None,
) -> dict[str, Any]:
    """The params file of the base's data, pretraining and fine-tuning (image-residual IPT of ``model_size``)."""
    finetune: dict[str, Any] = {
        "shards": str(work / "pairs"),
        "init": str(work / "pretrain"),
        "out": str(work / "finetune" / "{task}"),
        "steps": finetune_steps,
        "batch_size": batch,
        "lr": finetune_lr,
    }
    if milestones:
        finetune["milestones"] = milestones
    return {
        "seed": DEFAULT_SEED,
        "patch_size": 48,
        "shard": {"source": str(train), "out": str(work / "clean"), "max_scale": 2, "crops": crops, "workers": 2},
        "corrupt": {
            "clean": str(work / "clean"),
            "out": str(work / "pairs" / "{task}"),
            "workers": 2,
            "tasks": {t: CORRUPT[t] for t in tasks},
        },
        "pretrain": {
            "shards": str(work / "pairs"),
            "out": str(work / "pretrain"),
            "model_size": model_size,
            "image_residual": True,
            "steps": pretrain_steps,
            "batch_size": batch,
            "lr": lr,
            "checkpoint_every": pretrain_steps,
        },
        "finetune": finetune | {"checkpoint_every": finetune_steps},
    }


def params(work: Path, a: argparse.Namespace) -> dict[str, Any]:
    return base_params(
        work,
        train=a.train,
        tasks=a.tasks.split(","),
        crops=a.crops,
        model_size="tiny",
        pretrain_steps=a.pretrain_steps,
        finetune_steps=a.finetune_steps,
        batch=a.batch,
        lr=2e-4,
        finetune_lr=2e-4,
    )


class Runner:
    def __init__(self, work: Path, threads: int) -> None:
        self.log = work / "log.txt"
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "IPT_TRACKING": "off"}
        self.calls = 0

    def ipt(self, args: list[str], *, tag: str, threads: int | None = None) -> tuple[float, str]:
        self.calls += 1
        t = time.perf_counter()
        env = self.env if threads is None else {**self.env, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run(
            [sys.executable, "-m", "ipt.cli", *args], env=env, capture_output=True, text=True, check=False
        )
        dt = time.perf_counter() - t
        with self.log.open("a") as f:
            f.write(f"$ ipt {' '.join(args)}   # {tag}, {dt:.1f} s, exit {proc.returncode}\n{proc.stderr[-4000:]}\n")
        if proc.returncode != 0:
            raise RuntimeError(f"ipt {' '.join(args[:3])} ... failed ({tag}):\n{proc.stderr[-2000:]}")
        return dt, proc.stdout


def make_base(
    a: argparse.Namespace, run: Runner, p: Path, *, jobs: int = 1, pretrain_threads: int | None = None
) -> dict[str, float]:
    """Data and the fine-tuned bases, each stage skipped when its output exists; ``jobs`` fine-tunes at a time (each
    with the runner's threads), the pretraining with ``pretrain_threads``."""
    work, pp, times = a.work, ["--params", str(p)], {}
    tasks = a.tasks.split(",")
    if not (work / "clean" / "manifest.json").is_file():
        times["shard"] = run.ipt(["shard", "--quiet", *pp], tag="data")[0]
    times["corrupt"] = sum(
        run.ipt(["corrupt", "--task", t, "--quiet", *pp], tag="data")[0]
        for t in tasks
        if not (work / "pairs" / t / "manifest.json").is_file()
    )
    if not (work / "pretrain" / "model.pt").is_file():
        times["pretrain"] = run.ipt(["pretrain", "--log-every", "0", *pp], tag="base", threads=pretrain_threads)[0]
    todo = [t for t in tasks if not (work / "finetune" / t / "model.pt").is_file()]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(lambda t: run.ipt(["finetune", "--task", t, "--log-every", "0", *pp], tag="base"), todo))
    times["finetune"] = time.perf_counter() - t0 if todo else 0.0
    return times


def bench(a: argparse.Namespace, run: Runner, task: str, model: str, out: Path, run_id: str | None) -> dict:
    if not out.is_file():
        args = ["benchmark", "--task", task, "--model", model, "--root", str(a.bench), "--datasets", DATASETS[task]]
        args += ["--tiling", "overlap", "--precision", "fp32", "--out", str(out), "--params", "none", "--quiet"]
        args += ["--timings"]  # summarize() reads each set's seconds_per_image
        args += ["--limit", str(a.limit)] if a.limit else []
        args += ["--mlflow-run-id", run_id, "--tracking-uri", a.tracking_uri] if run_id else []
        run.ipt(args, tag=f"bench {task} {out.stem}")
    return json.loads(out.read_text())


REFINE_KEYS = ("steps", "batch_size", "crop", "zero_init")  # a finished refinement with other values is redone


def _refine_wanted(a: argparse.Namespace) -> dict[str, Any]:
    return {"steps": a.steps, "batch_size": a.batch, "crop": a.crop, "zero_init": a.zero_init}


def _refine_done(out: Path, want: dict[str, Any]) -> bool:
    """The run folder holds a model trained with ``want`` (a config.json without ``zero_init`` predates the option,
    whose runs used the reference's random init)."""
    if not (out / "model.pt").is_file() or not (out / "config.json").is_file():
        return False
    cfg = json.loads((out / "config.json").read_text())
    return all(cfg.get(k, False if k == "zero_init" else None) == v for k, v in want.items())


def refine_one(a: argparse.Namespace, run: Runner, task: str, prior: str, parent: Any) -> dict:
    out = a.work / "refine" / f"{task}-{prior}"
    scored = a.work / "bench" / f"{task}-{prior}.json"
    child = None
    if parent is not None:
        from ipt.tracking import MlflowTracker

        child = MlflowTracker.start("ptgrm-ablation", f"{task} {prior}", a.tracking_uri, parent_run_id=parent.run_id)
        child.set_tags({"task": task, "prior": prior})
    run_id = child.run_id if child else None
    if not _refine_done(out, _refine_wanted(a)):
        scored.unlink(missing_ok=True)  # its score belongs to the model being replaced
        shutil.rmtree(out, ignore_errors=True)  # `ipt refine` never overwrites a finished run
        args = ["refine", "--task", task, "--base", str(a.work / "finetune" / task / "model.pt"), "--prior", prior]
        args += ["--shards", str(a.work / "pairs"), "--out", str(out), "--steps", str(a.steps)]
        args += ["--batch-size", str(a.batch), "--crop", str(a.crop), "--threads", str(a.threads), "--params", "none"]
        args += ["--zero-init" if a.zero_init else "--no-zero-init"]
        args += ["--log-every", "0"] + (["--mlflow-run-id", run_id, "--tracking-uri", a.tracking_uri] if run_id else [])
        run.ipt(args, tag=f"refine {task} {prior}")
    report = bench(a, run, task, str(out / "model.pt"), scored, run_id)
    ckpt_meta = _meta(out / "model.pt")
    if child is not None:
        child.finish()
    return {"task": task, "prior": prior, "report": report, **ckpt_meta}


def _meta(path: Path) -> dict:
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    return {"parameters": obj["meta"]["parameters"], "train_seconds": obj["meta"]["train_seconds"]}


def isolated_extra(a: argparse.Namespace, task: str, prior: str) -> float:
    """Median seconds of prior + PTG-RM alone (the base's output given) on the first image of the task's first set,
    in this process with ``a.threads`` threads: the refinement's own cost, free of the other job's contention."""
    import statistics

    import numpy as np
    import torch

    from ipt.data.testsets import load_benchmark
    from ipt.refine.checkpoint import load_refined

    torch.set_num_threads(a.threads)
    model = load_refined(a.work / "refine" / f"{task}-{prior}" / "model.pt")
    pair = load_benchmark(a.bench, DATASETS[task].split(",")[0], task, limit=1).pairs[0]
    lq = pair.lq if isinstance(pair.lq, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(pair.lq))
    lq = lq.permute(2, 0, 1)[None].float() if lq.dim() == 3 else lq.float()
    times = []
    with torch.inference_mode():
        base_out = model.base_output(lq)
        for _ in range(3):
            t = time.perf_counter()
            model.refine(base_out, lq)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def _merge_times(path: Path, new: dict[str, float], *, ran: int) -> dict[str, float]:
    """Wall times of the stages that ran in this invocation over those kept from earlier ones (a rerun that only
    rewrites the report keeps the times of the runs that made the numbers)."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    merged = {k: v for k, v in old.items() if k != "total"}
    merged |= {k: v for k, v in new.items() if v > 0 and (ran or k not in old)}
    merged["total"] = sum(merged.values())
    path.write_text(json.dumps(merged, indent=1) + "\n")
    return merged


# ------------------------------------------------------------------------------------------------ report


def summarize(base: dict[str, dict], rows: list[dict], extra: dict[tuple[str, str], float]) -> list[dict]:
    out = []
    for r in rows:
        b, rep = base[r["task"]], r["report"]
        for ds, m in rep["datasets"].items():
            bm = b["datasets"][ds]
            out.append(
                {
                    "task": r["task"],
                    "dataset": ds,
                    "images": m["images"],
                    "prior": r["prior"],
                    "psnr_before": bm["psnr_y"],
                    "psnr_after": m["psnr_y"],
                    "gain": m["psnr_y"] - bm["psnr_y"],
                    "params": r["parameters"]["refiner"],
                    "extra_s_per_image": m["seconds_per_image"] - bm["seconds_per_image"],
                    "refine_s_first_image": extra[(r["task"], r["prior"])],
                    "train_seconds": r["train_seconds"],
                }
            )
    return out


def verdict(table: list[dict]) -> tuple[str, dict[str, float]]:
    """Mean gain of each prior over the (task, dataset) rows, and the plain answer for pretrained vs random."""
    gains: dict[str, list[float]] = {}
    for t in table:
        gains.setdefault(t["prior"], []).append(t["gain"])
    mean = {k: sum(v) / len(v) for k, v in gains.items()}
    if "mobilenet_v2_imagenet" not in mean or "random" not in mean:
        return "not measured (both the pretrained backbone and the random control are needed)", mean
    diff = mean["mobilenet_v2_imagenet"] - mean["random"]
    pairs = {(t["task"], t["dataset"]): {} for t in table}
    for t in table:
        pairs[(t["task"], t["dataset"])][t["prior"]] = t["psnr_after"]
    margin = 0.01  # dB: below this the two are a tie (quantised 8-bit outputs, 5 to 20 images per set)
    wins = sum(1 for v in pairs.values() if v.get("mobilenet_v2_imagenet", 0) > v.get("random", 0) + margin)
    if diff > margin:
        word = "beats"
    elif diff < -margin:
        word = "is worse than"
    else:
        word = "does not measurably beat"
    return (
        f"the pretrained ImageNet prior {word} the random control here: {diff:+.3f} dB mean over "
        f"{len(pairs)} task/dataset rows (more than {margin} dB better on {wins} of {len(pairs)}); the paper "
        "reports +0.2 to +0.35 dB for strong bases with a CLIP prior (against no PTG-RM, not against a random prior)"
        + _none_clause(mean, margin),
        mean,
    )


def _none_clause(mean: dict[str, float], margin: float) -> str:
    """The zero prior (`none`, g = 0) separates "a prior helps" from PTG-RM's image path alone: say where it stands."""
    if "none" not in mean:
        return ""
    diff = mean["mobilenet_v2_imagenet"] - mean["none"]
    if abs(diff) <= margin:
        return (
            f"; it also ties with the zero prior `none` ({diff:+.3f} dB mean), so the gain at this budget comes from "
            "PTG-RM's image path, not from any prior"
        )
    return f"; against the zero prior `none` it is {diff:+.3f} dB (mean)"


def markdown(
    a: argparse.Namespace, table: list[dict], times: dict, verdict_text: str, cmd: str, base: dict, before: dict | None
) -> str:
    from ipt.device import cpu_model

    lines = [
        "## PTG-RM prior ablation: tiny fine-tuned IPT + PTG-RM, each prior on the same budget",
        "",
        f"`{cmd}` on {cpu_model()} (2 cores shared with other jobs; every process {a.threads} thread(s), {a.jobs} "
        "refinements at a time).",
        "",
        f"Base: the project's tiny IPT (n_feats 8, 1+1 layers, 2 heads, 48-px windows, image-residual output), "
        f"pretrained {a.pretrain_steps} steps on {a.tasks} and fine-tuned {a.finetune_steps} steps per task "
        f"(batch {a.batch}) on {a.crops} crops per image of {a.train} by `ipt pretrain` / `ipt finetune`. "
        "PTG-RM: "
        + (
            "last decoder conv zero-initialised (the untrained refiner is exactly the base), "
            if a.zero_init
            else "the reference's init (PyTorch default, a random residual at step 0), "
        )
        + f"trained behind the frozen base (loss L1 of the refined output) for {a.steps} steps, batch "
        f"{a.batch}, {'LQ crops of ' + str(a.crop) + ' px' if a.crop else '48-px LQ shard patches'}, Adam 1e-4 "
        "cosine to 1e-7, flips; the same seed and data for every prior. Prior vector: MobileNetV2 global average "
        "of features.17 (320-d) for the backbone, the random control (seeded, BN recalibrated on 64 training "
        "patches) and `none` (zeros); the base's own head + encoder tokens averaged (72-d) for `ipt-body`.",
        "",
        "Scored by `ipt benchmark` (protocol ipt, Y-PSNR, overlap tiling, fp32)"
        + (f" on the first {a.limit} images of each set (by name) to fit the CPU budget" if a.limit else "")
        + ". 'extra s/img' is the refined model's benchmark time per image minus the base's, on the shared machine"
        " (the refined runs shared the 2 cores with another job, the base runs did not: an upper bound); 'prior +"
        " PTG-RM s' is the refinement alone (prior + PTG-RM, the base's output given) on the first image of the"
        " first set, median of 3, in one process.",
        "",
        "| task | set | images | prior | Y-PSNR before | after | gain | PTG-RM params | extra s/img | prior + PTG-RM s"
        " | train s |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in table:
        lines.append(
            f"| {t['task']} | {t['dataset']} | {t['images']} | {t['prior']} | {t['psnr_before']:.2f} | "
            f"{t['psnr_after']:.2f} | {t['gain']:+.3f} | {t['params']:,} | {t['extra_s_per_image']:.3f} | "
            f"{t['refine_s_first_image']:.3f} | {t['train_seconds']:.0f} |"
        )
    lines += ["", "Base alone (the 'before' column): " + _baselines(base), ""]
    if before:
        lines += [before["text"], ""]
    lines += [f"**Verdict:** {verdict_text}.", ""]
    lines += [
        "MLflow: "
        + (
            "this invocation logged nothing (`--no-mlflow`); without it, experiment `ptgrm-ablation` gets a parent"
            " run with every gain and the verdict and a child run per task and prior with the refinement's per-step"
            " metrics and its benchmark."
            if a.no_mlflow
            else "experiment `ptgrm-ablation`: a parent run with every gain and the verdict, a child run per task and"
            " prior with the refinement's per-step metrics and its benchmark."
        ),
        "",
    ]
    lines += ["| stage | wall time |", "|---|---:|"] + [f"| {k} | {v / 60:.1f} min |" for k, v in times.items()]
    return "\n".join(lines) + "\n"


def before_zero_init(previous: Path, a: argparse.Namespace) -> dict | None:
    """One line on the last published run with the reference's init, when this run uses zero-init: taken from the
    previous result JSON (its args have no ``zero_init``, or False), or carried over from it."""
    if not a.zero_init or not previous.is_file():
        return None
    old = json.loads(previous.read_text())
    if old.get("args", {}).get("zero_init", "False") == "True":
        return old.get("before_zero_init")
    means = ", ".join(f"{k} {v:+.3f}" for k, v in old["mean_gain"].items())
    rows = [t for t in old["table"] if t["prior"] == "mobilenet_v2_imagenet"]
    after = "; ".join(f"{t['task']}/{t['dataset']} {t['psnr_before']:.2f} -> {t['psnr_after']:.2f}" for t in rows)
    text = (
        f"Before zero-init (the reference's random init of the last conv, {old['args']['steps']} steps, otherwise "
        f"the same run): mean gain {means} dB; mobilenet_v2_imagenet {after} dB."
    )
    return {"text": text, "mean_gain": old["mean_gain"], "verdict": old["verdict"]}


def _baselines(base: dict) -> str:
    return "; ".join(
        f"{task}/{ds} base {m['psnr_y']:.2f} dB" for task, rep in base.items() for ds, m in rep["datasets"].items()
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, default=Path("../shared/train"))
    ap.add_argument("--bench", type=Path, default=Path("../shared/benchmarks"))
    ap.add_argument("--work", type=Path, default=Path("runs/ptgrm_ablation"))
    ap.add_argument("--tasks", default="derain,denoise_s50,sr_x2")
    ap.add_argument("--priors", default=",".join(PRIORS))
    ap.add_argument("--crops", type=int, default=4, help="clean crops per training image")
    ap.add_argument("--pretrain-steps", type=int, default=150)
    ap.add_argument("--finetune-steps", type=int, default=100)
    ap.add_argument("--steps", type=int, default=150, help="PTG-RM steps, the same for every prior")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument(
        "--zero-init",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="PTG-RM starts as the identity on the base (zeroed last conv; --no-zero-init: the reference's init)",
    )
    ap.add_argument("--crop", type=int, default=0, help="PTG-RM LQ crop (0: the whole 48-px patch)")
    ap.add_argument("--limit", type=int, default=20, help="images per benchmark set (0: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2, help="refinement runs at a time")
    ap.add_argument("--tracking-uri", default=None, help="MLflow store (default $MLFLOW_TRACKING_URI or ./mlflow.db)")
    ap.add_argument("--no-mlflow", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="markdown file to update (section ptgrm_ablation)")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    (a.work / "bench").mkdir(exist_ok=True)
    from ipt.tracking import MlflowTracker, default_tracking_uri

    a.tracking_uri = a.tracking_uri or default_tracking_uri()
    p = a.work / "params.yaml"
    p.write_text(yaml.safe_dump(params(a.work, a), sort_keys=False))
    run = Runner(a.work, a.threads)
    times = make_base(a, run, p)
    parent = None if a.no_mlflow else MlflowTracker.start("ptgrm-ablation", "ablation", a.tracking_uri)
    tasks, priors = a.tasks.split(","), a.priors.split(",")
    t1 = time.perf_counter()
    base = {
        t: bench(a, run, t, str(a.work / "finetune" / t / "model.pt"), a.work / "bench" / f"{t}-base.json", None)
        for t in tasks
    }
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        rows = list(
            pool.map(lambda tp: refine_one(a, run, tp[0], tp[1], parent), [(t, q) for t in tasks for q in priors])
        )
    times["refine + benchmark"] = time.perf_counter() - t1
    times = _merge_times(a.work / "times.json", times, ran=run.calls)
    extra = {(r["task"], r["prior"]): isolated_extra(a, r["task"], r["prior"]) for r in rows}
    table = summarize(base, rows, extra)
    text, mean = verdict(table)
    before = before_zero_init(a.out.parent / "ptgrm_ablation.json", a) if a.out else None
    result = {"table": table, "mean_gain": mean, "verdict": text, "times_s": times}
    # The store's URI is machine-specific (an absolute sqlite path): not part of the recorded result.
    result["args"] = {k: str(v) for k, v in vars(a).items() if k != "tracking_uri"}
    if before:
        result["before_zero_init"] = before
    (a.work / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    if parent is not None:
        parent.log_metrics({f"{t['task']}/{t['dataset']}/{t['prior']}/gain": t["gain"] for t in table})
        parent.log_metrics({f"mean_gain/{k}": v for k, v in mean.items()} | {"total_minutes": times["total"] / 60})
        parent.set_tags({"verdict": text[:5000]})
        parent.log_artifact(a.work / "result.json")
        parent.finish()
    cmd = " ".join(["python benchmarks/ptgrm_ablation.py", *sys.argv[1:]])
    md = markdown(a, table, times, text, cmd, base, before)
    print(md)
    if a.out:
        write_section(a.out, SECTION, md)
        (a.out.parent / "ptgrm_ablation.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
