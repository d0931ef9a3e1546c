"""The answer of an experiment, computed from its cells' scores: per variant the mean and sd over seeds, each
variant paired with the reference by seed (mean difference, sd, paired t, n, two-sided 5% test), a plot of the
score against each factor with every seed's point, and a verdict sentence written from those numbers alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ALPHA = 0.05  # two-sided


@dataclass(frozen=True)
class Paired:
    variant: str
    n: int
    mean: float  # variant - reference, averaged over the seeds both have
    sd: float  # sample sd of the differences (nan for n < 2)
    t: float  # mean / (sd / sqrt(n)); nan for n < 2, inf for sd 0 and mean != 0
    t_crit: float  # two-sided 5% critical value of Student's t with n - 1 degrees of freedom
    separated: bool


def mean_sd(values: list[float]) -> tuple[float, float]:
    n = len(values)
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return m, sd


def t_critical(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(1 - ALPHA / 2, df)) if df >= 1 else float("nan")


def paired(label: str, variant: dict[int, float], reference: dict[int, float]) -> Paired:
    seeds = sorted(set(variant) & set(reference))
    diffs = [variant[s] - reference[s] for s in seeds]
    n = len(diffs)
    if n == 0:
        return Paired(label, 0, float("nan"), float("nan"), float("nan"), float("nan"), False)
    m, sd = mean_sd(diffs)
    if n < 2:
        t = float("nan")
    elif sd == 0:
        t = math.inf if m > 0 else (-math.inf if m < 0 else 0.0)
    else:
        t = m / (sd / math.sqrt(n))
    crit = t_critical(n - 1)
    return Paired(label, n, m, sd, t, crit, n >= 2 and abs(t) >= crit)


def _fmt(x: float, digits: int = 4) -> str:
    if x != x:
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:+.{digits}f}" if digits else f"{x:.0f}"


def verdict(metric_name: str, unit: str, reference: str, pairs: list[Paired]) -> str:
    """Sentences from the paired comparisons alone (each on the seeds both variants have): a headline saying which
    variants beat or lose to the reference separably (two-sided paired t test at 5%), then one sentence a variant."""
    winners = sorted((p for p in pairs if p.separated and p.mean > 0), key=lambda p: -p.mean)
    losers = [p for p in pairs if p.separated and p.mean < 0]
    if winners:
        head = (
            f"{len(winners)} of {len(pairs)} variant(s) beat the reference '{reference}' separably; the largest gain"
            f" is '{winners[0].variant}' ({winners[0].mean:+.4f} {unit} {metric_name})."
        )
    elif losers:
        head = f"No variant beats the reference '{reference}'; {len(losers)} of {len(pairs)} score separably lower."
    else:
        head = f"These seeds separate no variant from the reference '{reference}'."
    out = [head]
    for p in pairs:
        if p.n < 2:
            out.append(
                f"'{p.variant}' minus '{reference}': {_fmt(p.mean)} {unit} on {p.n} seed(s): fewer than two paired"
                " seeds cannot separate them."
            )
        elif p.separated:
            word = "higher" if p.mean > 0 else "lower"
            out.append(
                f"'{p.variant}' scores {word} than '{reference}' by {abs(p.mean):.4f} {unit} {metric_name}"
                f" (paired t = {p.t:.2f}, n = {p.n}, |t| >= {p.t_crit:.2f}: separated at 5%)."
            )
        elif p.mean == 0 and p.sd == 0:
            out.append(f"'{p.variant}' and '{reference}' score the same on all {p.n} seeds.")
        else:
            out.append(
                f"'{p.variant}' and '{reference}' are not separated by these {p.n} seeds: mean difference"
                f" {p.mean:+.4f} {unit}, sd {p.sd:.4f}, paired t = {p.t:.2f} (|t| < {p.t_crit:.2f})."
            )
    if len(pairs) > 1:
        out.append(
            f"({len(pairs)} comparisons, each at 5%: about {0.05 * len(pairs):.2f} false separations expected"
            " among them when nothing differs.)"
        )
    return " ".join(out)


def build(
    records: list[dict[str, Any]], *, reference: str, factors: dict[str, list[Any]], metric: str
) -> dict[str, Any]:
    """The report's numbers. ``records``: one per finished cell: {variant, values, seed, score}."""
    by_variant: dict[str, dict[int, float]] = {}
    values: dict[str, dict[str, Any]] = {}
    for r in records:
        by_variant.setdefault(r["variant"], {})[int(r["seed"])] = float(r["score"])
        values[r["variant"]] = r["values"]
    variants = []
    for label, seeds in by_variant.items():
        m, sd = mean_sd(list(seeds.values()))
        variants.append(
            {
                "variant": label,
                "values": values[label],
                "n": len(seeds),
                "mean": m,
                "sd": sd,
                "seeds": {str(s): v for s, v in sorted(seeds.items())},
            }
        )
    ref = by_variant.get(reference, {})
    pairs = [paired(v, s, ref) for v, s in by_variant.items() if v != reference] if ref else []
    unit = "dB" if metric.startswith("psnr") else ""
    text = (
        verdict(metric, unit, reference, pairs)
        if ref and pairs
        else (
            f"No verdict: the reference '{reference}' has no finished cell."
            if not ref
            else "No other variant to compare."
        )
    )
    return {
        "metric": metric,
        "reference": reference,
        "factors": factors,
        "variants": variants,
        "paired": [vars(p) for p in pairs],
        "alpha": ALPHA,
        "verdict": text,
    }


def _num(x: float, d: int = 4) -> str:
    return "-" if x != x else f"{x:.{d}f}"


def markdown(
    exp_name: str, question: str, numbers: dict[str, Any], about: list[str], png: str | None, curves: str | None = None
) -> str:
    m = numbers["metric"]
    lines = [f"# Experiment `{exp_name}`", ""]
    if question:
        lines += [f"**Question.** {question}", ""]
    lines += [f"**Answer (computed).** {numbers['verdict']}", "", *about, "", f"## {m} per variant (over seeds)", ""]
    lines += ["| variant | n | mean | sd | seeds |", "|---|---:|---:|---:|---|"]
    for v in numbers["variants"]:
        seeds = ", ".join(f"{s}: {x:.4f}" for s, x in v["seeds"].items())
        ref = " (reference)" if v["variant"] == numbers["reference"] else ""
        lines.append(f"| {v['variant']}{ref} | {v['n']} | {_num(v['mean'])} | {_num(v['sd'])} | {seeds} |")
    lines += ["", f"## Paired by seed against `{numbers['reference']}`", ""]
    lines += [
        "| variant | n | mean diff | sd | paired t | 5% threshold | separated |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for p in numbers["paired"]:
        t = "-" if p["t"] != p["t"] else ("inf" if math.isinf(p["t"]) else f"{p['t']:.2f}")
        lines.append(
            f"| {p['variant']} | {p['n']} | {_fmt(p['mean'])} | {_num(p['sd'])} | {t} | {_num(p['t_crit'], 2)} |"
            f" {'yes' if p['separated'] else 'no'} |"
        )
    if png:
        lines += ["", f"![{m} against each factor]({png})"]
    if numbers.get("curves"):
        lines += ["", "## Validation while training (held-out split of the training source, never the test set)", ""]
        lines += [
            "Each seed draws its own validation split (docs/training.md), so levels differ between seeds: compare"
            " variants at one seed (the figure's right panel), not these means across seeds.",
            "",
        ]
        lines += [
            "| stage | variant | seeds | Y-PSNR at the last step | mean of each seed's best | best at steps | points |"
            " validation s per run |",
            "|---|---|---:|---:|---:|---|---:|---:|",
        ]
        for c in numbers["curves"]:
            lines.append(
                f"| {c['stage']} | {c['variant']} | {c['n']} | {c['last']:.4f} (step {c['last_step']}) |"
                f" {c['best']:.4f} | {', '.join(map(str, c['best_steps']))} | {c['points']} | {c['val_seconds']:.1f} |"
            )
        if curves:
            lines += ["", f"![validation Y-PSNR against the step]({curves})"]
    return "\n".join(lines) + "\n"


def plot(numbers: dict[str, Any], out: Path, title: str) -> Path:
    """One panel per factor (or one over the variants): every seed's score as a point, the variant mean as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factors = [f for f in numbers["factors"]] or ["variant"]
    fig, axes = plt.subplots(1, len(factors), figsize=(4.2 * len(factors) + 1, 3.6), squeeze=False)
    for ax, factor in zip(axes[0], factors, strict=True):
        groups: dict[str, list[float]] = {}
        for v in numbers["variants"]:
            key = v["variant"] if factor == "variant" else _short(v["values"].get(factor))
            groups.setdefault(key, []).extend(v["seeds"].values())
        names = list(groups)
        for i, name in enumerate(names):
            ys = groups[name]
            xs = [i + (j - (len(ys) - 1) / 2) * 0.06 for j in range(len(ys))]
            ax.scatter(xs, ys, s=18, color="tab:blue", zorder=3)
            ax.hlines(sum(ys) / len(ys), i - 0.25, i + 0.25, color="black", zorder=4)
        ax.set_xticks(
            range(len(names)),
            names,
            rotation=20 if max(map(len, names)) > 8 else 0,
            ha="right" if max(map(len, names)) > 8 else "center",
            fontsize=8,
        )
        ax.set_xlabel(factor)
        ax.set_ylabel(numbers["metric"])
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return out


def curve_summary(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per validated training stage and variant, over the seeds: the mean validation Y-PSNR at the last validated
    step, the mean of each seed's best and the steps it was reached at, and the validation's share of nothing but
    its own seconds (the rows' ``seconds``)."""
    rows: dict[tuple[str, str], list[list[dict[str, float]]]] = {}
    for c in cells:
        for stage, curve in (c.get("curves") or {}).items():
            if curve:
                rows.setdefault((stage, c["variant"]), []).append(curve)
    out = []
    for (stage, variant), curves in rows.items():
        best = [max(cv, key=lambda r: r["psnr_y"]) for cv in curves]
        out.append(
            {
                "stage": stage,
                "variant": variant,
                "n": len(curves),
                "last_step": curves[0][-1]["step"],
                "last": sum(cv[-1]["psnr_y"] for cv in curves) / len(curves),
                "best": sum(b["psnr_y"] for b in best) / len(best),
                "best_steps": [int(b["step"]) for b in best],
                "points": len(curves[0]),
                "val_seconds": sum(r.get("seconds", 0.0) for cv in curves for r in cv) / len(curves),
            }
        )
    return out


def plot_curves(cells: list[dict[str, Any]], out: Path, title: str, reference: str | None = None) -> Path | None:
    """Validation Y-PSNR against the step, per validated stage: a line per cell (colour: variant, style: seed) and,
    beside it, each variant minus the reference at the same seed and step. The validation split is drawn by the
    training seed, so levels differ between seeds and only the paired panel compares variants."""
    stages = sorted({st for c in cells for st, cv in (c.get("curves") or {}).items() if cv})
    if not stages:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(c["variant"] for c in cells))
    seeds = sorted({int(c["seed"]) for c in cells})
    colours = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    styles = {s: ("-", "--", ":", "-.")[i % 4] for i, s in enumerate(seeds)}
    paired = reference in variants and len(variants) > 1
    ncols = 2 if paired else 1
    fig, axes = plt.subplots(len(stages), ncols, figsize=(5.5 * ncols + 1, 3.8 * len(stages)), squeeze=False)
    for row, stage in zip(axes, stages, strict=True):
        by = {
            (c["variant"], int(c["seed"])): {r["step"]: r["psnr_y"] for r in (c.get("curves") or {}).get(stage) or []}
            for c in cells
        }
        ax = row[0]
        for (v, seed), cv in by.items():
            if cv:
                ax.plot(list(cv), list(cv.values()), color=colours[v], ls=styles[seed], lw=1, label=f"{v}, seed {seed}")
        ax.set_xlabel(f"{stage} step")
        ax.set_ylabel("validation Y-PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if paired:
            ax = row[1]
            for (v, seed), cv in by.items():
                ref = by.get((reference, seed)) or {}
                steps = [st for st in cv if st in ref]
                if v != reference and steps:
                    ax.plot(
                        steps,
                        [cv[st] - ref[st] for st in steps],
                        color=colours[v],
                        ls=styles[seed],
                        lw=1,
                        label=f"{v}, seed {seed}",
                    )
            ax.axhline(0, color="black", lw=0.8)
            ax.set_xlabel(f"{stage} step")
            ax.set_ylabel(f"minus '{reference}', same seed (dB)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return out


def _short(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)


def write(folder: Path, exp_name: str, question: str, numbers: dict[str, Any], about: list[str]) -> dict[str, Path]:
    """report.json, report.md and score.png in ``folder`` (experiments/<name>/), each written whole."""
    from ipt.fileio import write_json

    folder.mkdir(parents=True, exist_ok=True)
    png = plot(numbers, folder / "score.png", f"{exp_name}: {numbers['metric']} (points: seeds; bars: means)")
    cells = numbers.get("cells") or []
    title = f"{exp_name}: validation while training (a line per cell)"
    curves = plot_curves(cells, folder / "curves.png", title, numbers.get("reference"))
    if curves is not None:
        numbers = {**numbers, "curves": curve_summary(cells)}
    md = folder / "report.md"
    tmp = md.with_suffix(".tmp")
    tmp.write_text(markdown(exp_name, question, numbers, about, png.name, curves.name if curves else None))
    tmp.replace(md)
    js = write_json(folder / "report.json", _plain({**numbers, "about": about}), indent=1)
    return {"md": md, "json": Path(js), "png": png} | ({"curves": curves} if curves else {})


def _plain(obj: Any) -> Any:
    """JSON has no NaN or infinity: an undefined number (sd of one seed) is null, an infinite t is "inf"/"-inf"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if obj != obj else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
