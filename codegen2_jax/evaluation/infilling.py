"""HumanEval-Infilling: the four official benchmarks, their samples and how a fill is truncated.

The benchmark files of openai/human-eval-infilling (Bavarian et al. 2022, MIT; shipped in
assets/human_eval_infilling/ with their LICENSE) hold, per task, the text before the hole
(prompt), after it (suffix), the true middle (canonical_solution), and the problem's tests:

    single-line 1033 tasks, multi-line 5815, random-span 1640, random-span-light 164

A filled program is prompt + middle + suffix, scored against the tests as HumanEval is. How a
model's fill becomes the middle is the truncation, named in every report:

- "eom" (the CodeGen2 paper's "line-agnostic" scoring, the default): the fill as generated,
  up to `<eom>` (the sampler stops there) or the token limit;
- "first-line": only the fill's first non-blank line, with its newline (a single-line rule
  that small models need less than long fills do).
"""

from __future__ import annotations

import gzip
import json
import pathlib
from collections.abc import Sequence

ASSETS = pathlib.Path(__file__).resolve().parent / "assets" / "human_eval_infilling"
BENCHMARKS = {
    "single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random-span": "HumanEval-RandomSpanInfilling.jsonl.gz",
    "random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}
EOM = "eom"
FIRST_LINE = "first-line"
TRUNCATIONS = (EOM, FIRST_LINE)


def load_tasks(benchmark: str) -> list[dict]:
    """The tasks of one benchmark, in file order, each with its HumanEval problem id.

    Each task: task_id ("SingleLineInfilling/HumanEval/0/L0"), problem ("HumanEval/0"),
    prompt, suffix, canonical_solution, test, entry_point.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown infilling benchmark {benchmark!r}; one of {list(BENCHMARKS)}")
    with gzip.open(ASSETS / BENCHMARKS[benchmark], "rt", encoding="utf-8") as f:
        tasks = [json.loads(line) for line in f if line.strip()]
    for task in tasks:
        task["problem"] = "/".join(task["task_id"].split("/")[1:3])
    return tasks


def problems_of(tasks: Sequence[dict]) -> dict[str, dict]:
    """problem id -> its test and entry point, as humaneval.score reads them."""
    return {t["problem"]: {"test": t["test"], "entry_point": t["entry_point"]} for t in tasks}


def truncate(fill: str, truncation: str = EOM) -> str:
    """The middle a fill puts in the program (module docstring)."""
    if truncation == EOM:
        return fill
    if truncation == FIRST_LINE:
        line = next((text for text in fill.splitlines() if text.strip()), "")
        return line + "\n"
    raise ValueError(f"unknown truncation {truncation!r}; one of {TRUNCATIONS}")


def program(task: dict, middle: str) -> str:
    """The filled program, without its tests."""
    return task["prompt"] + middle + task["suffix"]
