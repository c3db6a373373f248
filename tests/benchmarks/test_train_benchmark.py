"""The train-step benchmark runs the real step on each batch layout and reports sane figures."""

import json

import numpy as np
import pytest

from codegen2_jax import partitioning
from codegen2_jax.benchmarks import train_benchmark
from codegen2_jax.model import TransformerConfig

TINY = TransformerConfig(
    vocab_size=128, num_layers=1, embed_dim=32, num_heads=4, rotary_dim=4, dtype="float32"
)


@pytest.mark.parametrize("layout", ["causal", "packed", "prefix_lm"])
def test_benchmark_reports_throughput(layout):
    partitioner = partitioning.make_partitioner(rules=[("activation_batch", ("data", "fsdp"))])
    result = train_benchmark.benchmark_train_step(
        TINY, partitioner, batch=8, seq=32, steps=2, layout=layout
    )
    assert result["tokens_per_s"] == pytest.approx(8 * 32 / result["step_s"])
    assert np.isfinite(result["loss"]) and result["loss"] > 0
    assert result["mfu_vs_989"] is None  # no peak is defined for CPUs


def test_command_line_prints_one_json_line(capsys):
    train_benchmark.main(
        ["--gin_file=models/tiny.gin", "--batch=8", "--seq=16", "--steps=1", "--layout=packed"]
    )
    result = json.loads(capsys.readouterr().out.strip())
    assert result["layout"] == "packed" and result["tokens_per_s"] > 0


def test_checkpoint_flag_times_saves(capsys):
    train_benchmark.main(["--checkpoint_gb=0.01", "--saves=1"])
    result = json.loads(capsys.readouterr().out.strip())
    assert result["what"] == "codegen2_jax checkpoint save" and result["leaves"] == 16
    assert result["blocking_s_per_gb"] == pytest.approx(result["blocking_s"] / result["state_gb"])
    assert result["state_gb"] == pytest.approx(0.01, rel=0.25) and result["blocking_s"] > 0
