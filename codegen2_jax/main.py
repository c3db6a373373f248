"""Entry point: flags, jax.distributed, gin parsing, the config record, and dispatch to train.

  python -m codegen2_jax.main --gin_file=experiments/demo_cpu.gin \
      --gin.MODEL_DIR="'runs/demo'" --gin.TRAIN_STEPS=100

t5x conventions: gin files are found on the repo's gin/ search path, `--gin.NAME=VALUE`
binds one value, and the full config is written to MODEL_DIR/config.gin before training (each
checkpoint stores it too). The last logged metrics and the final evaluation go to
MODEL_DIR/final_metrics.json.

Several processes (hosts, or one machine as their test bed) each run the same command with
--coordinator_address=HOST:PORT --num_processes=N --process_id=I; TPU-VM slices need none of
these. A process that loses another, or stalls, exits with watchdog.EXIT_CODE; restarting all
of them resumes from the last checkpoint.
"""

from __future__ import annotations

from codegen2_jax import console  # first: native libraries read their log levels at load

# isort: split
import gc
import json
import logging
import os
import sys

import gin
import jax
from absl import app, flags

from codegen2_jax import gin_config, train

logger = logging.getLogger(__name__)

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin files, relative to gin/ or absolute.")
flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings (also --gin.NAME=VALUE).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process CPU/GPU).")
flags.DEFINE_integer("num_processes", None, "Processes in the run (with coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with coordinator_address).")
flags.DEFINE_integer(
    "initialization_timeout_s", 300, "How long processes wait for each other at start-up."
)
flags.DEFINE_integer(
    "heartbeat_timeout_s",
    60,
    "jax.distributed's own limit on a silent process (a backstop for train's peer_timeout_s).",
)
flags.DEFINE_integer(
    "shutdown_timeout_s", 60, "How long a finished process waits for the others at exit."
)
flags.DEFINE_bool("verbose", False, "Every library's INFO lines too (orbax, seqio, jax, ...).")


def initialize_distributed() -> None:
    """Joins the multi-process runtime: explicit flags, or TPU-VM auto-detection.

    Every wait on another process is bounded: start-up by initialization_timeout_s, a silent
    process by heartbeat_timeout_s (jax.distributed then terminates the others, naming it),
    the exit barrier by shutdown_timeout_s.
    """
    timeouts = dict(
        initialization_timeout=FLAGS.initialization_timeout_s,
        heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_s,
        shutdown_timeout_seconds=FLAGS.shutdown_timeout_s,
    )
    if FLAGS.coordinator_address:
        # Cross-process collectives between CPU devices (the loopback test bed) need gloo;
        # the setting is inert for accelerator devices.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
            **timeouts,
        )
    elif os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
        # Multi-host TPU slice: peers come from the metadata server.
        jax.distributed.initialize(**timeouts)
    if jax.process_count() > 1:
        logger.info("process %d of %d", jax.process_index(), jax.process_count())
        # When process 0 dies, jax.distributed ends the others at once with its own message,
        # which calls process 0 "the leader task".
        logger.info("process 0 runs the coordination service ('the leader task' in its errors)")


def write_config(model_dir: str, text: str) -> None:
    """Records the parsed gin config beside the checkpoints (process 0 only)."""
    if jax.process_index() == 0:
        os.makedirs(model_dir, exist_ok=True)
        with open(os.path.join(model_dir, "config.gin"), "w", encoding="utf-8") as f:
            f.write(text)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.gin_file:
        raise app.UsageError("--gin_file is required, e.g. --gin_file=experiments/demo_cpu.gin")
    console.configure(FLAGS.verbose)
    initialize_distributed()
    import tasks  # noqa: F401  (registers the seqio tasks and mixtures the gin files name)

    try:
        gin_config.parse(FLAGS.gin_file, FLAGS.gin_bindings)
    except ValueError as error:  # a typo in a binding: refused before any work
        raise app.UsageError(str(error)) from None
    model_dir = gin.query_parameter("%MODEL_DIR")
    text = gin.config_str()
    write_config(model_dir, text)
    summary = gin_config.configured(train.train)(config_text=text)
    if summary is None:  # the run was already finished: its results stay as they are
        return
    logger.info("finished: %s", {k: round(v, 4) for k, v in sorted(summary.items())})
    if jax.process_index() == 0:
        with open(os.path.join(model_dir, "final_metrics.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1, sort_keys=True)
    # Everything is written and closed. Interpreter shutdown would garbage-collect the ~650k
    # objects TensorFlow, seqio and JAX keep (about 1.5 s per process); frozen, they are
    # left to the operating system.
    gc.freeze()


def run():
    """Console entry point; `--gin.NAME=VALUE` arguments become --gin_bindings."""
    argv, bindings = gin_config.split_gin_args(sys.argv)
    app.run(main, argv=argv + [f"--gin_bindings={binding}" for binding in bindings])


if __name__ == "__main__":
    run()
