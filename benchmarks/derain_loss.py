"""Why `make run` trains with Charbonnier: derain fine-tuning under L1 vs Charbonnier, over seeds.

Each configuration fine-tunes the `make run` pretrained model (`runs/pretrain`, made by `dvc repro pretrain`) on
derain with the project's own CLI, once per seed, and scores it with `ipt benchmark --task derain` (params.yaml's
benchmark section: the first 10 Rain100L images). The rainy input is the baseline to beat.

    dvc repro pretrain && python benchmarks/derain_loss.py --seeds 1,2,3 --out docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_inference import write_section  # benchmarks/ is on sys.path when this file runs as a script

from ipt.device import cpu_model

SECTION = "derain_loss"
# name -> extra `ipt finetune` flags; every run is 100 steps at lr 1e-3, as params.yaml's finetune section
CONFIGS = {
    "L1": ["--pixel-loss", "l1"],
    "Charbonnier eps 1": ["--pixel-loss", "charbonnier", "--charbonnier-eps", "1"],
    "Charbonnier eps 5": ["--pixel-loss", "charbonnier", "--charbonnier-eps", "5"],
}


def _ipt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ipt.cli", *args], check=True, capture_output=True, text=True)


def score(model: Path | str, out: Path) -> float:
    _ipt("benchmark", "--task", "derain", "--model", str(model), "--out", str(out), "--quiet")
    return json.loads(out.read_text())["datasets"]["Rain100L"]["psnr_y"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", default="runs/pretrain", help="pretrained run to fine-tune from")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", type=Path, default=None, help="markdown file to update (e.g. docs/BENCHMARKS.md)")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = score("baseline", work / "baseline.json")
        for name, flags in CONFIGS.items():
            for seed in seeds:
                run = work / f"{name.replace(' ', '_')}-{seed}"
                common = ["--init", a.init, "--steps", str(a.steps), "--lr", str(a.lr), "--seed", str(seed)]
                _ipt("finetune", "--task", "derain", *common, "--out", str(run), "--log-every", "0", *flags)
                rows.setdefault(name, []).append(score(run / "model.pt", run / "bench.json"))
                print(f"{name} seed {seed}: {rows[name][-1]:.2f} dB (rainy input {base:.2f})", flush=True)
    if a.out:
        cmd = " ".join(["python benchmarks/derain_loss.py", *sys.argv[1:]])
        lines = [
            "## Derain fine-tuning: L1 vs Charbonnier (why `make run` uses Charbonnier)",
            "",
            f"`dvc repro pretrain && {cmd}` on {cpu_model()} (2 cores): the `make run` pretrained tiny model,"
            f" fine-tuned on derain for {a.steps} steps at lr {a.lr:g}, one run per seed, scored on the first 10"
            f" Rain100L images (Y-PSNR). Rainy input: **{base:.2f} dB**.",
            "",
            "| pixel loss | " + " | ".join(f"seed {s}" for s in seeds) + " |",
            "|---|" + "---:|" * len(seeds),
            *[f"| {name} | " + " | ".join(f"{v:.2f}" for v in vals) + " |" for name, vals in rows.items()],
            "",
        ]
        write_section(a.out, SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()
