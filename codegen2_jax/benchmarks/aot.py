"""Ahead-of-time scale check: compile the train step for a shipped size on a simulated mesh.

Lowers and compiles from abstract shapes only (no parameter is ever allocated), on fake CPU
devices, and reports per-device parameter and optimizer bytes plus XLA's memory analysis:

  python -m codegen2_jax.benchmarks.aot --gin_file=models/16b.gin --mesh=mesh/fsdp_tp.gin \
      --devices=64 --batch=64 --seq=2048

The numbers are XLA:CPU's buffer assignment for the sharded program: a close guide to the
per-device footprint on accelerators, not a promise (GPU/TPU fusion and layouts differ).
"""

from __future__ import annotations

from codegen2_jax import console  # first: native libraries read their log levels at load

# isort: split
import argparse
import json
import sys

import jax
import jax.numpy as jnp

from codegen2_jax import batch_contract, gin_config, optim, partitioning, train_state, trainer
from codegen2_jax.model import Decoder, TransformerConfig

DEFAULT_GIN_FILE = "models/1b.gin"
DEFAULT_MESH = "mesh/fsdp.gin"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--devices", type=int, default=64, help="Fake CPU devices in the simulated mesh."
    )
    parser.add_argument(
        "--batch", type=int, default=0, help="Global batch size (default: 2 rows per device)."
    )
    parser.add_argument(
        "--seq", type=int, default=0, help="Sequence length (default: the model's max_len)."
    )
    parser.add_argument(
        "--microbatches", type=int, default=1, help="Gradient accumulation microbatches."
    )
    return parser


GIB = 2**30


def per_device_bytes(abstract_tree, shardings) -> int:
    """Bytes one device holds for a pytree of ShapeDtypeStructs under the given shardings."""
    leaves = zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings), strict=True)
    return sum(
        jnp.dtype(x.dtype).itemsize * int(jnp.prod(jnp.array(s.shard_shape(x.shape))))
        for x, s in leaves
    )


def compile_train_step(
    config: TransformerConfig,
    partitioner: partitioning.Partitioner,
    *,
    batch: int,
    seq: int,
    microbatches: int = 1,
):
    """(compiled step, abstract state, state shardings), built from shapes alone."""
    model = Decoder(config)
    optimizer = optim.make_optimizer()
    abstract, shardings = train_state.state_shardings(model, optimizer, (batch, seq), partitioner)
    batch_sharding = partitioner.batch_sharding()
    features = batch_contract.abstract_batch(batch, seq, batch_sharding)
    step = jax.jit(
        trainer.make_train_step(model, optimizer, num_microbatches=microbatches),
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, None),
        donate_argnums=0,
    )
    with partitioner.activate():
        compiled = step.lower(abstract, features).compile()
    return compiled, abstract, shardings


def memory_report(config, partitioner, *, batch: int, seq: int, microbatches: int = 1) -> dict:
    """Per-device bytes of parameters, optimizer state and XLA's buffers for one train step."""
    compiled, abstract, shardings = compile_train_step(
        config, partitioner, batch=batch, seq=seq, microbatches=microbatches
    )
    memory = compiled.memory_analysis()
    report = {
        "params": config.num_params(),
        "mesh": dict(partitioner.mesh.shape),
        "batch": batch,
        "seq": seq,
        "microbatches": microbatches,
        "param_bytes_per_device": per_device_bytes(abstract.params, shardings.params),
        "optimizer_bytes_per_device": per_device_bytes(abstract.opt_state, shardings.opt_state),
    }
    for field in ("argument", "output", "temp", "alias", "generated_code"):
        report[f"xla_{field}_bytes"] = int(getattr(memory, f"{field}_size_in_bytes"))
    report["xla_peak_estimate_bytes"] = (
        report["xla_argument_bytes"] + report["xla_output_bytes"] + report["xla_temp_bytes"]
    ) - report["xla_alias_bytes"]
    return report


def main(argv: list[str] | None = None):
    """Console entry point: `--gin.NAME=VALUE` arguments become gin bindings."""
    args = gin_config.parse_tool_args(
        make_parser(), argv, model=DEFAULT_GIN_FILE, mesh=DEFAULT_MESH
    )
    console.configure(args.verbose)
    # Must precede the first backend use; nothing before this line touches a device.
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", args.devices)
    config = gin_config.configured(TransformerConfig)()
    partitioner = gin_config.configured(partitioning.make_partitioner)()
    report = memory_report(
        config,
        partitioner,
        batch=args.batch or 2 * args.devices,
        seq=args.seq or config.max_len,
        microbatches=args.microbatches,
    )
    for key, value in report.items():
        shown = f"{value / GIB:.2f} GiB" if key.endswith("_bytes") else value
        print(f"{key:>30}: {shown}", file=sys.stderr)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
