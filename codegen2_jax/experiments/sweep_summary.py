"""Sweep summaries: each job's final metrics, tabulated as summary.md and summary.json.

A job's final metrics are the last logged value of every scalar in its MODEL_DIR/metrics.jsonl
(train/loss, eval/<task>/loss, ...) and the last step logged, so a failed or stopped job still
shows how far it got.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from etils import epath

from codegen2_jax import metrics
from codegen2_jax.experiments import tables

if TYPE_CHECKING:
    from codegen2_jax.experiments.sweep import Sweep

DEFAULT_METRICS = r"loss$"  # the table's metric columns; summary.json keeps every scalar


@dataclasses.dataclass(frozen=True)
class JobResult:
    """How one job ended.

    Attributes:
      model_dir: the job's MODEL_DIR.
      status: finished, failed (exit N), unfinished or not run (the last two read from disk).
      seconds: wall time of the run, None when not run by this process.
    """

    model_dir: str
    status: str
    seconds: float | None = None


def final_metrics(model_dir: str) -> tuple[int | None, dict[str, float]]:
    """(last step logged, last value of each scalar); (None, {}) when nothing was logged."""
    try:
        by_step = metrics.read_metrics(model_dir)
    except (OSError, ValueError):  # not started, or a bucket this machine cannot open
        return None, {}
    last: dict[str, float] = {}
    for step in sorted(by_step):
        last.update(by_step[step])
    return (max(by_step) if by_step else None), last


def from_dirs(model_dirs: Sequence[str]) -> list[JobResult]:
    """Results read back from job directories, for tabulating a sweep run earlier."""
    results = []
    for model_dir in model_dirs:
        if (epath.Path(model_dir) / metrics.FINAL_METRICS_FILE).exists():
            status = "finished"
        elif final_metrics(model_dir)[0] is not None:
            status = "unfinished"
        else:
            status = "not run"
        results.append(JobResult(model_dir, status))
    return results


def records(sweep: Sweep, results: Sequence[JobResult]) -> list[dict]:
    """One JSON-ready record per job: its line, bindings, directory, status and metrics."""
    out = []
    for job, result in zip(sweep.jobs, results, strict=True):
        step, values = final_metrics(result.model_dir)
        out.append(
            {
                "line": job.line,
                "slug": job.slug,
                "bindings": dict(job.bindings),
                "model_dir": result.model_dir,
                "status": result.status,
                "seconds": result.seconds,
                "step": step,
                "metrics": values,
            }
        )
    return out


def markdown(jobs: Sequence[dict], metric_pattern: str = DEFAULT_METRICS) -> str:
    """A Markdown table: job, its swept bindings, status, step, and the matching metrics."""
    swept = list(dict.fromkeys(name for job in jobs for name in job["bindings"]))
    names = {name for job in jobs for name in job["metrics"] if re.search(metric_pattern, name)}
    # Training columns before evaluation ones, each group alphabetical.
    columns = sorted(names, key=lambda name: (not name.startswith("train/"), name))
    header = ["job", *swept, "status", "step", *columns]
    rows = [
        [
            job["slug"],
            *(job["bindings"].get(name, "") for name in swept),
            job["status"],
            "" if job["step"] is None else str(job["step"]),
            *(_number(job["metrics"].get(name)) for name in columns),
        ]
        for job in jobs
    ]
    return tables.markdown(header, rows)


def write(
    sweep: Sweep,
    results: Sequence[JobResult],
    out_dir: str,
    metric_pattern: str = DEFAULT_METRICS,
) -> str:
    """Writes out_dir/summary.md and out_dir/summary.json; returns the Markdown."""
    jobs = records(sweep, results)
    text = f"# Sweep {sweep.name}: {sweep.experiment}\n\n{markdown(jobs, metric_pattern)}\n"
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "summary.md"), "w", encoding="utf-8") as f:
        f.write(text)
    summary = {
        "sweep": sweep.name,
        "experiment": sweep.experiment,
        "includes": list(sweep.includes),
        "common": dict(sweep.common),
        "jobs": jobs,
    }
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return text


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
