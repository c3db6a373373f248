"""The paper's lessons as experiments: arms, scales, and the command that runs and reports them.

  python -m codegen2_jax.experiments.lessons --lessons=1,2,3,4,5 --scale=tiny --seeds=1 --out=DIR \
      [--gin.NAME=VALUE ...]

Each arm is one gin file in gin/experiments/lessons/ and trains as a sweep of one job per seed
(codegen2_jax.experiments.sweep: DIR/<arm>/seed=<s>, resumable), with the scale's model file
and bindings appended. Arms shared by several lessons (causal is the control of Lessons 1, 2,
3 and 5) train once. After training, each job's newest checkpoint is sampled
(codegen2_jax.experiments.lessons_eval), and
DIR/results.json, results.md and results.png set the measurements beside the paper's claims
(codegen2_jax.experiments.lessons_report). Rerunning the command skips finished jobs and
evaluations.
"""

from __future__ import annotations

from codegen2_jax import console  # first: native libraries read their log levels at load

# isort: split
import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence

from codegen2_jax import gin_config, metrics
from codegen2_jax.experiments import lessons_eval, lessons_report, sweep, sweep_summary
from codegen2_jax.experiments.lessons_eval import EvalSettings
from codegen2_jax.experiments.lessons_report import Claim, Lesson
from codegen2_jax.sampling import trained_model

logger = logging.getLogger(__name__)

ARMS = {
    name: f"experiments/lessons/{name}.gin"
    for name in (
        "causal",
        "prefix_lm",
        "fim",
        "codegen2_mix",
        "span_infill",
        "nl_pl_mix",
        "multi_epoch",
    )
}
# Each loss is the final evaluation of the task that a base.gin macro names.
# The held-out losses reported, in the order of every arm's EVAL_TASKS (experiments/lessons/
# base.gin: PL_EVAL_TASK, then NL_EVAL_TASK), which each checkpoint's run record keeps.
LOSS_NAMES = ("pl_loss", "nl_loss")

LESSONS = {
    1: Lesson(
        1,
        "Prefix-LM's benefits are questionable",
        ("causal", "prefix_lm"),
        (
            Claim("pl_loss", "prefix_lm", "not better", "causal"),
            Claim("humaneval_pass@1", "prefix_lm", "not better", "causal"),
        ),
    ),
    2: Lesson(
        2,
        "Infill is not a free lunch",
        ("causal", "fim"),
        (
            Claim("pl_loss", "fim", "worse", "causal"),
            Claim("humaneval_pass@1", "fim", "worse", "causal"),
            Claim("stdlib_infill_em", "fim", "better", "causal"),
        ),
    ),
    3: Lesson(
        3,
        "Causal LM + within-file span corruption is sufficient",
        ("causal", "codegen2_mix", "span_infill"),
        (
            Claim("pl_loss", "codegen2_mix", "close", "causal"),
            Claim("pl_loss", "span_infill", "worse", "codegen2_mix"),
            Claim("stdlib_infill_em", "codegen2_mix", "better", "causal"),
            Claim("humaneval_infill_pass", "codegen2_mix", "better", "causal"),
        ),
    ),
    4: Lesson(
        4,
        "A natural + programming language mixture is promising",
        ("codegen2_mix", "nl_pl_mix"),
        (
            Claim("pl_loss", "nl_pl_mix", "close", "codegen2_mix"),
            Claim("nl_loss", "nl_pl_mix", "better", "codegen2_mix"),
            Claim("humaneval_pass@1", "nl_pl_mix", "close", "codegen2_mix"),
        ),
    ),
    5: Lesson(
        5,
        "Multi-epoch training is beneficial",
        ("causal", "multi_epoch"),
        (
            # At equal steps: repeating a smaller corpus costs little against unique data, so
            # training on past one epoch is worth it when unique data runs out.
            Claim("pl_loss", "multi_epoch", "close", "causal"),
            Claim("humaneval_pass@1", "multi_epoch", "close", "causal"),
        ),
    ),
}


@dataclasses.dataclass(frozen=True)
class Scale:
    """One size of the experiment.

    Attributes:
      name: tiny (2-core CPU, about 30 minutes for one seed of every lesson), small or 350m
        (one GPU).
      model: a gin file appended to each arm (None: base.gin's tiny model).
      bindings: gin bindings appended to each arm (NAME, VALUE).
      evaluation: what to sample after training.
      skipped: metric -> why this scale does not measure it.
      caveats: (the lessons it concerns, what their reader must know at this scale).
    """

    name: str
    model: str | None
    bindings: tuple[tuple[str, str], ...]
    evaluation: EvalSettings
    skipped: tuple[tuple[str, str], ...] = ()
    caveats: tuple[tuple[tuple[int, ...], str], ...] = ()


_GPU = (("VOCAB_SIZE", "8192"), ("COMPUTE_DTYPE", '"bfloat16"'))
# The embedded corpus is small: only the tiny scale reads it for less than an epoch.
_REPEATED_CORPUS = (
    "With the embedded corpus (stdlib_py: 1.23M training tokens) every arm repeats its data "
    "many times at this scale (67 epochs at small, about 1,000 at 350m), and Lesson 5 has no "
    "one-epoch control. Bind a larger corpus (PL_CORPUS, NL_PL_CORPUS, CAPPED_PL_CORPUS and "
    "the held-out PL_EVAL_TASK, NL_EVAL_TASK; gin/experiments/lessons/base.gin)."
)
SCALES = {
    "tiny": Scale(
        "tiny",
        None,
        (),
        EvalSettings(stdlib_infill=64, humaneval_infill=64, humaneval_samples=0),
        skipped=(
            ("humaneval_pass@1", "skipped at tiny: a ~1M-parameter model solves none"),
            ("humaneval_pass@10", "skipped at tiny"),
        ),
        caveats=(
            (
                (5,),
                "Lesson 5 at tiny: the control reads about half an epoch of stdlib_py, "
                "multi_epoch about six of its tenth (~92k tokens, under 0.1 per parameter), "
                "a regime of memorisation far from the paper's many tokens per parameter.",
            ),
        ),
    ),
    "small": Scale(
        "small",
        "models/small.gin",
        _GPU
        + (
            ("TRAIN_STEPS", "5000"),
            ("BATCH_SIZE", "32"),
            ("SEQ_LEN", "512"),
            ("LEARNING_RATE", "1e-3"),
            ("END_LEARNING_RATE", "1e-4"),
            ("WARMUP_STEPS", "200"),
            ("EVAL_BATCHES", "32"),
        ),
        EvalSettings(stdlib_infill=256, humaneval_infill=None, humaneval_samples=1),
        skipped=(("humaneval_pass@10", "greedy, one sample per problem at small"),),
        caveats=((tuple(LESSONS), _REPEATED_CORPUS),),
    ),
    "350m": Scale(
        "350m",
        "models/350m.gin",
        _GPU
        + (
            ("TRAIN_STEPS", "20000"),
            ("BATCH_SIZE", "64"),
            ("SEQ_LEN", "1024"),
            ("LEARNING_RATE", "3e-4"),
            ("END_LEARNING_RATE", "3e-5"),
            ("WARMUP_STEPS", "1000"),
            ("EVAL_BATCHES", "64"),
        ),
        EvalSettings(
            stdlib_infill=512, humaneval_infill=None, humaneval_samples=10, temperature=0.8
        ),
        caveats=((tuple(LESSONS), _REPEATED_CORPUS),),
    ),
}


def arms_of(lessons: Sequence[int]) -> list[str]:
    """The arms the lessons need, each once, in the lessons' order."""
    return list(dict.fromkeys(arm for n in lessons for arm in LESSONS[n].arms))


def arm_sweep(arm: str, scale: Scale, seeds: int, extra: Sequence[tuple[str, str]]) -> sweep.Sweep:
    """One arm as a sweep: one job per seed, the scale's and the caller's bindings common."""
    jobs = []
    for seed in range(seeds):
        bindings = (("SEED", str(seed)),)
        jobs.append(sweep.Job(line=seed + 1, bindings=bindings, slug=sweep.slug(bindings)))
    return sweep.Sweep(
        name=arm,
        experiment=ARMS[arm],
        includes=(scale.model,) if scale.model else (),
        common=scale.bindings + tuple(extra),
        jobs=tuple(jobs),
    )


def _finished(model_dir: str) -> bool:
    return os.path.exists(os.path.join(model_dir, metrics.FINAL_METRICS_FILE))


def train_arm(arm_jobs: sweep.Sweep, out: str) -> list[str]:
    """Trains the arm's unfinished jobs one after another; returns every job's MODEL_DIR."""
    dirs = [sweep.model_dir(out, arm_jobs, job) for job in arm_jobs.jobs]
    todo = tuple(j for j, d in zip(arm_jobs.jobs, dirs, strict=True) if not _finished(d))
    if todo:
        remaining = dataclasses.replace(arm_jobs, jobs=todo)
        sweep.run_jobs(remaining, out, sweep.local_command, log_file="train.log")
    return dirs


def job_metrics(model_dir: str, last: dict[str, float], scale: Scale, seed: int) -> dict:
    """A finished job's losses (`last`: its final metrics) and sampling metrics; {} if it failed."""
    if not _finished(model_dir):
        logger.error("no final metrics in %s: see its train.log", model_dir)
        return {}
    losses = _held_out_losses(model_dir, last)
    return losses | lessons_eval.evaluate_job(model_dir, scale.evaluation, seed)


def _held_out_losses(model_dir: str, last: dict[str, float]) -> dict[str, float]:
    """{pl_loss, nl_loss} of a job's final metrics, its eval tasks read from its run record."""
    eval_tasks = trained_model.saved_run(os.path.join(model_dir, "checkpoints")).eval_tasks
    if not eval_tasks:
        logger.error("%s evaluated no held-out task: no held-out loss is reported", model_dir)
    # A run that evaluates fewer tasks (a smoke run: PL_EVAL_TASK alone) reports what it has.
    names = zip(LOSS_NAMES, eval_tasks, strict=False)
    return {name: last[key] for name, task in names if (key := f"eval/{task}/loss") in last}


def run(
    lessons: Sequence[int],
    scale: Scale,
    seeds: int,
    out: str,
    extra: Sequence[tuple[str, str]] = (),
) -> dict:
    """Trains and evaluates every arm the lessons need; writes and returns the results."""
    per_arm, steps = {}, set()
    for arm in arms_of(lessons):
        dirs = train_arm(arm_sweep(arm, scale, seeds, extra), out)
        finals = [sweep_summary.final_metrics(d) for d in dirs]  # (last step, last values)
        start = time.monotonic()
        runs = [
            job_metrics(d, last, scale, seed)
            for seed, (d, (_, last)) in enumerate(zip(dirs, finals, strict=True))
        ]
        logger.info("%s: evaluated in %.0f s", arm, time.monotonic() - start)
        per_arm[arm] = [r for r in runs if r]
        steps |= {step for step, _ in finals} - {None}
    meta = {
        "scale": scale.name,
        "seeds": seeds,
        "train_steps": ", ".join(map(str, sorted(steps))),
        "extra": dict(extra),
        "infill_truncation": scale.evaluation.truncation,
        "caveats": [text for concerned, text in scale.caveats if set(concerned) & set(lessons)],
    }
    document = lessons_report.results(
        [LESSONS[n] for n in lessons],
        lessons_report.arm_summaries(per_arm),
        dict(scale.skipped),
        meta,
    )
    print(lessons_report.write(document, out))
    return document


def _parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    parser = argparse.ArgumentParser(
        prog="python -m codegen2_jax.experiments.lessons", description=__doc__
    )
    parser.add_argument("--lessons", default="1,2,3,4,5", help="comma-separated, of 1-5")
    parser.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", required=True, help="job dirs and results")
    parser.add_argument("--stdlib_infill", type=int, help="held-out functions (scale's default)")
    parser.add_argument("--humaneval_infill", type=int, help="HumanEval infill tasks")
    parser.add_argument("--verbose", action="store_true", help="every library's INFO lines too")
    rest, bindings = gin_config.split_gin_args(list(argv))
    args = parser.parse_args(rest)
    unknown = set(args.lessons.split(",")) - {str(n) for n in LESSONS}
    if unknown:
        parser.error(f"unknown lessons {sorted(unknown)}; choose from {sorted(LESSONS)}")
    pairs = [tuple(part.strip() for part in b.split("=", 1)) for b in bindings]
    return args, pairs


def _scale(args: argparse.Namespace) -> Scale:
    """The chosen scale with the command line's evaluation sizes."""
    scale = SCALES[args.scale]
    sizes = {"stdlib_infill": args.stdlib_infill, "humaneval_infill": args.humaneval_infill}
    sizes = {k: v for k, v in sizes.items() if v is not None}
    return dataclasses.replace(scale, evaluation=dataclasses.replace(scale.evaluation, **sizes))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the lessons; exits 1 when an arm has no finished job."""
    args, extra = _parse_args(sys.argv[1:] if argv is None else argv)
    console.configure(args.verbose)
    lessons = sorted({int(n) for n in args.lessons.split(",")})
    document = run(lessons, _scale(args), args.seeds, os.path.abspath(args.out), extra)
    return 1 if any(not document["arms"].get(arm) for arm in arms_of(lessons)) else 0


if __name__ == "__main__":
    sys.exit(main())
