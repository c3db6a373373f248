"""Sweeps: the file format and its errors, job directories, the runners' commands, a two-job
sweep with a fake trainer and its summary, the shipped sweeps, and (slow) a real two-job sweep."""

import json
import pathlib
import sys
import textwrap

import pytest

from codegen2_jax import gin_config
from codegen2_jax.experiments import sweep, sweep_summary
from tests import training_runs

SHIPPED = sorted((gin_config.GIN_DIR / "sweeps").glob("*.sweep"))


def parse(text, name="s"):
    return sweep.parse(textwrap.dedent(text), source="s.sweep", name=name)


def test_parse_headers_jobs_and_comments():
    result = parse("""\
        # a comment
        experiment: experiments/tiny_cpu.gin
        include: models/tiny.gin   # more gin
        common: TRAIN_STEPS=2 WARMUP_STEPS=1

        LEARNING_RATE=1e-3  # the baseline
        LEARNING_RATE=3e-3 OBJECTIVE="causal # not a comment"
        EVAL_TASKS=["a", "b"] train.train.log_every=1
    """)
    assert result.name == "s"
    assert result.experiment == "experiments/tiny_cpu.gin"
    assert result.includes == ("models/tiny.gin",)
    assert result.common == (("TRAIN_STEPS", "2"), ("WARMUP_STEPS", "1"))
    assert [job.line for job in result.jobs] == [6, 7, 8]
    assert [job.bindings for job in result.jobs] == [
        (("LEARNING_RATE", "1e-3"),),
        (("LEARNING_RATE", "3e-3"), ("OBJECTIVE", '"causal # not a comment"')),
        (("EVAL_TASKS", '["a", "b"]'), ("train.train.log_every", "1")),
    ]
    assert [job.slug for job in result.jobs] == [
        "learning_rate=1e-3",
        "learning_rate=3e-3,objective=causal_not_a_comment",
        "eval_tasks=a_b,log_every=1",
    ]


@pytest.mark.parametrize(
    "text, error",
    [
        ("LEARNING_RATE=1", "s.sweep: needs exactly one 'experiment:' line, found 0"),
        (
            "experiment: experiments/tiny_cpu.gin\nexperiment: experiments/demo_cpu.gin\nA=1",
            "s.sweep: needs exactly one 'experiment:' line, found 2",
        ),
        ("experiment: experiments/tiny_cpu.gin\n# only a comment", "s.sweep: no jobs"),
        ("experiment: experiments/nope.gin\nA=1", "s.sweep:1: no gin file 'experiments/nope.gin'"),
        ("experiment:\nA=1", "s.sweep:1: missing gin file name"),
        (
            "experiment: experiments/tiny_cpu.gin\nsweep: x\nA=1",
            "s.sweep:2: unknown header 'sweep'",
        ),
        (
            "experiment: experiments/tiny_cpu.gin\nA=1\ncommon: B=2",
            "s.sweep:3: header 'common' after",
        ),
        ("experiment: experiments/tiny_cpu.gin\nA=1 B", "s.sweep:2: 'B' is not a NAME=VALUE"),
        ("experiment: experiments/tiny_cpu.gin\n=1", "s.sweep:2: '=1' is not a NAME=VALUE"),
        ("experiment: experiments/tiny_cpu.gin\nA='x", "s.sweep:2: unterminated ' quote"),
        ("experiment: experiments/tiny_cpu.gin\nA=[1, 2", "s.sweep:2: unclosed bracket"),
        ("experiment: experiments/tiny_cpu.gin\nA=[1)", "s.sweep:2: unbalanced ')'"),
        ("experiment: experiments/tiny_cpu.gin\nMODEL_DIR='x'", "s.sweep:2: MODEL_DIR is set by"),
        ("experiment: experiments/tiny_cpu.gin\nA=1 A=2", "s.sweep:2: A bound twice"),
        (
            "experiment: experiments/tiny_cpu.gin\ncommon: A=1\nB=1\nA=2",
            "s.sweep:4: A bound twice (with common: included)",
        ),
        (
            "experiment: experiments/tiny_cpu.gin\nA='x y'\nA='x_y'",
            "s.sweep:3: same directory name 'a=x_y' as line 2",
        ),
    ],
)
def test_errors_name_the_file_and_line(text, error):
    with pytest.raises(sweep.SweepError) as raised:
        parse(text)
    assert str(raised.value).startswith(error)


def test_load_names_the_sweep_after_its_file(tmp_path):
    path = tmp_path / "lr.sweep"
    path.write_text("experiment: experiments/tiny_cpu.gin\nA=1\n")
    assert sweep.load(path).name == "lr"
    with pytest.raises(sweep.SweepError, match=r"missing\.sweep: cannot read"):
        sweep.load(tmp_path / "missing.sweep")


def test_long_slugs_stay_short_and_distinct():
    first = sweep.slug([("EVAL_TASKS", repr([f"task_{i}" for i in range(40)]))])
    second = sweep.slug([("EVAL_TASKS", repr([f"task_{i}" for i in range(41)]))])
    assert len(first) == len(second) == sweep.MAX_SLUG
    assert first != second


def test_job_dirs_and_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = parse("""\
        experiment: experiments/tiny_cpu.gin
        include: models/tiny.gin
        common: TRAIN_STEPS=2
        OBJECTIVE="causal"
    """)
    (job,) = s.jobs
    assert sweep.model_dir("runs/sweeps", s, job) == f"{tmp_path}/runs/sweeps/s/objective=causal"
    assert sweep.model_dir("gs://b/sweeps/", s, job) == "gs://b/sweeps/s/objective=causal"
    flags = ["--gin_file=models/tiny.gin", "--gin.TRAIN_STEPS=2", '--gin.OBJECTIVE="causal"']
    assert sweep.local_command(s, job, "/r/j") == [
        sys.executable,
        "-m",
        "codegen2_jax.main",
        "--gin_file=experiments/tiny_cpu.gin",
        "--gin.MODEL_DIR='/r/j'",
        *flags,
    ]
    tpu = sweep.tpu_command("launch/run.sh", dry_run=True, babysit=True)
    assert tpu(s, job, "gs://b/j") == [
        "launch/run.sh",
        "--dry-run",
        "--babysit",
        "gs://b/j",
        "experiments/tiny_cpu.gin",
        *flags,
    ]
    assert sweep.summary_dir("gs://b/sweeps", s) == "runs/sweeps/s"
    assert sweep.summary_dir("out", s) == f"{tmp_path}/out/s"


# A stand-in trainer: logs metrics.jsonl like codegen2_jax.main from the learning rate it is
# given, writes final_metrics.json, and fails for a negative rate after logging step 1.
FAKE_TRAINER = """
import json, os, sys
model_dir, lr = sys.argv[1], float(sys.argv[2].partition("=")[2])
os.makedirs(model_dir, exist_ok=True)
with open(os.path.join(model_dir, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": 1, "train/loss": 9.0, "train/grad_norm": 1.0}) + "\\n")
    if lr < 0:
        print("diverged", file=sys.stderr)
        sys.exit(3)
    f.write(json.dumps({"step": 2, "train/loss": 5.0 + lr, "eval/t/loss": 6.0 + lr}) + "\\n")
with open(os.path.join(model_dir, "final_metrics.json"), "w") as f:
    json.dump({"loss": 5.0 + lr}, f)
print("trained")
"""


def fake_command(s, job, job_dir):
    return [sys.executable, "-c", FAKE_TRAINER, job_dir, *sweep.main_flags(s, job)[-1:]]


def test_two_job_sweep_runs_on_after_a_failure_and_writes_its_summary(tmp_path):
    s = parse(
        """\
        experiment: experiments/tiny_cpu.gin
        LEARNING_RATE=-1
        LEARNING_RATE=0.5
        """,
        name="lr",
    )
    root = str(tmp_path / "sweeps")
    results = sweep.run_jobs(s, root, fake_command, log_file="train.log")
    assert [r.status for r in results] == ["failed (exit 3)", "finished"]
    assert [r.model_dir for r in results] == [
        f"{root}/lr/learning_rate=-1",
        f"{root}/lr/learning_rate=0.5",
    ]
    assert (tmp_path / "sweeps/lr/learning_rate=-1/train.log").read_text() == "diverged\n"
    table = sweep_summary.write(s, results, sweep.summary_dir(root, s))
    assert table.splitlines()[2:] == [
        "| job | LEARNING_RATE | status | step | train/loss | eval/t/loss |",
        "| --- | --- | --- | --- | --- | --- |",
        "| learning_rate=-1 | -1 | failed (exit 3) | 1 | 9.0000 |  |",
        "| learning_rate=0.5 | 0.5 | finished | 2 | 5.5000 | 6.5000 |",
    ]
    assert (tmp_path / "sweeps/lr/summary.md").read_text() == table
    summary = json.loads((tmp_path / "sweeps/lr/summary.json").read_text())
    assert summary["sweep"] == "lr" and summary["experiment"] == "experiments/tiny_cpu.gin"
    first, second = summary["jobs"]
    assert first["metrics"] == {"train/loss": 9.0, "train/grad_norm": 1.0}
    assert second["metrics"] == {"train/loss": 5.5, "train/grad_norm": 1.0, "eval/t/loss": 6.5}
    assert second["bindings"] == {"LEARNING_RATE": "0.5"} and second["line"] == 3

    # The summary command tabulates the same directories again, status read from disk.
    (tmp_path / "lr.sweep").write_text(
        "experiment: experiments/tiny_cpu.gin\nLEARNING_RATE=-1\nLEARNING_RATE=0.5\nA=1\n"
    )
    assert sweep.main(["summary", str(tmp_path / "lr.sweep"), f"--root={root}"]) == 1
    statuses = [
        j["status"] for j in json.loads((tmp_path / "sweeps/lr/summary.json").read_text())["jobs"]
    ]
    assert statuses == ["unfinished", "finished", "not run"]


def test_a_wrong_sweep_file_exits_1_naming_the_line(tmp_path, caplog):
    path = tmp_path / "bad.sweep"
    path.write_text("experiment: experiments/tiny_cpu.gin\nLEARNING_RATE\n")
    assert sweep.main(["local", str(path)]) == 1
    assert f"{path}:2: 'LEARNING_RATE' is not a NAME=VALUE gin binding" in caplog.text


def test_dry_run_and_babysit_are_for_the_tpu_runner(capsys):
    with pytest.raises(SystemExit):
        sweep.main(["local", "x.sweep", "--dry_run"])
    assert "--dry_run and --babysit are for the tpu runner" in capsys.readouterr().err


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_sweeps_parse_and_bind(path):
    import tasks  # noqa: F401  (the experiments' gin files name registered tasks)

    s = sweep.load(path)
    for job in s.jobs:
        bindings = [f"{n} = {v}" for n, v in s.common + job.bindings] + ["MODEL_DIR = '/unused'"]
        gin_config.parse([s.experiment, *s.includes], bindings)


def test_a_sweep_ships():
    assert "demo_lr.sweep" in [p.name for p in SHIPPED]


@pytest.mark.slow
def test_real_two_job_sweep(tmp_path, monkeypatch, corpus_dir):
    training_runs.set_subprocess_env(monkeypatch)  # one device per job
    monkeypatch.setenv("TFDS_DATA_DIR", corpus_dir)  # the session's embedded corpus
    path = tmp_path / "real.sweep"
    path.write_text(
        textwrap.dedent("""\
        experiment: experiments/tiny_cpu.gin
        common: TRAIN_STEPS=2 WARMUP_STEPS=1
        LEARNING_RATE=1e-3
        OBJECTIVE="causal"
    """)
    )
    root = tmp_path / "sweeps"
    assert sweep.main(["local", str(path), f"--root={root}"]) == 0
    summary = json.loads((root / "real" / "summary.json").read_text())
    assert [job["status"] for job in summary["jobs"]] == ["finished", "finished"]
    for job in summary["jobs"]:
        assert job["step"] == 2 and job["metrics"]["train/loss"] > 0
        assert (pathlib.Path(job["model_dir"]) / "checkpoints" / "2").is_dir()
