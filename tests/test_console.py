"""The quiet console: what it shows and hides, and a progress line that leaves compilation out."""

import logging
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest
from absl import logging as absl_logging

from codegen2_jax import console, metrics, train, watchdog
from codegen2_jax.model import TransformerConfig

TIME = r"\d\d:\d\d:\d\d"


@pytest.fixture
def logging_state():
    """Puts back the root logger's handlers and the levels configure() sets."""
    names = ["", *console.PROJECT_LOGGERS, "absl"]
    levels = {name: logging.getLogger(name).level for name in names}
    handlers = list(logging.getLogger().handlers)
    yield
    logging.getLogger().handlers[:] = handlers
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _log_one_of_each():
    logging.getLogger("codegen2_jax.train").info("project line")
    logging.getLogger("__main__").info("entry module line")
    logging.getLogger("codegen2_jax.watchdog").error("lost contact with the job")
    absl_logging.info("orbax line")  # orbax, seqio, TFDS and clu log through absl's logger
    absl_logging.warning("orbax warning")
    logging.getLogger("jax._src.xla_bridge").info("Unable to initialize backend 'tpu'")


def test_quiet_shows_the_projects_lines_and_only_warnings_from_libraries(logging_state, capsys):
    console.configure(verbose=False)
    console.configure(verbose=False)  # again: still one handler
    _log_one_of_each()
    lines = capsys.readouterr().err.splitlines()
    assert [re.sub(TIME, "T", line) for line in lines] == [
        "T project line",
        "T entry module line",
        "T ERROR lost contact with the job",
        "T WARNING [test_console] orbax warning",
    ]


def test_verbose_shows_every_librarys_info_lines(logging_state, capsys):
    console.configure(verbose=True)
    _log_one_of_each()
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 6
    assert "absl test_console.py" in err and "] orbax line" in err
    assert "jax._src.xla_bridge" in err


def test_quiet_leaves_out_the_warnings_of_read_only_checkpoint_readers(logging_state, capsys):
    console.configure()
    absl_logging.warning("CheckpointManagerOptions.read_only=True, setting create=False.")
    assert capsys.readouterr().err != ""  # from this module, not orbax's checkpoint_manager
    record = logging.makeLogRecord(
        {"name": "absl", "module": "checkpoint_manager", "levelno": logging.WARNING}
        | {"levelname": "WARNING", "msg": "Given directory is read only=/x/checkpoints"}
    )
    logging.getLogger("absl").handle(record)
    assert capsys.readouterr().err == ""


def test_a_plain_stderr_handler_an_early_warning_added_is_replaced(logging_state, capsys):
    logging.getLogger().addHandler(logging.StreamHandler(sys.stderr))  # what basicConfig adds
    console.configure()
    logging.getLogger("codegen2_jax.x").warning("once")
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_evaluation_lines_hold_one_held_out_task_each():
    results = {"eval/t/loss": 2.0, "eval/t/perplexity": 7.389, "humaneval/pass@1": 0.125}
    assert train._result_lines(results) == [
        "eval/t loss 2.0000 perplexity 7.3890",
        "humaneval/pass@1 0.1250",
    ]


def test_verbose_is_read_from_a_command_line():
    assert console.verbose_requested(["--gin_file=x", "--verbose"])
    assert console.verbose_requested(["--verbose=true"])
    assert not console.verbose_requested(["--verbose=false", "--gin.VERBOSE=1"])
    assert not console.command_running()  # pytest: importing it set no environment variables


def test_a_watchdog_abort_is_printed_by_a_quiet_command():
    code = (
        "from codegen2_jax import console, watchdog; console.configure(); "
        "watchdog.abort('process 0: lost contact with the job: process 1 has sent no heartbeat')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == watchdog.EXIT_CODE
    assert re.search(f"^{TIME} ERROR process 0: lost contact with the job", done.stderr, re.M)
    assert "FATAL: process 0: lost contact with the job" in done.stderr


def test_native_noise_is_filtered_and_a_crash_still_gets_its_last_lines_out(tmp_path):
    program = tmp_path / "command.py"
    program.write_text(
        "import os\n"
        "from codegen2_jax import console\n"
        "console.filter_native_stderr()\n"
        "os.write(2, b'I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine\\n')\n"
        "os.write(2, b'a real error\\n')\n"
        "os.abort()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CODEGEN2_JAX_STDERR_FILTERED"}
    done = subprocess.run([sys.executable, str(program)], capture_output=True, env=env)
    assert done.returncode != 0
    assert done.stderr == b"a real error\n"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Writer:
    def __init__(self):
        self.scalars = {}

    def write_scalars(self, step, scalars):
        self.scalars.setdefault(step, {}).update(scalars)


def _run_loop(*, first_step=0, total_steps=10, log_every=5, compile_s=100.0, step_s=1.0):
    """A loop whose first step call compiles for compile_s; every step runs for step_s."""
    clock, writer, calls = Clock(), Writer(), []

    def step_fn(state, batch):
        clock.now += (0.0 if calls else compile_s) + step_s
        calls.append(batch)
        step_metrics = {"loss": 2.0, "tokens": 10.0, "grad_norm": 1.0, "skipped_updates": 0.0}
        return state, {k: np.float32(v) for k, v in dict(step_metrics, consecutive_skips=0).items()}

    limits = dict(step_timeout_s=1e6, slow_op_timeout_s=1e6, peer_timeout_s=1e6)
    loop = train.Loop(
        step_fn=step_fn,
        next_batch=dict,
        save=lambda state: None,
        evaluations=[],
        progress=metrics.Progress(TransformerConfig(), 8, 80, total_steps, clock=clock),
        writer=writer,
        total_steps=total_steps,
        log_every=log_every,
        checkpoint_every=1000,
        max_consecutive_skips=3,
        watchdog=watchdog.Watchdog(**limits),
    )
    loop.run(types.SimpleNamespace(step=first_step, params=None))
    return writer.scalars


def test_throughput_leaves_the_first_steps_compilation_out(caplog):
    caplog.set_level(logging.INFO)
    logged = _run_loop()
    assert sorted(logged) == [5, 10]
    assert [logged[s]["train/seconds_per_step"] for s in (5, 10)] == [1.0, 1.0]
    assert logged[5]["train/tokens_per_s"] == 80.0
    assert "step 1 done in 101.0 s, compilation included" in caplog.text
    assert "step 5/10 | loss 2.0000 | 80 tok/s | MFU n/a | ETA 0:00:05" in caplog.text


def test_a_resumed_run_leaves_its_compilation_out_too():
    logged = _run_loop(first_step=7)
    assert logged[10]["train/seconds_per_step"] == 1.0


def test_a_line_at_the_compiling_step_has_the_loss_only(caplog):
    caplog.set_level(logging.INFO)
    logged = _run_loop(total_steps=3, log_every=1)
    assert "train/tokens_per_s" not in logged[1] and logged[1]["train/loss"] == 2.0
    assert [logged[s]["train/seconds_per_step"] for s in (2, 3)] == [1.0, 1.0]
    assert "step 1/3 | loss 2.0000\n" in caplog.text
