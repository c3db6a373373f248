"""Two training processes on 127.0.0.1 as the multi-host test bed: equality, resume, failures.

Each process has one CPU device and reads its own data shard; gloo carries the collectives.
The single-process reference reads the same two shards (data_shards=2) on two devices of one
process, so both runs execute the same partitioned program and the same two-operand
all-reduces: losses and parameters must match bit for bit. (On one device, the batch sums
run in another order: losses agree to about 1e-6 relative, not bitwise.)
"""

import functools
import os
import re
import signal
import subprocess
import time

import pytest

from codegen2_jax import metrics, watchdog
from codegen2_jax.evaluation import during_training
from tests import training_runs

# Both tests share the module's two-process run: keep them on one xdist worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multiprocess")]

STEPS = 24
PEER_TIMEOUT_S = 5
STEP_TIMEOUT_S = 10
BINDINGS = (
    f"--gin.TRAIN_STEPS={STEPS}",
    "--gin.train.train.log_every=1",
    "--gin.train.train.checkpoint_every=4",
    "--gin.train.train.data_shards=2",
)
# The equality runs also score programs at steps 12 and 24: 3 problems, 3 infill tasks.
EXECUTION = (
    "--gin.HUMANEVAL_EVERY=12",
    *(
        f"--gin.during_training.ExecutionEvalSettings.{name}=3"
        for name in ("problems", "infill_tasks", "completion_tokens", "infill_tokens")
    ),
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_dir):
    """One process, two devices, over the session's corpus (built before any run reads it)."""
    model_dir = tmp_path_factory.mktemp("runs") / "single_process"
    training_runs.run_to_completion(model_dir, corpus_dir, *BINDINGS, *EXECUTION, devices=2)
    return model_dir


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, corpus_dir, reference):
    model_dir = tmp_path_factory.mktemp("runs") / "two_processes"
    training_runs.run_job_to_completion(model_dir, corpus_dir, *BINDINGS, *EXECUTION)
    return model_dir


def assert_same_run(model_dir, expected_dir):
    """Every step's loss and every array of the final checkpoint (SHA-256) are equal."""
    expected = {s: m["train/loss"] for s, m in metrics.read_metrics(expected_dir).items()}
    got = {s: m["train/loss"] for s, m in metrics.read_metrics(model_dir).items()}
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == expected
    assert training_runs.final_fingerprints(model_dir) == (
        STEPS,
        training_runs.final_fingerprints(expected_dir)[1],
    )


def start_and_run_a_few_steps(model_dir, corpus_dir, *bindings: str) -> list:
    """Starts the job and returns once it has logged a few more steps than before."""
    logged = training_runs.logged_steps(model_dir)
    job = training_runs.start_job(model_dir, corpus_dir, *BINDINGS, *bindings)
    assert training_runs.wait_for_progress(job[0], model_dir, after=logged + 2), "it ended"
    return job


def wait_for_exit(process, limit_s: float) -> tuple[int, float]:
    """The exit code and how long it took; fails (killing it) after limit_s."""
    start = time.monotonic()
    try:
        code = process.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"still running {limit_s} s after the failure") from None
    return code, time.monotonic() - start


def log_after(model_dir, offset: int) -> str:
    """Process 0's log from offset on (one model_dir's logs grow across restarts)."""
    return training_runs.read_process_log(model_dir, 0)[offset:]


def kill_both(job, new_log) -> None:
    """Both processes vanish at once (a preempted slice)."""
    del new_log
    for process in job:
        process.send_signal(signal.SIGKILL)
        process.wait()


def kill_one(job, new_log) -> None:
    """SIGKILL process 1: process 0's collective fails at once; its heartbeat names process 1."""
    job[1].send_signal(signal.SIGKILL)
    code, seconds = wait_for_exit(job[0], limit_s=60)
    print(f"\nSIGKILL of process 1: process 0 exited with {code} after {seconds:.1f} s")
    log = new_log()
    assert code == watchdog.EXIT_CODE
    assert "lost contact with the job: process 1 has sent no heartbeat" in log
    assert seconds < PEER_TIMEOUT_S + 10


def freeze_one(job, new_log) -> None:
    """SIGSTOP process 1: process 0 blocks in a step until its watchdog aborts it.

    Continued afterwards, process 1 finds its own step overdue and aborts as well.
    """
    os.kill(job[1].pid, signal.SIGSTOP)
    code, seconds = wait_for_exit(job[0], limit_s=STEP_TIMEOUT_S + 30)
    print(f"SIGSTOP of process 1: process 0 exited with {code} after {seconds:.1f} s")
    os.kill(job[1].pid, signal.SIGCONT)
    frozen_code, frozen_seconds = wait_for_exit(job[1], limit_s=30)
    print(f"process 1, continued, exited with {frozen_code} after {frozen_seconds:.1f} s")
    log = new_log()
    assert code == watchdog.EXIT_CODE and frozen_code != 0
    assert f"did not finish within {STEP_TIMEOUT_S} s" in log
    assert "Quiet peers: process 1 has sent no heartbeat" in log
    assert seconds < STEP_TIMEOUT_S + 10


def test_two_processes_train_exactly_like_one_process(two_processes, reference):
    assert_same_run(two_processes, reference)
    for i in range(2):
        assert f"process {i} of 2" in training_runs.read_process_log(two_processes, i)


def _execution_scores(log: str) -> list[str]:
    return re.findall(r"step \d+ \| humaneval\S* [\d.]+", log)


def test_two_processes_score_programs_like_one_process(two_processes, reference):
    """Each process runs its share of the programs; all of them log the job's scores."""
    names = (during_training.COMPLETION, during_training.INFILL)
    scores = [
        {s: [m[n] for n in names] for s, m in metrics.read_metrics(run).items() if names[0] in m}
        for run in (reference, two_processes)
    ]
    assert sorted(scores[0]) == [12, 24]
    assert scores[1] == scores[0]
    logs = [training_runs.read_process_log(two_processes, i) for i in range(2)]
    assert len(_execution_scores(logs[0])) == 4
    assert _execution_scores(logs[0]) == _execution_scores(logs[1])


def test_killed_and_frozen_processes_are_detected_and_the_run_resumes_exactly(
    tmp_path, corpus_dir, two_processes
):
    """One run survives both processes killed, one killed and one frozen, restarting each time.

    The detection limits are short here (the defaults suit real jobs); the frozen case raises
    peer_timeout_s so that the step watchdog, not the heartbeat, fires.
    """
    model_dir = tmp_path / "run"
    interruptions = {
        kill_both: (),
        kill_one: (f"--gin.train.train.peer_timeout_s={PEER_TIMEOUT_S}",),
        freeze_one: (
            f"--gin.train.train.step_timeout_s={STEP_TIMEOUT_S}",
            "--gin.train.train.peer_timeout_s=120",
        ),
    }
    started = []
    try:
        for interrupt, bindings in interruptions.items():
            log_start = len(training_runs.read_process_log(model_dir, 0)) if started else 0
            started += start_and_run_a_few_steps(model_dir, corpus_dir, *bindings)
            interrupt(started[-2:], functools.partial(log_after, model_dir, log_start))
    finally:
        for process in started:
            process.kill()  # any left after a failed check (a stopped one too)
    assert max(metrics.read_metrics(model_dir)) < STEPS
    training_runs.run_job_to_completion(model_dir, corpus_dir, *BINDINGS)
    assert_same_run(model_dir, two_processes)
