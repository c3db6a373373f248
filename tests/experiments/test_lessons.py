"""The lessons runner: arms, claims, held-out infill problems, verdicts, table, smoke run."""

import dataclasses
import json
import textwrap

import gin
import jax
import pytest

from codegen2_jax import gin_config
from codegen2_jax.experiments import lessons, lessons_eval, lessons_report
from codegen2_jax.experiments.lessons_report import Claim
from codegen2_jax.model import TransformerConfig
from codegen2_jax.sampling import trained_model
from tests import training_runs


def test_every_arm_ships_and_every_lesson_names_known_arms():
    for path in lessons.ARMS.values():
        assert (gin_config.GIN_DIR / path).is_file()
    for lesson in lessons.LESSONS.values():
        assert set(lesson.arms) <= set(lessons.ARMS)
        assert {c.arm for c in lesson.claims} | {c.baseline for c in lesson.claims} <= set(
            lesson.arms
        )
        assert set(c.metric for c in lesson.claims) <= set(lessons_report.METRICS)
        assert len(lesson.arms) >= 2 and lesson.claims


def test_shared_arms_train_once():
    assert lessons.arms_of([1, 2, 3, 5]) == [
        "causal",
        "prefix_lm",
        "fim",
        "codegen2_mix",
        "span_infill",
        "multi_epoch",
    ]


def test_an_arm_is_a_sweep_with_one_job_per_seed():
    scale = lessons.SCALES["small"]
    arm = lessons.arm_sweep("fim", scale, 2, [("TRAIN_STEPS", "7")])
    assert arm.experiment == "experiments/lessons/fim.gin"
    assert arm.includes == ("models/small.gin",)
    assert [job.slug for job in arm.jobs] == ["seed=0", "seed=1"]
    assert arm.common[-1] == ("TRAIN_STEPS", "7")  # the caller's bindings come last


def test_function_problems_mask_a_single_line_body_statement():
    source = textwrap.dedent('''\
        def add(a, b):
            """Adds."""
            total = a + b
            result = total * 1
            return result
        def too_short():
            pass
    ''')
    (problem,) = lessons_eval.function_problems("m.py", source, max_lines=12)
    assert problem["line"] == "    result = total * 1\n"
    assert problem["prefix"].endswith("total = a + b\n")
    assert problem["suffix"] == "    return result\n"
    assert problem["prefix"] + problem["line"] + problem["suffix"] == source.split("def too")[0]


def test_heldout_problems_come_from_validation_modules():
    from codegen2_jax.data import corpus

    percent = corpus.CodegenStdlib.BUILDER_CONFIGS[0].validation_percent
    problems = lessons_eval.heldout_problems(5, max_lines=12)
    assert len(problems) == 5
    for problem in problems:
        module = problem["task_id"].rsplit(":", 1)[0]
        assert corpus.split_of(module, percent) == "validation"


def test_exact_match_truncates_as_asked():
    assert lessons_eval.exact_match("  x = 1\n", "x = 1\n", "eom")
    assert not lessons_eval.exact_match("  x = 1\nmore", "x = 1\n", "eom")  # the whole fill
    assert lessons_eval.exact_match("  x = 1\nmore", "x = 1\n", "first-line")
    assert lessons_eval.exact_match("\n\n    x = 1", "x = 1\n", "first-line")
    assert not lessons_eval.exact_match("x = 2", "x = 1\n", "first-line")


@pytest.mark.parametrize(
    "relation, arm, baseline, expected",
    [
        ("better", 2.0, 3.0, True),  # a lower loss
        ("better", 2.99, 3.0, False),  # within 2%: close, not better
        ("worse", 3.5, 3.0, True),
        ("not better", 2.99, 3.0, True),
        ("not better", 2.0, 3.0, False),
        ("close", 3.05, 3.0, True),
        ("close", 3.5, 3.0, False),
    ],
)
def test_verdicts_on_a_loss(relation, arm, baseline, expected):
    assert lessons_report.holds(Claim("pl_loss", "a", relation, "b"), arm, baseline) is expected


def test_rates_are_better_higher():
    assert lessons_report.holds(Claim("stdlib_infill_em", "a", "better", "b"), 0.3, 0.1)
    assert not lessons_report.holds(Claim("stdlib_infill_em", "a", "better", "b"), 0.1, 0.3)


def test_table_sets_the_claim_beside_the_measurement():
    summaries = lessons_report.arm_summaries(
        {"causal": [{"pl_loss": 3.0}, {"pl_loss": 3.2}], "prefix_lm": [{"pl_loss": 3.5}]}
    )
    document = lessons_report.results(
        [lessons.LESSONS[1]],
        summaries,
        {"humaneval_pass@1": "skipped at tiny"},
        {"scale": "tiny", "seeds": 2, "train_steps": "600", "caveats": ["Mind the gap."]},
    )
    text = lessons_report.markdown(document)
    assert "prefix_lm not better than causal | 3.5000 vs 3.1000 ± 0.1414 | holds | 2 |" in text
    assert "skipped at tiny" in text
    assert "## Caveats\n\n- Mind the gap." in text


@pytest.mark.slow  # about a minute: trains two arms for 3 steps
def test_smoke_run_writes_results(tmp_path, monkeypatch, corpus_dir):
    training_runs.set_subprocess_env(monkeypatch)  # one device per training subprocess
    assert len(jax.devices()) == 8  # this process evaluates with the session's 8 fake devices
    monkeypatch.setenv("TFDS_DATA_DIR", corpus_dir)  # the session's embedded corpus
    out = tmp_path / "lessons"
    code = lessons.main(
        [
            "--lessons=1",
            f"--out={out}",
            "--stdlib_infill=2",
            "--humaneval_infill=2",
            "--gin.TRAIN_STEPS=3",
            "--gin.WARMUP_STEPS=1",
            "--gin.EVAL_BATCHES=1",
            # The programming-language loss only: one evaluation task keeps the smoke run short.
            '--gin.EVAL_TASKS=["stdlib_py_v1_causal"]',
        ]
    )
    assert code == 0
    document = json.loads((out / "results.json").read_text())
    assert document["train_steps"] == "3" and document["seeds"] == 1
    for arm in ("causal", "prefix_lm"):
        metrics = document["arms"][arm]
        assert metrics["pl_loss"]["mean"] > 0
        assert 0 <= metrics["humaneval_infill_pass"]["mean"] <= 1
        assert metrics["stdlib_infill_em"]["n"] == 1
    (claim, skipped) = document["lessons"][0]["claims"]
    assert claim["verdict"] in ("holds", "does not hold")
    assert skipped["verdict"].startswith("skipped at tiny")
    assert (out / "results.png").stat().st_size > 0
    assert "| 1. Prefix-LM" in (out / "results.md").read_text()


def test_a_scale_binds_its_own_corpora_through_the_base_macros():
    import tasks  # noqa: F401  (registers the tasks the arms name)
    from tasks import registry

    bindings = ["MODEL_DIR = '/unused'", "PL_CORPUS = 'the_stack_python'", "NL_PL_CORPUS = 'x'"]
    expected = {
        "causal": "the_stack_python_v1_causal",
        "nl_pl_mix": "x_v1_nl_pl_mix",
        "multi_epoch": "stdlib_py_tenth_v1_causal",
    }
    for arm, task in expected.items():
        gin_config.parse([lessons.ARMS[arm]], bindings)
        assert gin_config.configured(registry.task_name)() == task


def test_each_arm_tells_train_whether_it_trains_a_prefix_lm():
    import tasks  # noqa: F401  (registers the tasks the arms name)

    for arm, experiment in lessons.ARMS.items():
        gin_config.parse([experiment], ["MODEL_DIR = '/unused'"])
        bound = gin.query_parameter("train.train.prefix_lm").scoped_configurable_fn()
        assert bound == (arm == "prefix_lm"), arm


def test_held_out_losses_follow_the_eval_tasks_of_the_run_record(monkeypatch):
    run = trained_model.RunRecord(
        TransformerConfig(), False, "t", ("pl_task", "nl_task"), vocabulary=None
    )
    monkeypatch.setattr(trained_model, "saved_run", lambda directory: run)
    last = {"eval/pl_task/loss": 2.0, "eval/nl_task/loss": 3.0, "loss": 1.0}
    assert lessons._held_out_losses("/job", last) == {"pl_loss": 2.0, "nl_loss": 3.0}
    pl_only = dataclasses.replace(run, eval_tasks=("pl_task",))
    monkeypatch.setattr(trained_model, "saved_run", lambda directory: pl_only)
    assert lessons._held_out_losses("/job", last) == {"pl_loss": 2.0}
