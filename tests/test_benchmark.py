"""The train-step benchmark runs the real step on each batch layout and reports sane figures."""

import json

import numpy as np
import pytest

from codegen2_jax import benchmark, partitioning
from codegen2_jax.model import TransformerConfig

TINY = TransformerConfig(
    vocab_size=128, num_layers=1, embed_dim=32, num_heads=4, rotary_dim=4, dtype="float32"
)


@pytest.mark.parametrize("layout", ["causal", "packed", "prefix_lm"])
def test_benchmark_reports_throughput(layout):
    partitioner = partitioning.make_partitioner(rules=[("activation_batch", ("data", "fsdp"))])
    result = benchmark.benchmark_train_step(
        TINY, partitioner, batch=8, seq=32, steps=2, layout=layout
    )
    assert result["tokens_per_s"] == pytest.approx(8 * 32 / result["step_s"])
    assert np.isfinite(result["loss"]) and result["loss"] > 0
    assert result["mfu_vs_989"] is None  # no peak is defined for CPUs


def test_packed_batches_have_the_objectives_structure():
    """Several documents per row; in prefix-LM rows each has an unscored prefix, flagged with
    the position after it (ObjectiveFeatureConverter's layout), and scored tokens after it."""
    batch = benchmark.synthetic_batch(4, 256, 64, "prefix_lm")
    assert {v.dtype for v in batch.values()} == {np.dtype(np.int32)}  # as the pipeline gives
    for row in range(4):
        segments = batch["decoder_segment_ids"][row]
        assert segments.max() >= 2 and (np.diff(segments) >= 0).all()
        for segment in np.unique(segments):
            at = segments == segment
            flags = batch["decoder_causal_attention"][row][at]
            weights = batch["decoder_loss_weights"][row][at]
            cut = int((weights == 0).sum())
            assert np.array_equal(batch["decoder_positions"][row][at], np.arange(at.sum()))
            assert cut >= 1 and np.array_equal(weights, [0] * cut + [1] * (at.sum() - cut))
            extra = min(cut + 1, at.sum())
            assert np.array_equal(flags, [1] * extra + [0] * (at.sum() - extra))
    assert "decoder_causal_attention" not in benchmark.synthetic_batch(2, 64, 64, "packed")


def test_command_line_prints_one_json_line(capsys):
    benchmark.main(
        ["--gin_file=models/tiny.gin", "--batch=8", "--seq=16", "--steps=1", "--layout=packed"]
    )
    result = json.loads(capsys.readouterr().out.strip())
    assert result["layout"] == "packed" and result["tokens_per_s"] > 0


def test_checkpoint_flag_times_saves(capsys):
    benchmark.main(["--checkpoint_gb=0.01", "--saves=1"])
    result = json.loads(capsys.readouterr().out.strip())
    assert result["what"] == "codegen2_jax checkpoint save" and result["leaves"] == 16
    assert result["blocking_s_per_gb"] == pytest.approx(result["blocking_s"] / result["state_gb"])
    assert result["state_gb"] == pytest.approx(0.01, rel=0.25) and result["blocking_s"] > 0
