"""seqio's offline cache on Beam's DirectRunner: what it holds, runs over it, and its errors."""

import collections
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

from codegen2_jax import gin_config, metrics, train
from codegen2_jax.data import cache, pipeline, vocab
from tests import training_runs
from tests.data import tiny_bpe

MIXTURE = "stdlib_v1_codegen2_mix"  # one task: stdlib_py_v1_codegen2_mix
TASK = "stdlib_py_v1_codegen2_mix"


@pytest.fixture(scope="module")
def built(shared_directory, corpus_dir):
    """The embedded corpus's mixture cached by the command a user runs; (cache, tfds) dirs.

    Built once per session (xdist workers share it); the tests only read it.
    """

    def run_the_command(cache_dir):
        command = [
            sys.executable,
            "-m",
            "codegen2_jax.data.cache",
            f"--tasks={MIXTURE}",
            f"--output_cache_dir={cache_dir}",
            "--min_shards=8",
            f"--gin.tasks.stdlib_data_dir.path='{corpus_dir}'",
        ]
        result = subprocess.run(
            command,
            cwd=training_runs.REPO,
            env=training_runs.subprocess_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-4000:]

    return str(shared_directory("seqio_cache", run_the_command)), corpus_dir


@pytest.fixture
def data_dir_bound(built):
    import tasks  # noqa: F401

    gin.parse_config([f"tasks.stdlib_data_dir.path = '{built[1]}'"])
    cache.require_cached([MIXTURE], built[0])
    yield built
    gin.clear_config()


def _cached_documents(cache_dir: str, split: str) -> collections.Counter:
    pattern = seqio.get_cached_tfrecord_prefix(os.path.join(cache_dir, TASK), split) + "*"
    spec = {"targets": tf.io.VarLenFeature(tf.int64)}
    records = tf.data.TFRecordDataset(tf.io.gfile.glob(pattern))
    rows = records.map(lambda r: tf.sparse.to_dense(tf.io.parse_single_example(r, spec)["targets"]))
    return collections.Counter(tuple(row.tolist()) for row in rows.as_numpy_iterator())


def _uncached_documents(split: str) -> collections.Counter:
    task = seqio.TaskRegistry.get(TASK)
    dataset = task.preprocess_precache(task.source.get_dataset(split, shuffle=False))
    return collections.Counter(tuple(ex["targets"].tolist()) for ex in dataset.as_numpy_iterator())


def test_the_cache_holds_the_tokenized_documents(data_dir_bound):
    cache_dir, _ = data_dir_bound
    for split in ("train", "validation"):
        cached = _cached_documents(cache_dir, split)
        assert cached == _uncached_documents(split), split
        stats = seqio.TaskRegistry.get(TASK).get_cached_stats(split)
        assert stats["examples"] == sum(cached.values())
    assert os.path.exists(os.path.join(cache_dir, TASK, "COMPLETED"))


def _iterator(use_cached: bool):
    return pipeline.make_iterator(
        MIXTURE, feature_lengths={"targets": 128}, batch_size=4, seed=3, use_cached=use_cached
    )


def test_a_run_over_the_cache_resumes_at_the_exact_position(data_dir_bound):
    original = _iterator(use_cached=True)
    for _ in range(3):
        next(original)
    position = original.save_position()
    expected = [next(original) for _ in range(3)]
    resumed = _iterator(use_cached=True)
    resumed.restore_position(position)
    for want in expected:
        got = next(resumed)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    uncached = next(_iterator(use_cached=False))
    assert {k: (v.shape, v.dtype) for k, v in expected[0].items()} == {
        k: (v.shape, v.dtype) for k, v in uncached.items()
    }


def test_training_reads_the_cache_with_one_binding(tmp_path, built):
    import tasks  # noqa: F401

    model_dir = str(tmp_path / "run")
    gin_config.parse(
        ["experiments/tiny_cpu.gin"],
        [
            f"MODEL_DIR = '{model_dir}'",
            "USE_CACHED = True",
            f"CACHE_DIR = '{built[0]}'",
            "tasks.stdlib_data_dir.path = '/nonexistent'",  # the source is never read
            "TRAIN_STEPS = 6",
            "train.train.log_every = 1",
        ],
    )
    gin_config.configured(train.train)()
    assert sorted(metrics.read_metrics(model_dir)) == [1, 2, 3, 4, 5, 6]


def test_a_missing_cache_names_the_task_and_the_command(tmp_path):
    import tasks  # noqa: F401

    empty = str(tmp_path / "no_cache")
    with pytest.raises(ValueError, match="stdlib_nl_v1_causal.*python -m codegen2_jax.data.cache"):
        cache.require_cached(["stdlib_nl_v1_causal"], empty)
    with pytest.raises(ValueError, match="CACHE_DIR"):
        cache.require_cached(["stdlib_nl_v1_causal"], None)


def test_mixtures_are_cached_as_their_tasks():
    import tasks  # noqa: F401

    assert cache.cached_tasks(["stdlib_v1_nl_pl_mix", "stdlib_py_v1_causal"]) == [
        "stdlib_nl_v1_codegen2_mix",
        "stdlib_py_v1_codegen2_mix",
        "stdlib_py_v1_causal",
    ]


def test_the_cache_keeps_its_tokenizer_and_a_run_with_another_stops(built, tmp_path):
    import tasks  # noqa: F401

    kept = vocab.load_saved_vocabulary(os.path.join(built[0], TASK, vocab.SAVED_VOCABULARY_DIR))
    assert kept == vocab.default_vocabulary()
    gin.parse_config([f"tasks.run_vocabulary.path = '{tiny_bpe.write(tmp_path / 'bpe')}'"])
    try:
        with pytest.raises(ValueError, match="another tokenizer"):
            cache.require_cached([MIXTURE], built[0])
    finally:
        gin.clear_config()
