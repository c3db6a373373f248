"""HumanEval-Infilling: the official files load, their true middles pass, wrong ones fail."""

import pytest

from codegen2_jax.evaluation import humaneval, infilling, sandbox

SIZES = {"single-line": 1033, "multi-line": 5815, "random-span": 1640, "random-span-light": 164}
PER_BENCHMARK = 24  # an even spread of each benchmark runs in the suite; the CLI runs all


@pytest.fixture(scope="module")
def box():
    return sandbox.Sandbox(humaneval.LIMITS)


@pytest.mark.parametrize("benchmark", list(SIZES))
def test_the_official_files_ship_whole(benchmark):
    tasks = infilling.load_tasks(benchmark)
    assert len(tasks) == SIZES[benchmark]
    assert len({t["task_id"] for t in tasks}) == len(tasks)
    assert len(infilling.problems_of(tasks)) == 164
    for task in tasks:
        # Each hole's true middle completes a program that defines the entry point.
        program = infilling.program(task, task["canonical_solution"])
        compile(program, task["task_id"], "exec")
        assert f"def {task['entry_point']}(" in program
    assert (infilling.ASSETS / "LICENSE").read_text().startswith("The MIT License")


def _spread(tasks):
    return [tasks[i * len(tasks) // PER_BENCHMARK] for i in range(PER_BENCHMARK)]


@pytest.mark.parametrize("benchmark", list(SIZES))
def test_true_middles_pass_and_pass_bodies_fail(benchmark, box):
    tasks = _spread(infilling.load_tasks(benchmark))
    right = [t["canonical_solution"] for t in tasks]
    report = humaneval.score_infilling(benchmark, tasks, right, box=box)
    assert report.statuses == {"passed": PER_BENCHMARK}, report.records
    wrong = ["    pass\n" for _ in tasks]
    report = humaneval.score_infilling(benchmark, tasks, wrong, box=box)
    assert report.pass_at_k == {"pass@1": 0.0}


def test_eom_scoring_keeps_the_whole_fill_and_first_line_keeps_one_line(box):
    tasks = _spread(infilling.load_tasks("single-line"))[:6]
    # A right line followed by junk: line-agnostic scoring runs the junk, first-line drops it.
    fills = [t["canonical_solution"].rstrip("\n") + "\nboom(\n" for t in tasks]
    eom = humaneval.score_infilling("single-line", tasks, fills, box=box)
    first = humaneval.score_infilling(
        "single-line", tasks, ["\n" + f for f in fills], truncation="first-line", box=box
    )
    assert eom.pass_at_k == {"pass@1": 0.0} and eom.settings == {"truncation": "eom"}
    assert first.pass_at_k == {"pass@1": 1.0} and first.settings == {"truncation": "first-line"}


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown infilling benchmark 'two-line'"):
        infilling.load_tasks("two-line")
    with pytest.raises(ValueError, match="unknown truncation 'line'"):
        infilling.truncate("x", "line")


def test_cli_scores_a_benchmark_with_its_true_middles(capsys, monkeypatch):
    tasks = _spread(infilling.load_tasks("random-span-light"))[:4]
    monkeypatch.setattr(infilling, "load_tasks", lambda benchmark: tasks)
    assert humaneval.main(["--canonical", "--infill=random-span-light"]) == 0
    out = capsys.readouterr().out
    assert "humaneval_infill/random-span-light: 4 tasks, 4 samples, truncation eom" in out
    assert "100.00%" in out
