"""The AOT scale check compiles from abstract shapes and accounts bytes per device correctly."""

import json
import subprocess
import sys

from codegen2_jax import batch_contract, gin_config, partitioning
from codegen2_jax.benchmarks import aot
from codegen2_jax.model import TransformerConfig

TINY = TransformerConfig(
    vocab_size=256, num_layers=2, embed_dim=64, num_heads=4, rotary_dim=8, dtype="float32"
)


def test_fsdp_divides_parameter_and_optimizer_bytes_across_devices():
    gin_config.parse(["mesh/fsdp.gin"])
    partitioner = gin_config.configured(partitioning.make_partitioner)()
    report = aot.memory_report(TINY, partitioner, batch=16, seq=64)
    total_param_bytes = 4 * TINY.num_params()
    # Every leaf with a d_model axis is split 8 ways; LayerNorm/bias leaves without one are not.
    assert total_param_bytes / 8 < report["param_bytes_per_device"] < total_param_bytes / 4
    # AdamW holds two moments per parameter (plus a few scalar counters).
    assert abs(report["optimizer_bytes_per_device"] - 2 * report["param_bytes_per_device"]) < 64
    assert report["xla_temp_bytes"] > 0


def test_compiled_step_takes_the_batch_the_pipeline_gives():
    """int32 loss weights included: the checked program is the one training runs."""
    gin_config.parse(["mesh/data_parallel.gin"])
    partitioner = gin_config.configured(partitioning.make_partitioner)()
    compiled, _, _ = aot.compile_train_step(TINY, partitioner, batch=8, seq=16)
    (_, batch_args), _ = compiled.args_info
    assert {name: arg.dtype for name, arg in batch_args.items()} == batch_contract.FEATURE_DTYPES
    assert batch_args["decoder_loss_weights"].dtype == "int32"


def test_command_simulates_a_larger_mesh_than_the_test_process():
    # A fresh process, because the fake-device count is fixed once JAX starts.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "codegen2_jax.benchmarks.aot",
            "--gin_file=models/tiny.gin",
            "--devices=16",
            "--gin.VOCAB_SIZE=512",
            "--seq=64",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["mesh"] == {"data": 1, "fsdp": 16, "model": 1}
    assert report["batch"] == 32
