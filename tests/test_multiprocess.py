"""Two training processes on 127.0.0.1 as the multi-host test bed: equality, resume, failures.

Each process has one CPU device and reads its own data shard; gloo carries the collectives.
The single-process reference reads the same two shards (data_shards=2) on two devices of one
process, so both runs execute the same partitioned program and the same two-operand
all-reduces: losses and parameters must match bit for bit. (On one device, the batch sums
run in another order: losses agree to about 1e-6 relative, not bitwise.)
"""

import os
import signal
import subprocess
import time

import pytest

from codegen2_jax import metrics, watchdog
from tests import training_runs

STEPS = 20
BINDINGS = (
    f"--gin.TRAIN_STEPS={STEPS}",
    "--gin.train.train.log_every=1",
    "--gin.train.train.checkpoint_every=4",
    "--gin.train.train.data_shards=2",
)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("compilation_cache"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_dir, cache):
    """One process, two devices (it also builds the corpus before processes share it)."""
    model_dir = tmp_path_factory.mktemp("runs") / "single_process"
    training_runs.run_to_completion(model_dir, corpus_dir, *BINDINGS, cache=cache, devices=2)
    return model_dir


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, corpus_dir, cache, reference):
    model_dir = tmp_path_factory.mktemp("runs") / "two_processes"
    training_runs.run_job_to_completion(model_dir, corpus_dir, *BINDINGS, cache=cache)
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


def start_and_wait_for_step(model_dir, corpus_dir, cache, step: int, *bindings: str) -> list:
    job = training_runs.start_job(model_dir, corpus_dir, *BINDINGS, *bindings, cache=cache)
    assert training_runs.wait_for_progress(job[0], model_dir, after=step - 1)
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


def test_two_processes_train_exactly_like_one_process(two_processes, reference):
    assert_same_run(two_processes, reference)
    for i in range(2):
        assert f"process {i} of 2" in training_runs.read_process_log(two_processes, i)


def test_both_killed_mid_run_resume_exactly(tmp_path, corpus_dir, cache, two_processes):
    model_dir = tmp_path / "run"
    job = start_and_wait_for_step(model_dir, corpus_dir, cache, 7)
    for process in job:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert training_runs.logged_steps(model_dir) < STEPS
    training_runs.run_job_to_completion(model_dir, corpus_dir, *BINDINGS, cache=cache)
    assert_same_run(model_dir, two_processes)


def test_a_killed_process_is_named_by_the_other_and_the_run_resumes(
    tmp_path, corpus_dir, cache, two_processes
):
    """SIGKILL process 1: process 0's collective fails at once; its heartbeat names process 1."""
    peer_timeout_s = 5
    model_dir = tmp_path / "run"
    job = start_and_wait_for_step(
        model_dir, corpus_dir, cache, 6, f"--gin.train.train.peer_timeout_s={peer_timeout_s}"
    )
    job[1].send_signal(signal.SIGKILL)
    code, seconds = wait_for_exit(job[0], limit_s=60)
    print(f"\nSIGKILL of process 1: process 0 exited with {code} after {seconds:.1f} s")
    log = training_runs.read_process_log(model_dir, 0)
    assert code == watchdog.EXIT_CODE
    assert "lost contact with the job: process 1 has sent no heartbeat" in log
    assert seconds < peer_timeout_s + 10
    training_runs.run_job_to_completion(model_dir, corpus_dir, *BINDINGS, cache=cache)
    assert_same_run(model_dir, two_processes)


def test_a_frozen_process_trips_the_step_watchdog_and_the_run_resumes(
    tmp_path, corpus_dir, cache, two_processes
):
    """SIGSTOP process 1: process 0 blocks in a step; its watchdog aborts after step_timeout_s.

    Once continued, process 1 finds its own step overdue and aborts as well.
    """
    step_timeout_s = 10
    model_dir = tmp_path / "run"
    job = start_and_wait_for_step(
        model_dir,
        corpus_dir,
        cache,
        6,
        f"--gin.train.train.step_timeout_s={step_timeout_s}",
        "--gin.train.train.peer_timeout_s=120",  # the step watchdog, not the heartbeat, fires
    )
    os.kill(job[1].pid, signal.SIGSTOP)
    code, seconds = wait_for_exit(job[0], limit_s=step_timeout_s + 30)
    print(f"\nSIGSTOP of process 1: process 0 exited with {code} after {seconds:.1f} s")
    os.kill(job[1].pid, signal.SIGCONT)
    frozen_code, frozen_seconds = wait_for_exit(job[1], limit_s=30)
    print(f"process 1, continued, exited with {frozen_code} after {frozen_seconds:.1f} s")
    log = training_runs.read_process_log(model_dir, 0)
    assert code == watchdog.EXIT_CODE and frozen_code != 0
    assert "watchdog: step" in log and f"did not finish within {step_timeout_s} s" in log
    assert "Quiet peers: process 1 has sent no heartbeat" in log
    assert seconds < step_timeout_s + 10
    training_runs.run_job_to_completion(model_dir, corpus_dir, *BINDINGS, cache=cache)
    assert_same_run(model_dir, two_processes)
