"""Train-step benchmark: tokens/s, step time and MFU of the real sharded step on synthetic data.

Synthetic batches keep it free of TensorFlow and seqio, so it runs on any JAX image:

  python -m codegen2_jax.benchmarks.train_benchmark --gin_file=models/1b.gin --batch=8 --seq=2048 \
      --gin.COMPUTE_DTYPE='"bfloat16"' --gin.ATTENTION_IMPL='"cudnn"'

Prints one JSON line. MFU = tokens/s * (6 N + 12 L d T) / peak with N all parameters but the
input embedding (the MFU definition in README.md); mfu_causal counts half the attention FLOPs.

--checkpoint_gb=GB times checkpoint saves instead: how long Checkpointer.save, called as the
training loop calls it, holds up the step loop for a float32 state of GB gigabytes sharded over
all devices (the write itself finishes in the background and is timed apart):

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
      python -m codegen2_jax.benchmarks.train_benchmark --checkpoint_gb=1.5
"""

from __future__ import annotations

from codegen2_jax import console  # first: native libraries read their log levels at load

# isort: split
import argparse
import functools
import json
import statistics
import tempfile
import time

import jax
import numpy as np

from codegen2_jax import (
    batch_contract,
    gin_config,
    metrics,
    optim,
    partitioning,
    train_state,
    trainer,
)
from codegen2_jax.checkpointing import checkpointer
from codegen2_jax.model import Decoder, TransformerConfig

DEFAULT_GIN_FILE = "models/small.gin"
DEFAULT_MESH = "mesh/data_parallel.gin"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="Global batch size.")
    parser.add_argument("--seq", type=int, default=512, help="Sequence length.")
    parser.add_argument(
        "--steps", type=int, default=5, help="Timed steps (after one compile + warm-up step)."
    )
    parser.add_argument(
        "--microbatches", type=int, default=1, help="Gradient accumulation microbatches."
    )
    parser.add_argument(
        "--layout",
        default="causal",
        choices=batch_contract.LAYOUTS,
        help="Batch features: causal rows, packed documents, or packed prefix-LM documents.",
    )
    parser.add_argument(
        "--checkpoint_gb",
        type=float,
        default=0.0,
        help="Time checkpoint saves of a state this many GB in size instead of train steps.",
    )
    parser.add_argument(
        "--saves", type=int, default=3, help="Timed checkpoint saves (after one warm-up save)."
    )
    return parser


def benchmark_train_step(
    config: TransformerConfig,
    partitioner: partitioning.Partitioner,
    *,
    batch: int,
    seq: int,
    steps: int,
    microbatches: int = 1,
    layout: str = "causal",
) -> dict:
    """Compiles the train step, runs one warm-up step, then times `steps` steps."""
    model = Decoder(config)
    optimizer = optim.make_optimizer(warmup_steps=10, total_steps=10_000)
    _, shardings = train_state.state_shardings(model, optimizer, (batch, seq), partitioner)
    state = train_state.init_train_state(
        model, optimizer, (batch, seq), partitioner, seed=0, shardings=shardings
    )
    step = jax.jit(
        trainer.make_train_step(model, optimizer, num_microbatches=microbatches),
        in_shardings=(shardings, partitioner.batch_sharding()),
        out_shardings=(shardings, None),
        donate_argnums=0,
    )
    with partitioner.activate():
        features = batch_contract.synthetic_batch(batch, seq, config.vocab_size, layout)
        features = jax.device_put(features, partitioner.batch_sharding())
        state, metrics = step(state, features)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, features)
        jax.block_until_ready(metrics)
        step_s = (time.perf_counter() - start) / steps
    return report(config, batch, seq, step_s, float(metrics["loss"]), layout)


def report(config: TransformerConfig, batch: int, seq: int, step_s: float, loss: float, layout):
    tokens_per_s = batch * seq / step_s
    mfu = functools.partial(metrics.model_flops_utilization, config, seq, tokens_per_s)
    return {
        "what": "codegen2_jax train step",
        "layout": layout,
        "params": config.num_params(),
        "batch": batch,
        "seq": seq,
        "dtype": config.dtype,
        "attention": config.attention_impl,
        "remat": config.remat_policy,
        "step_s": step_s,
        "tokens_per_s": tokens_per_s,
        "model_tflops": tokens_per_s * config.flops_per_token(seq) / 1e12,
        "mfu_vs_989": mfu(),
        "mfu_causal_vs_989": mfu(causal=True),
        "loss": loss,
        "devices": jax.device_count(),
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
    }


def synthetic_state(gigabytes: float, leaves: int = 16, width: int = 4096) -> dict:
    """Random float32 arrays of about `gigabytes` GB in all, rows sharded over all devices."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("devices",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("devices"))
    rows = int(gigabytes * 1e9 / (4 * width * leaves)) // mesh.size * mesh.size
    if rows == 0:
        raise ValueError(f"--checkpoint_gb={gigabytes} is too small for {mesh.size} devices")
    make = jax.jit(
        lambda key: jax.random.normal(key, (rows, width), np.float32), out_shardings=sharding
    )
    keys = jax.random.split(jax.random.key(0), leaves)
    return {f"leaf_{i}": make(key) for i, key in enumerate(keys)}


def benchmark_checkpoint_save(gigabytes: float, saves: int) -> dict:
    """Times each save() call (the step loop's wait) and, apart, the background commit.

    The first save also compiles (once per state layout) and is reported apart.
    """
    state = synthetic_state(gigabytes)
    state_gb = sum(x.nbytes for x in jax.tree.leaves(state)) / 1e9
    blocking, commit = [], []
    with (
        tempfile.TemporaryDirectory() as directory,
        checkpointer.Checkpointer(directory, max_to_keep=1) as ckpt,
    ):
        for step in range(saves + 1):
            start = time.perf_counter()
            ckpt.save(step, state, b"data position", "# gin config")
            returned = time.perf_counter()
            ckpt.wait_until_finished()
            blocking.append(returned - start)
            commit.append(time.perf_counter() - returned)
    blocking_s = statistics.median(blocking[1:])
    return {
        "what": "codegen2_jax checkpoint save",
        "state_gb": state_gb,
        "leaves": len(state),
        "saves": saves,
        "blocking_s": blocking_s,
        "blocking_s_per_gb": blocking_s / state_gb,
        "blocking_s_each": blocking[1:],
        "first_save_blocking_s": blocking[0],
        "background_commit_s": statistics.median(commit[1:]),
        "devices": jax.device_count(),
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
    }


def main(argv: list[str] | None = None):
    """Console entry point: `--gin.NAME=VALUE` arguments become gin bindings."""
    args = gin_config.parse_tool_args(
        make_parser(), argv, model=DEFAULT_GIN_FILE, mesh=DEFAULT_MESH
    )
    console.configure(args.verbose)
    if args.checkpoint_gb:
        print(json.dumps(benchmark_checkpoint_save(args.checkpoint_gb, args.saves)), flush=True)
        return
    config = gin_config.configured(TransformerConfig)()
    partitioner = gin_config.configured(partitioning.make_partitioner)()
    result = benchmark_train_step(
        config,
        partitioner,
        batch=args.batch,
        seq=args.seq,
        steps=args.steps,
        microbatches=args.microbatches,
        layout=args.layout,
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
