"""Helpers for tests that run the real training entry point in processes of their own.

Each training process is forked from a server that has already imported what the entry point
imports (jax, TensorFlow, seqio, the tasks: about 7 s of CPU per process on a 2-core machine,
most of a restarted run's start-up), then runs `codegen2_jax.main.main` with its command line,
environment and log file. The restart-heavy tests (SIGKILL chaos, the two-process job) start
dozens of them. The command line itself (`python -m codegen2_jax.main`) is what the console
and sweep tests run.
"""

import atexit
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import time
from multiprocessing import forkserver

import jax
import numpy as np
import pytest

from codegen2_jax import gin_config, metrics, optim, partitioning, train_state
from codegen2_jax.checkpointing import checkpointer
from codegen2_jax.model import Decoder, TransformerConfig

REPO = gin_config.GIN_DIR.parent


def subprocess_env(devices: int = 1) -> dict[str, str]:
    """One CPU device per process unless told otherwise (fast, and identical between runs).

    The session's compilation cache comes with the environment (conftest.compilation_cache).
    """
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    if not flags:
        del env["XLA_FLAGS"]  # XLA reads a blank value as a file name
    return env


def set_subprocess_env(monkeypatch) -> None:
    """Gives the processes that library code starts (sweeps, lessons) subprocess_env().

    This process's backend starts first, so that it keeps the session's 8 fake devices.
    """
    jax.devices()
    env = subprocess_env()
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def train_arguments(model_dir, data_dir, *bindings: str) -> list[str]:
    return [
        "--gin_file=experiments/tiny_cpu.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.tasks.stdlib_data_dir.path='{data_dir}'",
        *bindings,
    ]


# What every training process imports, imported once by the fork server.
_PRELOAD = ["codegen2_jax.main", "tasks", __name__]
_FORKS = multiprocessing.get_context("forkserver")


def _start_fork_server() -> None:
    """Starts the server once, under subprocess_env(): jax and TensorFlow read their variables
    at import. Only XLA_FLAGS, read when a backend starts, may differ between the processes."""
    with pytest.MonkeyPatch.context() as patch:
        set_subprocess_env(patch)
        _FORKS.set_forkserver_preload(_PRELOAD)
        forkserver.ensure_running()


def _run_main(argv: list[str], env: dict[str, str], log_path: str) -> None:
    """The forked process: the entry point, as `python -m codegen2_jax.main` in REPO runs it."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(REPO)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    from codegen2_jax import main

    try:
        main.main(argv)
    finally:
        # multiprocessing ends the process with os._exit, which skips what an interpreter's exit
        # runs: jax's clean_up among them, whose jax.distributed shutdown barrier keeps process
        # 0 (the coordination service) up until every process of the job has finished.
        atexit._run_exitfuncs()


class TrainingProcess:
    """A forked training process, with the subprocess.Popen methods the tests use."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: str):
        self.args = argv
        # Daemonic: a process a failed test left behind (a stopped one too) ends with the
        # session instead of holding it at exit.
        self._process = _FORKS.Process(target=_run_main, args=(argv, env, log_path), daemon=True)
        self._process.start()
        self.pid = self._process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start(model_dir, data_dir, *bindings: str, log_path=None, devices: int = 1) -> TrainingProcess:
    """Starts a training run; its output goes to log_path (appended), or nowhere."""
    _start_fork_server()
    return TrainingProcess(
        train_arguments(model_dir, data_dir, *bindings),
        subprocess_env(devices),
        log_path or os.devnull,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_log(model_dir, process_id: int) -> str:
    return f"{model_dir}.process{process_id}.log"


def start_job(model_dir, data_dir, *bindings: str, processes: int = 2) -> list:
    """One run over several processes on 127.0.0.1 (one CPU device each), logs beside model_dir."""
    job = (f"--coordinator_address=127.0.0.1:{free_port()}", f"--num_processes={processes}")
    return [
        start(
            model_dir,
            data_dir,
            *job,
            f"--process_id={i}",
            *bindings,
            log_path=process_log(model_dir, i),
        )
        for i in range(processes)
    ]


def log_tail(path, chars: int | None = 4000) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()[-chars:] if chars else f.read()


def read_process_log(model_dir, process_id: int) -> str:
    return log_tail(process_log(model_dir, process_id), chars=None)


def run_job_to_completion(model_dir, data_dir, *bindings: str, timeout=600) -> None:
    """Runs a two-process job to its end; a failure shows every process's log tail."""
    job = start_job(model_dir, data_dir, *bindings)
    deadline = time.monotonic() + timeout
    try:
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in job]
    finally:
        for p in job:
            p.kill()
    if any(codes):
        tails = [log_tail(process_log(model_dir, i)) for i in range(len(job))]
        raise AssertionError(f"exit codes {codes}:\n" + "\n---\n".join(tails))


def run_to_completion(model_dir, data_dir, *bindings: str, timeout=600, devices: int = 1) -> None:
    log_path = f"{model_dir}.log"
    process = start(model_dir, data_dir, *bindings, log_path=log_path, devices=devices)
    try:
        code = process.wait(timeout=timeout)
    finally:
        process.kill()
    if code:
        raise AssertionError(f"training exited with {code}:\n{log_tail(log_path)}")


def logged_steps(model_dir) -> int:
    """Lines in metrics.jsonl so far (0 before the first log)."""
    path = os.path.join(model_dir, metrics.METRICS_FILE)
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def wait_for_progress(process, model_dir, after: int, timeout: float = 300) -> bool:
    """Waits until metrics.jsonl has more than `after` lines; False if the process ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if logged_steps(model_dir) > after:
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.05)
    raise TimeoutError(f"no training progress in {model_dir} within {timeout} s")


def tiny_config() -> TransformerConfig:
    import tasks  # noqa: F401  (the experiment binds task parameters)

    gin_config.parse(["experiments/tiny_cpu.gin"], ["MODEL_DIR = '/unused'"])
    return gin_config.configured(TransformerConfig)()


def restore_final_state(model_dir):
    """The newest valid checkpoint's state as host numpy arrays (single device)."""
    config = tiny_config()
    optimizer = gin_config.configured(optim.make_optimizer)()
    partitioner = partitioning.make_partitioner(rules=(), data=1, devices=jax.devices()[:1])
    abstract, shardings = train_state.state_shardings(
        Decoder(config), optimizer, (8, 64), partitioner
    )
    ckpt = checkpointer.Checkpointer(os.path.join(model_dir, "checkpoints"))
    try:
        restored = ckpt.restore_latest(abstract, shardings)
    finally:
        ckpt.close()
    return restored.step, [np.asarray(x) for x in jax.tree.leaves(restored.state)]


def final_fingerprints(model_dir) -> tuple[int, dict]:
    """The newest checkpoint's step and SHA-256 of every array, from its manifest.

    Reads no arrays, so it works for checkpoints of any process count; the manifest's seal and
    the hashes were verified whenever a run restored that step.
    """
    directory = os.path.join(model_dir, "checkpoints")
    step = max(int(name) for name in os.listdir(directory) if name.isdigit())
    with open(os.path.join(directory, str(step), "manifest", "metadata"), encoding="utf-8") as f:
        manifest = json.load(f)
    return step, manifest["arrays"]
