"""The input pipeline: contract shapes, determinism per seed and shard, save and restore."""

import json

import numpy as np
import pytest
import seqio
import tensorflow as tf

from codegen2_jax.data import benchmark, pipeline, preprocessors
from tests.data import fake_vocab
from tests.data.fake_vocab import SEP

TASK = "test_pipeline_codegen2_mixture"
LENGTH = 32
BATCH = 4


def _documents(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    rng = np.random.default_rng(0)
    docs = [rng.integers(10, 90, size=rng.integers(1, 40)).tolist() for _ in range(64)]
    return tf.data.Dataset.from_tensor_slices({"targets": tf.ragged.constant(docs)}).map(
        lambda ex: {"targets": tf.ensure_shape(ex["targets"], [None])}
    )


@pytest.fixture(scope="module", autouse=True)
def task():
    seqio.TaskRegistry.add(
        TASK,
        source=seqio.FunctionDataSource(_documents, splits=["train"]),
        preprocessors=[preprocessors.codegen2_mixture],
        output_features=fake_vocab.output_features(),
    )
    yield
    seqio.TaskRegistry.remove(TASK)


def _iterator(seed=7, shard_index=0, num_shards=1, task=TASK, **kwargs):
    return pipeline.make_iterator(
        task,
        feature_lengths={"targets": LENGTH},
        batch_size=BATCH,
        seed=seed,
        shard_index=shard_index,
        num_shards=num_shards,
        **kwargs,
    )


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same(batches_a, batches_b):
    for a, b in zip(batches_a, batches_b, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batches_follow_the_contract():
    batch = next(_iterator())
    assert set(batch) == {
        "decoder_input_tokens",
        "decoder_target_tokens",
        "decoder_loss_weights",
        "decoder_segment_ids",
        "decoder_positions",
        "decoder_causal_attention",
    }
    for value in batch.values():
        assert value.shape == (BATCH, LENGTH) and value.dtype == np.int32
    # Packing fills rows with several documents.
    assert batch["decoder_segment_ids"].max() > 1


def test_deterministic_given_seed_and_shard():
    _assert_same(_take(_iterator(), 5), _take(_iterator(), 5))
    other_seed = next(_iterator(seed=8))["decoder_target_tokens"]
    assert not np.array_equal(other_seed, next(_iterator())["decoder_target_tokens"])
    shard_0 = next(_iterator(num_shards=2))["decoder_target_tokens"]
    shard_1 = next(_iterator(shard_index=1, num_shards=2))["decoder_target_tokens"]
    assert not np.array_equal(shard_0, shard_1)


def test_each_shard_draws_its_own_objectives_deterministically_and_resumably():
    """Shards of identical documents: the same seed must not make the same draws on each."""
    name = "test_pipeline_identical_documents"
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensors(
                {"targets": tf.range(10, 40, dtype=tf.int32)}
            ).repeat(64),
            splits=["train"],
        ),
        preprocessors=[preprocessors.codegen2_mixture],
        output_features=fake_vocab.output_features(),
    )
    try:

        def shard(index, position=None):
            iterator = _iterator(shard_index=index, num_shards=2, task=name, shuffle=False)
            if position is not None:
                iterator.restore_position(position)
            return iterator

        first, second = _take(shard(0), 4), _take(shard(1), 4)
        causal = [[SEP not in row for row in b["decoder_target_tokens"]] for b in first + second]
        assert causal[:4] != causal[4:]  # their own causal-or-infill choices
        _assert_same(second, _take(shard(1), 4))
        resumed = shard(1)
        _take(resumed, 2)
        _assert_same(second[2:], _take(shard(1, resumed.save_position()), 2))
    finally:
        seqio.TaskRegistry.remove(name)


def test_save_restore_resumes_exactly():
    original = _iterator()
    _take(original, 3)
    position = original.save_position()
    expected = _take(original, 3)

    resumed = _iterator()
    resumed.restore_position(position)
    _assert_same(expected, _take(resumed, 3))


def test_unpacked_eval_pads_one_example_per_row():
    iterator = pipeline.make_iterator(
        TASK,
        feature_lengths={"targets": LENGTH},
        batch_size=BATCH,
        seed=0,
        shuffle=False,
        num_epochs=1,
        pack=False,
    )
    batches = list(iterator)
    assert "decoder_segment_ids" not in batches[0]
    assert sum(len(b["decoder_target_tokens"]) for b in batches) >= 64 - BATCH


def test_benchmark_command_prints_throughput(capsys):
    benchmark.main(["--length", "64", "--batch_size", "2", "--seconds", "0.5", "--max_files", "5"])
    result = json.loads(capsys.readouterr().out)
    assert result["tokens_per_s"] > 0 and 0 < result["packing_efficiency"] <= 1
