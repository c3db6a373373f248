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
import argparse
import gc
import json
import logging
import os
import sys
from collections.abc import Sequence

import gin
import jax

from codegen2_jax import gin_config, metrics, train

logger = logging.getLogger(__name__)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--gin_file", action="append", default=[], help="Gin files, relative to gin/ or absolute."
    )
    parser.add_argument(
        "--gin_bindings",
        action="append",
        default=[],
        help="Extra gin bindings (also --gin.NAME=VALUE).",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="Every library's INFO lines too (orbax, seqio, jax, ...).",
    )
    _add_distributed_flags(parser)
    return parser


def _add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-process runs (TPU-VM slices need none of these)")
    group.add_argument(
        "--coordinator_address", help="host:port of process 0 (multi-process CPU/GPU)."
    )
    group.add_argument(
        "--num_processes", type=int, help="Processes in the run (with coordinator_address)."
    )
    group.add_argument(
        "--process_id", type=int, help="This process's index (with coordinator_address)."
    )
    group.add_argument(
        "--initialization_timeout_s",
        type=int,
        default=300,
        help="How long processes wait for each other at start-up.",
    )
    group.add_argument(
        "--heartbeat_timeout_s",
        type=int,
        default=60,
        help="jax.distributed's own limit on a silent process (a backstop for train's "
        "peer_timeout_s).",
    )
    group.add_argument(
        "--shutdown_timeout_s",
        type=int,
        default=60,
        help="How long a finished process waits for the others at exit.",
    )


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """The flags, with `--gin.NAME=VALUE` arguments appended to --gin_bindings."""
    try:
        rest, bindings = gin_config.split_gin_args(argv)
    except ValueError as error:
        parser.error(str(error))
    args = parser.parse_args(rest)
    if not args.gin_file:
        parser.error("--gin_file is required, e.g. --gin_file=experiments/demo_cpu.gin")
    args.gin_bindings += bindings
    return args


def initialize_distributed(args: argparse.Namespace) -> None:
    """Joins the multi-process runtime: explicit flags, or TPU-VM auto-detection.

    Every wait on another process is bounded: start-up by initialization_timeout_s, a silent
    process by heartbeat_timeout_s (jax.distributed then terminates the others, naming it),
    the exit barrier by shutdown_timeout_s.
    """
    timeouts = dict(
        initialization_timeout=args.initialization_timeout_s,
        heartbeat_timeout_seconds=args.heartbeat_timeout_s,
        shutdown_timeout_seconds=args.shutdown_timeout_s,
    )
    if args.coordinator_address:
        # Cross-process collectives between CPU devices (the loopback test bed) need gloo;
        # the setting is inert for accelerator devices.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
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


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (codegen2-train); argv: the arguments, None for sys.argv[1:]."""
    parser = make_parser()
    args = parse_args(parser, sys.argv[1:] if argv is None else argv)
    console.configure(args.verbose)
    initialize_distributed(args)
    import tasks  # noqa: F401  (registers the seqio tasks and mixtures the gin files name)

    try:
        gin_config.parse(args.gin_file, args.gin_bindings)
    except ValueError as error:  # a typo in a binding: refused before any work
        parser.error(str(error))
    model_dir = gin.query_parameter("%MODEL_DIR")
    text = gin.config_str()
    write_config(model_dir, text)
    summary = gin_config.configured(train.train)(config_text=text)
    if summary is None:  # the run was already finished: its results stay as they are
        return
    results = os.path.join(model_dir, metrics.FINAL_METRICS_FILE)
    if jax.process_index() == 0:
        with open(results, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1, sort_keys=True)
    # The evaluations printed their own lines: this one stays short.
    loss = f"train loss {summary['loss']:.4f}; " if "loss" in summary else ""
    logger.info("finished: %severy result in %s", loss, results)
    # Everything is written and closed. Interpreter shutdown would garbage-collect the ~650k
    # objects TensorFlow, seqio and JAX keep (about 1.5 s per process); frozen, they are
    # left to the operating system.
    gc.freeze()


if __name__ == "__main__":
    main()
