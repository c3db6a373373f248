"""Helpers for tests that run the real training entry point in subprocesses."""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np

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


def train_command(model_dir, data_dir, *bindings: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "codegen2_jax.main",
        "--gin_file=experiments/tiny_cpu.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.tasks.stdlib_data_dir.path='{data_dir}'",
        *bindings,
    ]


def start(model_dir, data_dir, *bindings: str, log=None, devices: int = 1) -> subprocess.Popen:
    return subprocess.Popen(
        train_command(model_dir, data_dir, *bindings),
        cwd=REPO,
        env=subprocess_env(devices),
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
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
    started = []
    for i in range(processes):
        with open(process_log(model_dir, i), "ab") as log:
            started.append(
                start(model_dir, data_dir, *job, f"--process_id={i}", *bindings, log=log)
            )
    return started


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
    with open(log_path, "ab") as log:
        process = start(model_dir, data_dir, *bindings, log=log, devices=devices)
        code = process.wait(timeout=timeout)
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
