"""The lessons' results: per-arm means over seeds, the paper's claims judged, table and plot.

A claim compares one metric between two arms in one of four relations: "better", "worse",
"not better" (worse or within tolerance) and "close" (within tolerance). Losses are better
lower, rates higher. The tolerance is relative for losses and absolute for rates, and it is a
judgement call, stated in the table, not a significance test: with one seed, a small
difference can be noise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence

from codegen2_jax.experiments import tables

LOSS_TOLERANCE = 0.02  # relative: "close" losses differ by at most 2%
RATE_TOLERANCE = 0.02  # absolute: "close" rates differ by at most 2 points

METRICS = {
    "pl_loss": "PL val loss (left to right) ↓",
    "nl_loss": "NL val loss (left to right) ↓",
    "stdlib_infill_em": "held-out infill exact match ↑",
    "humaneval_infill_em": "HumanEval-Infilling single-line exact match ↑",
    "humaneval_infill_pass": "HumanEval-Infilling single-line pass rate ↑",
    "humaneval_pass@1": "HumanEval pass@1 ↑",
    "humaneval_pass@10": "HumanEval pass@10 ↑",
}
LOWER_IS_BETTER = frozenset({"pl_loss", "nl_loss"})
# What the plot shows for each lesson's arms, where measured.
PLOT_METRICS = (
    "pl_loss",
    "nl_loss",
    "stdlib_infill_em",
    "humaneval_infill_pass",
    "humaneval_pass@1",
)


@dataclasses.dataclass(frozen=True)
class Claim:
    """What the paper says about `metric` for `arm` against `baseline`."""

    metric: str
    arm: str
    relation: str  # better | worse | not better | close
    baseline: str


@dataclasses.dataclass(frozen=True)
class Lesson:
    """One lesson of the paper: its arms and claims."""

    number: int
    title: str
    arms: tuple[str, ...]
    claims: tuple[Claim, ...]


def summarize(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation (0 for one value) and count."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def arm_summaries(per_seed: Mapping[str, Sequence[Mapping[str, float]]]) -> dict:
    """arm -> metric -> summary over the seeds that have the metric."""
    out = {}
    for arm, runs in per_seed.items():
        names = sorted({name for run in runs for name in run})
        out[arm] = {n: summarize([r[n] for r in runs if n in r]) for n in names}
    return out


def _better(metric: str, a: float, b: float) -> bool:
    return a < b if metric in LOWER_IS_BETTER else a > b


def _close(metric: str, a: float, b: float) -> bool:
    if metric in LOWER_IS_BETTER:
        return abs(a - b) <= LOSS_TOLERANCE * abs(b)
    return abs(a - b) <= RATE_TOLERANCE


def holds(claim: Claim, a: float, b: float) -> bool:
    """Whether the measured means a (the arm) and b (the baseline) agree with the claim."""
    close = _close(claim.metric, a, b)
    return {
        "better": _better(claim.metric, a, b) and not close,
        "worse": _better(claim.metric, b, a) and not close,
        "not better": close or _better(claim.metric, b, a),
        "close": close,
    }[claim.relation]


def judge(claim: Claim, summaries: Mapping, skipped: Mapping[str, str]) -> dict:
    """One row of the lessons table: the claim, both means, the verdict."""
    a = summaries.get(claim.arm, {}).get(claim.metric)
    b = summaries.get(claim.baseline, {}).get(claim.metric)
    row = dataclasses.asdict(claim) | {"arm_value": a, "baseline_value": b}
    if a is None or b is None:
        row["verdict"] = skipped.get(claim.metric, "not measured")
    else:
        row["verdict"] = "holds" if holds(claim, a["mean"], b["mean"]) else "does not hold"
    return row


def results(
    lessons: Sequence[Lesson],
    summaries: Mapping,
    skipped: Mapping[str, str],
    meta: Mapping,
) -> dict:
    """The JSON document: settings, per-arm summaries and every lesson's judged claims."""
    return dict(meta) | {
        "arms": dict(summaries),
        "skipped_metrics": dict(skipped),
        "lessons": [
            {
                "number": lesson.number,
                "title": lesson.title,
                "arms": list(lesson.arms),
                "claims": [judge(c, summaries, skipped) for c in lesson.claims],
            }
            for lesson in lessons
        ],
    }


def _value(summary: Mapping | None) -> str:
    if summary is None:
        return "–"
    text = f"{summary['mean']:.4f}"
    return text + (f" ± {summary['std']:.4f}" if summary["n"] > 1 else "")


def _claim_text(row: Mapping) -> str:
    return f"{row['arm']} {row['relation']} than {row['baseline']}".replace(
        "close than", "close to"
    )


def lessons_table(document: Mapping) -> str:
    """Markdown: one row per claim, the paper's direction beside the measured values."""
    seeds = str(document["seeds"])
    rows = []
    for lesson in document["lessons"]:
        name = f"{lesson['number']}. {lesson['title']}"
        for row in lesson["claims"]:
            measured = f"{_value(row['arm_value'])} vs {_value(row['baseline_value'])}"
            metric, claim = METRICS[row["metric"]], _claim_text(row)
            rows.append((name, metric, claim, measured, row["verdict"], seeds))
    header = ("lesson", "metric", "paper's claim", "measured (arm vs baseline)", "verdict", "seeds")
    return tables.markdown(header, rows)


def arms_table(document: Mapping) -> str:
    """Markdown: every arm's metrics (mean ± std over seeds)."""
    arms = document["arms"]
    names = [m for m in METRICS if any(m in a for a in arms.values())]
    rows = [(arm, *(_value(summaries.get(m)) for m in names)) for arm, summaries in arms.items()]
    return tables.markdown(("arm", *(METRICS[m] for m in names)), rows)


def markdown(document: Mapping) -> str:
    """The whole report: settings, the lessons table, the arms table, skipped metrics."""
    skipped = [f"- {METRICS[m]}: {why}" for m, why in document["skipped_metrics"].items()]
    tolerance = (
        f"'close' means within {LOSS_TOLERANCE:.0%} (losses, relative) or "
        f"{RATE_TOLERANCE * 100:g} points (rates); means over {document['seeds']} seed(s)."
    )
    parts = [
        f"# CodeGen2 lessons at scale {document['scale']}",
        f"{document['train_steps']} steps per arm; infill fills truncated: "
        f"{document.get('infill_truncation', 'first non-blank line')}; {tolerance}",
        lessons_table(document),
        "## Arms",
        arms_table(document),
    ]
    if skipped:
        parts += ["## Not measured at this scale", "\n".join(skipped)]
    if document.get("caveats"):
        parts += ["## Caveats", "\n".join(f"- {text}" for text in document["caveats"])]
    return "\n\n".join(parts) + "\n"


def plot(document: Mapping, path: str) -> None:
    """One panel per (lesson, metric) that has values: a bar per arm, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on training hosts
    from matplotlib import pyplot

    panels = _panels(document)
    columns = min(4, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / columns))
    figure, axes = pyplot.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis, (title, metric, arms) in zip(axes.flat, panels, strict=False):
        values = [document["arms"][arm][metric] for arm in arms]
        means = [v["mean"] for v in values]
        axis.bar(arms, means, yerr=[v["std"] for v in values])
        if metric in LOWER_IS_BETTER:  # losses differ in the second digit: zoom in
            axis.set_ylim(0.95 * min(means), 1.02 * max(means))
        else:  # rates from 0, with room when every arm scores 0
            axis.set_ylim(0, max(0.05, 1.2 * max(means)))
        axis.set_title(f"{title}\n{METRICS[metric]}", fontsize=9)
        axis.tick_params(axis="x", labelsize=8, rotation=20)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _panels(document: Mapping) -> list[tuple[str, str, list[str]]]:
    panels = []
    for lesson in document["lessons"]:
        for metric in PLOT_METRICS:
            arms = [a for a in lesson["arms"] if metric in document["arms"].get(a, {})]
            if arms:
                panels.append((f"Lesson {lesson['number']}", metric, arms))
    return panels


def write(document: Mapping, out_dir: str) -> str:
    """Writes results.json, results.md and results.png into out_dir; returns the Markdown."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(document, f, indent=1)
    text = markdown(document)
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(text)
    plot(document, os.path.join(out_dir, "results.png"))
    return text
