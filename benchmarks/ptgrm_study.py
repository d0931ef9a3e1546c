"""PTG-RM study: does the pre-trained prior beat a random one and none, behind a base worth refining?

Issue 20's design. Bases: a `small` image-residual IPT pretrained on the study's tasks and fine-tuned per task with
`ipt pretrain` / `ipt finetune`, scored with `ipt benchmark` and registered as `ipt-<task>`. Refiners: `ipt refine`
behind the registered base (`--base models:/ipt-<task>/<v>`, so each refiner's version links to it) for `--steps`
steps with every prior variant (MobileNetV2 ImageNet, the random control and `none`, pooled; the ImageNet and random
priors also spatial), the same data, steps and seeds for every variant (the seed sets PTG-RM's init, the batch order,
the crops/flips and the random prior's weights), each registered as a version of `ipt-<task>-ptgrm` with its score.

Scoring: the base's output of every test image is computed once per task and reused for every refiner of that task
(the base dominates `ipt benchmark`'s time); the report is built by the benchmark's own `run_benchmark`, and one
refiner per task is also scored by `ipt benchmark` as a subprocess and must agree to the last digit.

    python benchmarks/ptgrm_study.py --train ../shared/train --bench ../shared/benchmarks --work runs/ptgrm_study \\
        --out docs/BENCHMARKS.md

A finished stage is not rerun (delete its folder under --work to redo it). A GPU machine runs the same study at a
larger budget with benchmarks/ptgrm_study_gpu.sh.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import write_section  # noqa: E402
from ptgrm_ablation import DATASETS, Runner, base_params, make_base  # noqa: E402

SECTION = "ptgrm_study"
# variant -> (prior, spatial)
VARIANTS: dict[str, tuple[str, bool]] = {
    "imagenet": ("mobilenet_v2_imagenet", False),
    "random": ("random", False),
    "none": ("none", False),
    "imagenet-spatial": ("mobilenet_v2_imagenet", True),
    "random-spatial": ("random", True),
}
# (a, b, what the comparison separates)
COMPARISONS = (
    ("imagenet", "random", "pre-trained weights vs the same network at random (the prior's content)"),
    ("imagenet", "none", "a prior vs none (g = 0: PTG-RM's image path alone)"),
    ("random", "none", "a random prior vs none"),
    ("imagenet-spatial", "random-spatial", "spatial maps: pre-trained vs random"),
    ("imagenet-spatial", "imagenet", "spatial maps vs the pooled vector (ImageNet)"),
)

VERDICT_PAIRS = (("imagenet", "random"), ("imagenet", "none"), ("imagenet-spatial", "random-spatial"))


def params(a: argparse.Namespace) -> dict[str, Any]:
    return base_params(
        a.work,
        train=a.train,
        tasks=a.tasks.split(","),
        crops=a.crops,
        model_size=a.model_size,
        pretrain_steps=a.pretrain_steps,
        finetune_steps=a.finetune_steps,
        batch=a.base_batch,
        lr=a.base_lr,
        finetune_lr=a.finetune_lr,
        milestones=[round(a.finetune_steps * 2 / 3)],
    )


# ------------------------------------------------------------------------------------------------ stages


def bench_args(a: argparse.Namespace, task: str, model: str, out: Path) -> list[str]:
    args = ["benchmark", "--task", task, "--model", model, "--root", str(a.bench), "--datasets", DATASETS[task]]
    args += ["--tiling", "overlap", "--precision", "fp32", "--device", a.device, "--out", str(out)]
    args += ["--params", "none", "--quiet"] + (["--limit", str(a.limit)] if a.limit else [])
    return args + (["--tracking-uri", a.tracking_uri] if a.tracking_uri else [])


def register_bases(a: argparse.Namespace, run: Runner) -> dict[str, dict]:
    """Score each fine-tuned base with `ipt benchmark`; register it as ``ipt-<task>`` (unless --no-registry).
    Returns {task: {"report": ..., "uri": the URI the refiners train behind}}."""
    out = {}
    for task in a.tasks.split(","):
        ckpt = a.work / "finetune" / task / "model.pt"
        scored = a.work / "bench" / task / "base.json"
        if not scored.is_file():
            run.ipt(bench_args(a, task, str(ckpt), scored), tag=f"bench {task} base", threads=a.jobs)
        uri = str(ckpt)
        if a.tracking_uri:
            done = a.work / "registered" / f"{task}-base.json"
            if not done.is_file():
                run.ipt(
                    ["register", "--checkpoint", str(ckpt), "--task", task, "--report", str(scored)]
                    + ["--experiment", "ptgrm-study", "--tracking-uri", a.tracking_uri, "--out", str(done)],
                    tag=f"register {task} base",
                )
            uri = json.loads(done.read_text())["uri"]
        out[task] = {"report": json.loads(scored.read_text()), "uri": uri}
    return out


def tagged(a: argparse.Namespace, name: str, sep: str = "-") -> str:
    """``name`` with the invocation's --tag appended (a second budget's folders, result and section)."""
    return f"{name}{sep}{a.tag}" if a.tag else name


def refiner_dir(a: argparse.Namespace, task: str, variant: str, seed: int) -> Path:
    return a.work / "refine" / task / tagged(a, f"{variant}-s{seed}")


def train_refiner(a: argparse.Namespace, run: Runner, base_uri: str, task: str, variant: str, seed: int) -> Path:
    out = refiner_dir(a, task, variant, seed)
    want = {"steps": a.steps, "batch_size": a.batch, "seed": seed, "lr": a.lr}
    if (out / "model.pt").is_file():
        cfg = json.loads((out / "config.json").read_text())
        if all(cfg.get(k) == v for k, v in want.items()):
            return out
        raise SystemExit(f"{out}: trained with other settings than this invocation's {want}; move it away first")
    prior, spatial = VARIANTS[variant]
    args = ["refine", "--task", task, "--base", base_uri, "--prior", prior, "--shards", str(a.work / "pairs")]
    args += ["--out", str(out), "--steps", str(a.steps), "--batch-size", str(a.batch), "--lr", str(a.lr)]
    args += ["--seed", str(seed), "--threads", str(a.threads), "--device", a.device, "--params", "none"]
    args += ["--prior-spatial" if spatial else "--no-prior-spatial", "--log-every", "0"]
    args += ["--tracking-uri", a.tracking_uri] if a.tracking_uri else []
    dt, _ = run.ipt(args, tag=f"refine {task} {variant} seed {seed}")
    (out / "wall_s.json").write_text(json.dumps({"wall_s": dt, "threads": a.threads, "jobs": a.jobs}) + "\n")
    return out


def training_time(dirs: list[Path]) -> tuple[float, str]:
    """Refiner training wall time summed over ``dirs`` (each run's own clock, whichever invocation trained it), and
    how the runs shared the CPU: "6 runs 2 at a time (25.8 min each), 3 runs 3 at a time (...)"."""
    groups: dict[int, list[float]] = {}
    for d in dirs:
        rec = json.loads((d / "wall_s.json").read_text())
        groups.setdefault(rec.get("jobs", 1), []).append(rec["wall_s"] / 60)
    said = ", ".join(f"{len(v)} runs {j} at a time ({sum(v) / len(v):.1f} min each)" for j, v in sorted(groups.items()))
    return sum(sum(v) for v in groups.values()), said


class CachedBase:
    """Stands in for a refined restorer's base: the output of each test image is computed once by the real base
    restorer and reused (keyed by the input's bytes); everything else is the real restorer's."""

    def __init__(self, restorer: Any, base_sha256: str) -> None:
        self.restorer, self.base_sha256, self.cache = restorer, base_sha256, {}
        self.seconds = 0.0

    def restore_tensor(self, x):
        key = hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        if key not in self.cache:
            t = time.perf_counter()
            self.cache[key] = self.restorer.restore_tensor(x)
            self.seconds += time.perf_counter() - t
        return self.cache[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.restorer, name)


def _sets(a: argparse.Namespace, task: str) -> list:
    from ipt.config import DEFAULT_SEED
    from ipt.data.testsets import load_benchmark

    return [
        load_benchmark(a.bench, n, task, seed=DEFAULT_SEED, limit=a.limit or None) for n in DATASETS[task].split(",")
    ]


_BASES: dict[str, CachedBase] = {}  # task -> the base output cache shared by every refiner of the task


def _open_refined(a: argparse.Namespace, task: str, ckpt: Path) -> Any:
    """``ipt.restore.open_restorer`` of a refiner (overlap, fp32), its base replaced by the task's cached base."""
    from ipt.refine.checkpoint import read_refined
    from ipt.restore import open_restorer

    base_sha = read_refined(ckpt)["base"]["sha256"]
    runner = open_restorer(ckpt, task, tiling="overlap", precision="fp32", device=a.device)
    cached = _BASES.setdefault(task, CachedBase(runner.base, base_sha))
    if cached.base_sha256 != base_sha:
        raise SystemExit(f"{ckpt}: refines another base ({base_sha[:12]}) than {cached.base_sha256[:12]}")
    runner.base = cached
    return runner


def _score(a: argparse.Namespace, task: str, fn: Any, sets: list, model: str, info: dict) -> dict:
    from ipt.config import DEFAULT_SEED
    from ipt.device import describe
    from ipt.scoring import run_benchmark

    return run_benchmark(
        fn,
        sets,
        task=task,
        model=model,
        protocol="ipt",
        info=info,
        hardware=describe(),
        seed=DEFAULT_SEED,
        limit=a.limit or None,
    )


def score_refiners(a: argparse.Namespace, task: str, dirs: list[Path]) -> dict[Path, dict]:
    """`ipt benchmark`'s report of every refiner in ``dirs`` (all behind one base), the base run once per image."""
    import torch

    from ipt.fileio import file_sha256, write_json
    from ipt.scoring import restorer_fn

    torch.set_num_threads(a.jobs)
    sets = _sets(a, task)
    reports = {}
    for d in dirs:
        scored = a.work / "bench" / task / f"{d.name}.json"
        if scored.is_file():
            reports[d] = json.loads(scored.read_text())
            continue
        ckpt = d / "model.pt"
        runner = _open_refined(a, task, ckpt)
        info = runner.describe() | {"model_sha256": file_sha256(ckpt), "notes": list(runner.notes)}
        report = _score(a, task, restorer_fn(runner), sets, str(ckpt), info)
        report["scored_by"] = (
            "benchmarks/ptgrm_study.py: ipt.scoring.run_benchmark with the base's output of each image computed once "
            "and reused by every refiner of the task (seconds_per_image: the refiner's own time)"
        )
        write_json(scored, report)
        reports[d] = report
    return reports


PROBES = ("own", "zero", "next image")


def prior_probe(a: argparse.Namespace, task: str, variant: str, d: Path, base: dict) -> dict[str, Any]:
    """Does a trained refiner use its prior? Its gain over the base when the prior's output g of each test image is
    its own, zero, or (pooled priors) that of the next image of the set; the mean |change| of the refined Y-PSNR per
    image against its own g. Cached in ``bench/<task>/<refiner>.probe.json``."""
    import torch

    out = a.work / "bench" / task / f"{d.name}.probe.json"
    if out.is_file():
        return json.loads(out.read_text())
    torch.set_num_threads(a.jobs)
    sets = _sets(a, task)
    runner = _open_refined(a, task, d / "model.pt")
    model = runner.model

    def tensor(lq: Any) -> Any:
        x = torch.from_numpy(lq).permute(2, 0, 1)[None] if not isinstance(lq, torch.Tensor) else lq
        return x.float()

    with torch.inference_mode():
        own = {id(p.lq): model.prior(tensor(p.lq) / model.base.spec.rgb_range) for s in sets for p in s.pairs}
    probes = {"own": own, "zero": {k: torch.zeros_like(g) for k, g in own.items()}}
    if not VARIANTS[variant][1]:  # a pooled vector: any image's g fits
        nxt = {}
        for s in sets:
            keys = [id(p.lq) for p in s.pairs]
            nxt |= {k: own[keys[(i + 1) % len(keys)]] for i, k in enumerate(keys)}
        probes["next image"] = nxt

    def fn_for(gs: dict) -> Any:
        @torch.inference_mode()
        def fn(lq: Any) -> Any:
            x = tensor(lq)
            return model.refine(runner.base.restore_tensor(x).float(), x, gs[id(lq)]).cpu()

        return fn

    b, base_img = mean_over_sets(base), per_image(base)
    res: dict[str, Any] = {"refiner": f"{task}/{d.name}"}
    imgs = {}
    for name, gs in probes.items():
        rep = _score(a, task, fn_for(gs), sets, str(d / "model.pt"), {})
        imgs[name] = per_image(rep)
        res[name] = {"gain": mean_over_sets(rep) - b, "improved": sum(imgs[name][k] > base_img[k] for k in base_img)}
    for name in probes:
        if name != "own":
            res[name]["mean_abs_change"] = statistics.fmean(abs(imgs[name][k] - imgs["own"][k]) for k in base_img)
    res["images"] = len(base_img)
    out.write_text(json.dumps(res, indent=1) + "\n")
    return res


SSIM_TOLERANCE = 1e-12


def verify_against_cli(a: argparse.Namespace, run: Runner, task: str, d: Path, report: dict) -> str:
    """`ipt benchmark` of one refiner as a user runs it; its per-image Y-PSNR must equal the cached scoring's."""
    out = a.work / "bench" / task / f"{d.name}.cli.json"
    if not out.is_file():
        run.ipt(bench_args(a, task, str(d / "model.pt"), out), tag=f"verify {task} {d.name}", threads=a.jobs)
    cli = json.loads(out.read_text())
    worst = 0.0
    for ds, block in report["datasets"].items():
        mine = [(r["name"], r["psnr_y"]) for r in block["per_image"]]
        theirs = [(r["name"], r["psnr_y"]) for r in cli["datasets"][ds]["per_image"]]
        if mine != theirs:
            raise SystemExit(f"{task}/{d.name}: the cached scoring's Y-PSNR differs from `ipt benchmark` on {ds}")
        # SSIM's float64 filter sums may round differently under another thread count (seen: 2e-16)
        pairs = zip(block["per_image"], cli["datasets"][ds]["per_image"], strict=True)
        ssim = [abs(r["ssim_y"] - c["ssim_y"]) for r, c in pairs]
        worst = max([worst, *ssim])
        if worst > SSIM_TOLERANCE:
            raise SystemExit(f"{task}/{d.name}: the cached scoring's SSIM differs from `ipt benchmark` on {ds}")
    ssim_said = "identical SSIM" if worst == 0 else f"SSIM within {worst:.0e}"
    return f"{task}/{d.name}: identical per-image Y-PSNR and {ssim_said} to `ipt benchmark` ({out.name})"


def register_refiners(a: argparse.Namespace, run: Runner, task: str, dirs: list[Path]) -> dict[Path, dict]:
    out = {}
    for d in dirs:
        done = a.work / "registered" / task / f"{d.name}.json"
        if not done.is_file():
            run.ipt(
                ["refine-register", "--checkpoint", str(d / "model.pt")]
                + ["--report", str(a.work / "bench" / task / f"{d.name}.json"), "--experiment", "ptgrm-study"]
                + ["--tracking-uri", a.tracking_uri, "--out", str(done)],
                tag=f"register {task} {d.name}",
            )
        out[d] = json.loads(done.read_text())
    return out


# ------------------------------------------------------------------------------------------------ statistics


def per_image(report: dict) -> dict[str, float]:
    """{dataset/image: Y-PSNR}."""
    return {f"{ds}/{r['name']}": r["psnr_y"] for ds, b in report["datasets"].items() for r in b["per_image"]}


def mean_over_sets(report: dict) -> float:
    return statistics.fmean(b["psnr_y"] for b in report["datasets"].values())


def _sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def analyse(task: str, base: dict, reports: dict[tuple[str, int], dict], seeds: list[int]) -> dict[str, Any]:
    """Gains over the base per variant and seed, their mean and spread, and the paired comparisons."""
    b = mean_over_sets(base)
    base_img = per_image(base)
    variants = sorted({v for v, _ in reports}, key=list(VARIANTS).index)
    gains = {v: {s: mean_over_sets(reports[(v, s)]) - b for s in seeds if (v, s) in reports} for v in variants}
    rows = [
        {
            "variant": v,
            "prior": VARIANTS[v][0],
            "spatial": VARIANTS[v][1],
            "gains": g,
            "mean": statistics.fmean(g.values()),
            "sd": _sd(list(g.values())),
            "images_improved": _improved(reports, v, seeds, base_img),
        }
        for v, g in gains.items()
    ]
    pairs = []
    for x, y, what in COMPARISONS:
        common = [s for s in seeds if s in gains.get(x, {}) and s in gains.get(y, {})]
        if not common:
            continue
        diffs = [gains[x][s] - gains[y][s] for s in common]
        img_x = _seed_mean_images(reports, x, common)
        img_y = _seed_mean_images(reports, y, common)
        per_img = [img_x[k] - img_y[k] for k in img_x]
        spread = max(_sd(list(gains[x].values())), _sd(list(gains[y].values())))
        mean = statistics.fmean(diffs)
        pairs.append(
            {
                "a": x,
                "b": y,
                "what": what,
                "seeds": common,
                "diffs": diffs,
                "mean": mean,
                "sd": _sd(diffs),
                # paired t statistic of the seed differences (None: one seed, or no spread)
                "t": mean / (_sd(diffs) / math.sqrt(len(diffs))) if len(diffs) > 1 and _sd(diffs) > 0 else None,
                "seed_spread": spread,
                "a_wins_seeds": sum(d > 0 for d in diffs),
                "a_wins_images": sum(d > 0 for d in per_img),
                "b_wins_images": sum(d < 0 for d in per_img),
                "images": len(per_img),
                # one seed has no spread to judge by: it can lead, never beat
                "beats": len(diffs) > 1 and mean > spread and all(d > 0 for d in diffs),
                "loses": len(diffs) > 1 and -mean > spread and all(d < 0 for d in diffs),
            }
        )
    return {"task": task, "base_psnr_y": b, "rows": rows, "pairs": pairs}


def entry_gain(entry: dict, variant: str, seed: int) -> float:
    return next(r["gains"][seed] for r in entry["rows"] if r["variant"] == variant)


def _seed_mean_images(reports: dict, v: str, seeds: list[int]) -> dict[str, float]:
    imgs = [per_image(reports[(v, s)]) for s in seeds]
    return {k: statistics.fmean(i[k] for i in imgs) for k in imgs[0]}


def _improved(reports: dict, v: str, seeds: list[int], base_img: dict[str, float]) -> str:
    m = _seed_mean_images(reports, v, [s for s in seeds if (v, s) in reports])
    return f"{sum(m[k] > base_img[k] for k in m)} of {len(m)}"


def verdict(study: list[dict]) -> str:
    out = []
    for t in study:
        for p in t["pairs"]:
            if (p["a"], p["b"]) not in VERDICT_PAIRS:
                continue
            if len(p["seeds"]) < 2:
                word = ("leads" if p["mean"] > 0 else "trails") + " (one seed, no spread to judge by)"
            else:
                word = "beats" if p["beats"] else ("is beaten by" if p["loses"] else "does not separate from")
            out.append(
                f"{t['task']}: {p['a']} {word} {p['b']} ({p['mean']:+.4f} dB mean paired difference over "
                f"{len(p['seeds'])} seeds, seed spread {p['seed_spread']:.4f} dB; better on "
                f"{p['a_wins_seeds']} of {len(p['seeds'])} seeds and {p['a_wins_images']} of {p['images']} images)"
            )
    return "; ".join(out)


# ------------------------------------------------------------------------------------------------ report


def markdown(a: argparse.Namespace, cmd: str, study: list[dict], meta: dict) -> str:
    from ipt.device import cpu_bf16_flags, cpu_model

    lines = [
        f"## PTG-RM study: does the pre-trained prior help? ({a.steps} refiner steps; issue 20)",
        "",
        f"`{cmd}` on {cpu_model()} (torch capability {meta['cpu_capability']}, bf16 flags {cpu_bf16_flags() or 'none'}"
        f"; {a.jobs} runs at a time, {a.threads} thread(s) each).",
        "",
        f"Bases: `{a.model_size}` image-residual IPT ({meta['base_params']:,} parameters), pretrained "
        f"{a.pretrain_steps} steps on {a.tasks} and fine-tuned {a.finetune_steps} steps per task (batch "
        f"{a.base_batch}, precision `auto`: {meta['base_precision']}) on {a.crops} crops per image of {a.train}; "
        "registered as `ipt-<task>` in the study's MLflow store. Refiners: `ipt refine` behind the frozen registered "
        f"base, {a.steps} steps, batch {a.batch}, 48-px LQ patches, Adam {a.lr:g} cosine to 1e-7, flips, zero-init "
        f"(the untrained refiner is the base), fp32; seeds {a.seeds} for every variant (paired: the same batches, "
        "crops and PTG-RM init per seed). Each is registered as a version of `ipt-<task>-ptgrm` with its base link.",
        "",
        "Scored with the protocol of `ipt benchmark` (Y-PSNR, overlap tiling, fp32) on "
        + (f"the first {a.limit} images of each set (by name)" if a.limit else "every image of each set")
        + "; the gain is the refined mean minus the base's. "
        + "; ".join(meta["verified"])
        + ".",
        "",
        "| task | variant | params | gain per seed (dB) | mean gain | sd over seeds | images improved |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for t in study:
        for r in t["rows"]:
            per = ", ".join(f"{g:+.4f}" for g in r["gains"].values())
            lines.append(
                f"| {t['task']} | {r['variant']} | {meta['params'][r['variant']]:,} | {per} | {r['mean']:+.4f} | "
                f"{r['sd']:.4f} | {r['images_improved']} |"
            )
    lines += [
        "",
        "Base Y-PSNR (mean over its sets): " + "; ".join(f"{t['task']} {t['base_psnr_y']:.3f} dB" for t in study),
        "",
        "Paired comparisons (a - b, same seeds and images; 'beats' = the mean difference exceeds the larger seed "
        "spread of the two and every seed agrees; one seed never beats):",
        "",
        "| task | a | b | a - b per seed (dB) | mean | sd of a - b | paired t | seed spread | a better: seeds "
        "| a / b better: images |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for t in study:
        for p in t["pairs"]:
            per = ", ".join(f"{d:+.4f}" for d in p["diffs"])
            lines.append(
                f"| {t['task']} | {p['a']} | {p['b']} | {per} | {p['mean']:+.4f} | {p['sd']:.4f} | "
                + (f"{p['t']:.1f}" if p.get("t") is not None else "-")
                + f" | {p['seed_spread']:.4f} | "
                f"{p['a_wins_seeds']} of {len(p['seeds'])} | {p['a_wins_images']} / {p['b_wins_images']} of "
                f"{p['images']} |"
            )
    lines += ["", f"**Verdict:** {meta['verdict']}.", ""]
    lines += [
        "Does a trained refiner use its prior? The first seed's refiner scored again with the prior's output g of each "
        "test image replaced at test time (gain over the base; mean |change| of each image's Y-PSNR against its own "
        "g; the next image's g only for pooled priors, whose g fits any image):",
        "",
        "| task | refiner | gain, own g | gain, g = 0 | gain, next image's g | mean abs change: g = 0 / next |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for t in study:
        for pr in t.get("probes", []):
            nxt = pr.get("next image")
            lines.append(
                f"| {t['task']} | {pr['refiner'].split('/')[-1]} | {pr['own']['gain']:+.4f} | "
                f"{pr['zero']['gain']:+.4f} | "
                + (f"{nxt['gain']:+.4f}" if nxt else "-")
                + f" | {pr['zero']['mean_abs_change']:.4f} / "
                + (f"{nxt['mean_abs_change']:.4f}" if nxt else "-")
                + " |"
            )
    lines.append("")
    lines += [
        f"Refiner training: {meta['refiners']} runs, {meta['refiner_training_min']:.1f} min of wall time summed over "
        f"runs: {meta['refiner_batches']}. The last "
        "invocation's stages (cached ones near 0):",
        "",
    ]
    lines += ["| stage | wall time |", "|---|---:|"] + [f"| {k} | {v / 60:.1f} min |" for k, v in meta["times"].items()]
    return "\n".join(lines) + "\n"


def _base_meta(a: argparse.Namespace) -> tuple[int, str]:
    """The base's parameter count and the precision `auto` trains it in on this machine (ipt.device's one rule)."""
    import torch

    from ipt.device import resolve_device, resolve_precision

    obj = torch.load(a.work / "finetune" / a.tasks.split(",")[0] / "model.pt", map_location="cpu", weights_only=True)
    return sum(v.numel() for v in obj["state_dict"].values()), resolve_precision(
        "auto", resolve_device(a.device), training=True
    )


def _refiner_params(d: Path) -> int:
    import torch

    return torch.load(d / "model.pt", map_location="cpu", weights_only=True)["meta"]["parameters"]["refiner"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, default=Path("../shared/train"))
    ap.add_argument("--bench", type=Path, default=Path("../shared/benchmarks"))
    ap.add_argument("--work", type=Path, default=Path("runs/ptgrm_study"))
    ap.add_argument("--tasks", default="derain,denoise_s50")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--seeds", default="1,2,3", help="refiner seeds, the same for every variant (paired)")
    ap.add_argument("--crops", type=int, default=16, help="clean crops per training image")
    ap.add_argument("--model-size", default="small", help="the base IPT's size")
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--finetune-steps", type=int, default=600)
    ap.add_argument("--base-batch", type=int, default=16)
    ap.add_argument("--base-lr", type=float, default=5e-4)
    ap.add_argument("--finetune-lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=1500, help="PTG-RM steps, the same for every variant and seed")
    ap.add_argument("--batch", type=int, default=8, help="PTG-RM batch")
    ap.add_argument("--lr", type=float, default=1e-4, help="PTG-RM Adam lr (cosine to 1e-7)")
    ap.add_argument("--limit", type=int, default=0, help="images per benchmark set (0: all)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (training, refining and scoring)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each refiner run")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--only-base", action="store_true", help="stop after the bases")
    ap.add_argument(
        "--tag",
        default="",
        help="a suffix for the refiner folders and the report's section (a second budget beside the first: 6000)",
    )
    ap.add_argument("--no-registry", action="store_true", help="no MLflow: refiners train behind the base file")
    ap.add_argument("--tracking-uri", default=None, help="MLflow store (default sqlite:///<work>/mlflow.db)")
    ap.add_argument("--out", type=Path, default=None, help="markdown file to update (section ptgrm_study)")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.no_registry:
        a.tracking_uri = None
    else:
        a.tracking_uri = a.tracking_uri or f"sqlite:///{(a.work / 'mlflow.db').resolve()}"
    p = a.work / "params.yaml"
    p.write_text(yaml.safe_dump(params(a), sort_keys=False))
    run = Runner(a.work, a.threads)
    t0 = time.perf_counter()
    times = make_base(a, run, p, jobs=a.jobs, pretrain_threads=a.jobs)
    if a.only_base:
        print(json.dumps(times))
        return
    tasks, variants = a.tasks.split(","), a.variants.split(",")
    seeds = [int(s) for s in a.seeds.split(",")]
    t1 = time.perf_counter()
    bases = register_bases(a, run)
    times["base benchmark + register"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    jobs = [(t, v, s) for s in seeds for t in tasks for v in variants]
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        dirs = list(pool.map(lambda j: train_refiner(a, run, bases[j[0]]["uri"], *j), jobs))
    times["refiners (this invocation)"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    study, verified, regs = [], [], {}
    for task in tasks:
        mine = [d for (t, _, _), d in zip(jobs, dirs, strict=True) if t == task]
        reports = score_refiners(a, task, mine)
        first = refiner_dir(a, task, variants[0], seeds[0])
        verified.append(verify_against_cli(a, run, task, first, reports[first]))
        if a.tracking_uri:
            regs |= register_refiners(a, run, task, mine)
        by_key = {(v, s): reports[refiner_dir(a, task, v, s)] for (t, v, s) in jobs if t == task}
        entry = analyse(task, bases[task]["report"], by_key, seeds)
        entry["probes"] = []
        for v in (v for v in variants if VARIANTS[v][0] != "none"):
            probe = prior_probe(a, task, v, refiner_dir(a, task, v, seeds[0]), bases[task]["report"])
            # equal up to fp32 reduction order (a probe run with other thread counts than the scoring: ~1e-9 dB)
            if abs(probe["own"]["gain"] - entry_gain(entry, v, seeds[0])) > 1e-6:
                raise SystemExit(f"{probe['refiner']}: the probe's own-g score differs from the refiner's report")
            entry["probes"].append(probe)
        study.append(entry)
    times["score + verify + register"] = time.perf_counter() - t1
    times["total (this invocation)"] = time.perf_counter() - t0
    from ipt.device import describe

    base_n, base_prec = _base_meta(a)
    training_min, batches = training_time(dirs)
    meta = {
        "cpu_capability": describe()["cpu_capability"],
        "base_params": base_n,
        "base_precision": base_prec,
        "params": {v: _refiner_params(refiner_dir(a, tasks[0], v, seeds[0])) for v in variants},
        "verified": verified,
        "verdict": verdict(study),
        "times": times,
        "refiner_training_min": training_min,
        "refiner_batches": batches,
        "refiners": len(dirs),
        "jobs": a.jobs,
    }
    result = {
        "study": study,
        "meta": meta,
        "registered": {str(k.relative_to(a.work)): v["uri"] for k, v in regs.items()},
        "bases": {t: b["uri"] for t, b in bases.items()},
        "hardware": describe(),
        "args": {k: str(v) for k, v in vars(a).items() if k != "tracking_uri"},
    }
    (a.work / f"{tagged(a, 'result')}.json").write_text(json.dumps(result, indent=1) + "\n")
    cmd = " ".join(["python benchmarks/ptgrm_study.py", *sys.argv[1:]])
    md = markdown(a, cmd, study, meta)
    print(md)
    if a.out:
        name = tagged(a, SECTION, "_")
        write_section(a.out, name, md)
        (a.out.parent / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
