"""Gin sweeps: the .sweep file format, each job's MODEL_DIR, and the local and TPU runners.

A sweep file (gin/sweeps/*.sweep) names one experiment and lists one job per line::

    # Learning rates on the CPU demo.
    experiment: experiments/demo_cpu.gin
    include: models/tiny.gin                 # optional, repeatable: gin files after it
    common: TRAIN_STEPS=50 WARMUP_STEPS=5    # optional, repeatable: bindings for every job
    LEARNING_RATE=1e-3
    LEARNING_RATE=3e-3 OBJECTIVE="causal"

A job line holds space-separated NAME=VALUE gin bindings, VALUE in gin syntax (3e-4, "causal",
[1, 2]); spaces are allowed only inside quotes or brackets, and # starts a comment outside
quotes. Headers come before the first job. Each job trains into ROOT/<sweep>/<slug>, where
<sweep> is the file's name without .sweep and the slug spells its own bindings
(learning_rate=3e-3,objective=causal): rerunning a sweep resumes every job from its checkpoints.

  python -m codegen2_jax.experiments.sweep local gin/sweeps/demo_lr.sweep    # jobs one by one
  python -m codegen2_jax.experiments.sweep summary gin/sweeps/demo_lr.sweep  # the table again
  launch/sweep.sh gin/sweeps/demo_lr.sweep              # on the TPU VM (runner "tpu")
"""

from __future__ import annotations

from codegen2_jax import console  # first: native libraries read their log levels at load

# isort: split
import argparse
import dataclasses
import hashlib
import logging
import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from codegen2_jax import gin_config
from codegen2_jax.experiments import sweep_summary

logger = logging.getLogger(__name__)

REPO_ROOT = gin_config.GIN_DIR.parent
HEADER = re.compile(r"^(?P<key>[A-Za-z_]+)\s*:\s*(?P<value>.*)$")
BINDING = re.compile(r"^(?P<name>[A-Za-z_][\w./]*)=(?P<value>.+)$", re.DOTALL)
MAX_SLUG = 120  # longer slugs are cut and end in a hash of the whole, to stay unique
OPENERS, CLOSERS = "([{", ")]}"

Binding = tuple[str, str]


class SweepError(ValueError):
    """A sweep file that cannot be run; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One line of a sweep file: its bindings and the directory name they make."""

    line: int
    bindings: tuple[Binding, ...]
    slug: str


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A parsed sweep file."""

    name: str
    experiment: str
    includes: tuple[str, ...]
    common: tuple[Binding, ...]
    jobs: tuple[Job, ...]


def load(path: str | os.PathLike) -> Sweep:
    """Reads and parses a sweep file; its name is the file name without .sweep."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SweepError(f"{path}: cannot read: {e.strerror}") from e
    return parse(text, source=str(path), name=path.name.removesuffix(".sweep"))


def parse(text: str, *, source: str, name: str) -> Sweep:
    """Parses sweep text; source names it in errors ("<source>:<line>: ...")."""
    headers: dict[str, list] = {"experiment": [], "include": [], "common": []}
    jobs: list[Job] = []
    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{source}:{number}"
        line = _strip_comment(raw, where).strip()
        if not line:
            continue
        header = HEADER.match(line)
        if header:
            _add_header(headers, header["key"], header["value"].strip(), where, bool(jobs))
        else:
            bindings = _bindings(line, where)
            jobs.append(Job(number, bindings, slug(bindings)))
    return _build(headers, jobs, source, name)


def _add_header(headers: dict, key: str, value: str, where: str, after_jobs: bool) -> None:
    if key not in headers:
        raise SweepError(f"{where}: unknown header {key!r} (experiment, include or common)")
    if after_jobs:
        raise SweepError(f"{where}: header {key!r} after the first job; put headers first")
    if key == "common":
        headers[key].extend(_bindings(value, where))
    else:
        headers[key].append((_gin_file(value, where), where))


def _build(headers: dict, jobs: list[Job], source: str, name: str) -> Sweep:
    experiments = headers["experiment"]
    if len(experiments) != 1:
        raise SweepError(
            f"{source}: needs exactly one 'experiment:' line, found {len(experiments)}"
        )
    if not jobs:
        raise SweepError(f"{source}: no jobs (one line of NAME=VALUE bindings per job)")
    common = tuple(headers["common"])
    seen: dict[str, int] = {}
    for job in jobs:
        _check_names(common + job.bindings, f"{source}:{job.line}")
        if job.slug in seen:
            raise SweepError(
                f"{source}:{job.line}: same directory name {job.slug!r} as line {seen[job.slug]}"
            )
        seen[job.slug] = job.line
    return Sweep(
        name=name,
        experiment=experiments[0][0],
        includes=tuple(file for file, _ in headers["include"]),
        common=common,
        jobs=tuple(jobs),
    )


def _gin_file(value: str, where: str) -> str:
    """A gin file as given (relative to gin/ or absolute), which must exist."""
    if not value:
        raise SweepError(f"{where}: missing gin file name")
    if not (gin_config.GIN_DIR / value).is_file() and not os.path.isfile(value):
        raise SweepError(f"{where}: no gin file {value!r} (relative to gin/ or absolute)")
    return value


def _check_names(bindings: Sequence[Binding], where: str) -> None:
    names = [name for name, _ in bindings]
    if "MODEL_DIR" in names:
        raise SweepError(f"{where}: MODEL_DIR is set by the sweep runner (ROOT/<sweep>/<slug>)")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SweepError(f"{where}: {', '.join(repeated)} bound twice (with common: included)")


def _strip_comment(line: str, where: str) -> str:
    """The line up to a # outside quotes."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#":
            return line[:i]
    if quote:
        raise SweepError(f"{where}: unterminated {quote} quote")
    return line


def _bindings(text: str, where: str) -> tuple[Binding, ...]:
    """NAME=VALUE words of a job line, split on spaces outside quotes and brackets."""
    bindings = []
    for word in _words(text, where):
        match = BINDING.match(word)
        if not match:
            raise SweepError(f"{where}: {word!r} is not a NAME=VALUE gin binding")
        bindings.append((match["name"], match["value"]))
    return tuple(bindings)


def _words(text: str, where: str) -> list[str]:
    words, current, depth, quote = [], [], [], None
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in OPENERS:
            depth.append(CLOSERS[OPENERS.index(char)])
        elif char in CLOSERS:
            if not depth or depth.pop() != char:
                raise SweepError(f"{where}: unbalanced {char!r}")
        elif char.isspace() and not depth:
            words.append("".join(current))
            current = []
            continue
        current.append(char)
    if depth:
        raise SweepError(f"{where}: unclosed bracket, expected {depth[-1]!r}")
    words.append("".join(current))
    return [word for word in words if word]


def slug(bindings: Sequence[Binding]) -> str:
    """A directory name spelling the bindings: LEARNING_RATE=3e-3 -> learning_rate=3e-3."""
    parts = []
    for name, value in bindings:
        short_name = re.split(r"[./]", name)[-1].lower()
        short_value = re.sub(r"[^A-Za-z0-9.+-]+", "_", value).strip("_") or "empty"
        parts.append(f"{short_name}={short_value}")
    text = ",".join(parts)
    if len(text) <= MAX_SLUG:
        return text
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"{text[: MAX_SLUG - 9]}-{digest}"


def model_dir(root: str, sweep: Sweep, job: Job) -> str:
    """ROOT/<sweep>/<slug>; a local ROOT is made absolute."""
    if "://" not in root:
        root = os.path.abspath(root)
    return f"{root.rstrip('/')}/{sweep.name}/{job.slug}"


def main_flags(sweep: Sweep, job: Job) -> list[str]:
    """codegen2_jax.main flags after the experiment: includes, then common and job bindings."""
    files = [f"--gin_file={file}" for file in sweep.includes]
    return files + [f"--gin.{name}={value}" for name, value in sweep.common + job.bindings]


Command = Callable[[Sweep, Job, str], list[str]]


def local_command(sweep: Sweep, job: Job, job_dir: str) -> list[str]:
    """Trains one job in a subprocess of this Python."""
    return [
        sys.executable,
        "-m",
        "codegen2_jax.main",
        f"--gin_file={sweep.experiment}",
        f"--gin.MODEL_DIR={job_dir!r}",
        *main_flags(sweep, job),
    ]


def tpu_command(run_script: str, *, dry_run: bool = False, babysit: bool = False) -> Command:
    """Trains one job on the TPU VM through launch/run.sh."""
    options = ["--dry-run"] * dry_run + ["--babysit"] * babysit

    def command(sweep: Sweep, job: Job, job_dir: str) -> list[str]:
        return [run_script, *options, job_dir, sweep.experiment, *main_flags(sweep, job)]

    return command


def run_jobs(
    sweep: Sweep, root: str, command: Command, *, log_file: str | None = None
) -> list[sweep_summary.JobResult]:
    """Runs every job to its end, one after another; a failed job does not stop the others.

    Args:
      sweep: the parsed sweep.
      root: where job directories go (ROOT/<sweep>/<slug>), a local path or a gs:// URI.
      command: the argv that trains one job, given the sweep, the job and its directory.
      log_file: a file name in each job's directory for its output (local runs); None leaves
        the output on this console.

    Returns:
      One result per job, in file order.
    """
    results = []
    for index, job in enumerate(sweep.jobs, 1):
        job_dir = model_dir(root, sweep, job)
        logger.info("job %d/%d (line %d): %s", index, len(sweep.jobs), job.line, job_dir)
        start = time.monotonic()
        returncode = _run(command(sweep, job, job_dir), job_dir, log_file)
        seconds = time.monotonic() - start
        status = "finished" if returncode == 0 else f"failed (exit {returncode})"
        logger.info("job %d/%d: exit %d after %.0f s", index, len(sweep.jobs), returncode, seconds)
        results.append(sweep_summary.JobResult(job_dir, status, seconds))
    return results


def _run(argv: list[str], job_dir: str, log_file: str | None) -> int:
    # The repo root as working directory: `-m codegen2_jax.main` imports without an install.
    if log_file is None:
        return subprocess.run(argv, cwd=REPO_ROOT, check=False).returncode
    os.makedirs(job_dir, exist_ok=True)
    with open(os.path.join(job_dir, log_file), "w", encoding="utf-8") as log:
        return subprocess.run(
            argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, check=False
        ).returncode


def summary_dir(root: str, sweep: Sweep) -> str:
    """ROOT/<sweep> for a local ROOT; runs/sweeps/<sweep> here for a bucket."""
    if "://" in root:
        return os.path.join("runs", "sweeps", sweep.name)
    return os.path.join(os.path.abspath(root), sweep.name)


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m codegen2_jax.experiments.sweep", description=__doc__
    )
    parser.add_argument("runner", choices=["local", "tpu", "summary"])
    parser.add_argument("sweep_file")
    parser.add_argument("--root", default="runs/sweeps", help="job dirs: ROOT/<sweep>/<slug>")
    parser.add_argument(
        "--metrics", default=sweep_summary.DEFAULT_METRICS, help="regex of table columns"
    )
    parser.add_argument("--run_script", default=str(REPO_ROOT / "launch" / "run.sh"))
    parser.add_argument("--dry_run", action="store_true", help="tpu: print gcloud commands")
    parser.add_argument("--babysit", action="store_true", help="tpu: relaunch after preemption")
    parser.add_argument("--verbose", action="store_true", help="every library's INFO lines too")
    args = parser.parse_args(argv)
    if args.runner != "tpu" and (args.dry_run or args.babysit):
        parser.error("--dry_run and --babysit are for the tpu runner")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs or tabulates a sweep; exits 1 when a job failed or the file is wrong."""
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    console.configure(args.verbose)
    try:
        sweep = load(args.sweep_file)
    except SweepError as e:
        logger.error("%s", e)
        return 1
    if args.runner == "summary":
        results = sweep_summary.from_dirs([model_dir(args.root, sweep, j) for j in sweep.jobs])
    elif args.runner == "local":
        results = run_jobs(sweep, args.root, local_command, log_file="train.log")
    else:
        command = tpu_command(args.run_script, dry_run=args.dry_run, babysit=args.babysit)
        results = run_jobs(sweep, args.root, command)
    if args.dry_run:
        logger.info("dry run: no summary")
        return 0
    table = sweep_summary.write(sweep, results, summary_dir(args.root, sweep), args.metrics)
    print(table)
    return 0 if all(r.status == "finished" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
