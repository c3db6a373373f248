"""The input pipeline: a seqio task or mixture to numpy batches with a resumable position.

Batches follow the decoder contract of ObjectiveFeatureConverter (features.py), int32
[batch_size, length]. The stream is deterministic given the seed and the host shard: seqio
seeds the shuffle, the preprocessors' random draws and the mixture sampling from `seed` and
the shard (shard_seed), and tf.data runs deterministically. Its position is the tf.data
iterator state, saved and restored with tf.train.Checkpoint, so a resumed run sees exactly
the batches it would have seen. That state includes the shuffle buffer and the packer's
pending examples (about 60 MB, 20 MB compressed, at length 2048 with seqio's 1000-example
shuffle buffer), and it needs a source without Python-side state: no from_generator or
py_function, whose first save fails with "PyFunc is stateful" (sources.DocumentSource reads
files through stateless chunks).
"""

import difflib
import io
import os
import pathlib
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from codegen2_jax.data import features


def make_dataset(
    mixture_or_task_name: str,
    *,
    feature_lengths: Mapping[str, int],
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    num_shards: int = 1,
    split: str = "train",
    shuffle: bool = True,
    num_epochs: int | None = None,
    pack: bool = True,
    use_cached: bool = False,
) -> tf.data.Dataset:
    """Batched decoder features for one host.

    Args:
      mixture_or_task_name: a registered seqio task or mixture whose examples carry the
        objective features (features.output_features).
      feature_lengths: {"targets": length}, the packed sequence length.
      batch_size: examples per batch on this host; a short last batch is dropped.
      seed: seeds shuffling, preprocessing and mixture sampling, with the shard index folded
        in (shard_seed).
      shard_index: this host's shard, in [0, num_shards).
      num_shards: number of hosts reading disjoint shards.
      split: the dataset split.
      shuffle: whether seqio shuffles (files and examples).
      num_epochs: passes over the data; None repeats forever (training).
      pack: pack several examples per row (training) or pad one per row.
      use_cached: read seqio's offline cache (codegen2_jax.data.cache) instead of the source.
    """
    vocabulary = task_vocabulary(mixture_or_task_name)
    dataset = seqio.get_dataset(
        mixture_or_task_name,
        task_feature_lengths=features.task_feature_lengths(feature_lengths[features.TARGETS]),
        feature_converter=features.ObjectiveFeatureConverter(
            pack=pack, bos_id=vocabulary.decoder_start_id
        ),
        dataset_split=split,
        shuffle=shuffle,
        num_epochs=num_epochs,
        shard_info=seqio.ShardInfo(index=shard_index, num_shards=num_shards),
        seed=shard_seed(seed, shard_index),
        batch_size=batch_size,
        use_cached=use_cached,
    )
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def shard_seed(seed: int, shard_index: int) -> int:
    """The seqio seed of one data shard: distinct per shard, so example i of every shard (of
    every host) draws its own objective and mask ratio; a function of (seed, shard) alone, so
    runs over different process counts with the same shards stay equal."""
    return int(np.random.SeedSequence([seed, shard_index]).generate_state(1)[0] >> 1)


def task_vocabulary(mixture_or_task_name: str) -> seqio.Vocabulary:
    """The token vocabulary of a registered task or mixture (a configured one as it resolves)."""
    targets = registered(mixture_or_task_name).output_features[features.TARGETS]
    return getattr(targets.vocabulary, "resolved", targets.vocabulary)


def registered(mixture_or_task_name: str) -> seqio.Task | seqio.Mixture:
    """The registered task or mixture; an unknown name is refused naming the nearest ones
    (seqio's own error lists every registered task)."""
    names = [*seqio.TaskRegistry.names(), *seqio.MixtureRegistry.names()]
    if mixture_or_task_name not in names:
        close = difflib.get_close_matches(mixture_or_task_name, names, n=3)
        hint = (
            f"did you mean {', '.join(close)}?"
            if close
            else "tasks are named <corpus>_<version>_<objective> (README: Add a corpus)"
        )
        raise ValueError(f"no seqio task or mixture named {mixture_or_task_name!r}: {hint}")
    return seqio.get_mixture_or_task(mixture_or_task_name)


def host_shards(num_shards: int, process_index: int, process_count: int) -> range:
    """The data shards one process reads: [p*k, (p+1)*k) with k = num_shards / process_count.

    Data shards are independent of processes, so a run over fewer processes with the same
    num_shards reads exactly the rows a run over more processes reads.
    """
    if num_shards % process_count:
        raise ValueError(f"{num_shards} data shards do not divide over {process_count} processes")
    k = num_shards // process_count
    return range(process_index * k, (process_index + 1) * k)


def make_host_dataset(
    mixture_or_task_name: str,
    *,
    shards: Sequence[int],
    num_shards: int,
    batch_size: int,
    **kwargs,
) -> tf.data.Dataset:
    """Batches of batch_size rows: an equal part from each of `shards`, concatenated in order.

    Args:
      mixture_or_task_name: as for make_dataset.
      shards: the shard indices this host reads (host_shards).
      num_shards: the total number of data shards.
      batch_size: rows per batch on this host, a multiple of len(shards).
      **kwargs: the other make_dataset arguments.
    """
    if batch_size % len(shards):
        raise ValueError(f"a batch of {batch_size} rows does not split over {len(shards)} shards")
    parts = [
        make_dataset(
            mixture_or_task_name,
            batch_size=batch_size // len(shards),
            shard_index=shard,
            num_shards=num_shards,
            **kwargs,
        )
        for shard in shards
    ]
    if len(parts) == 1:
        return parts[0]
    return tf.data.Dataset.zip(tuple(parts)).map(_concatenate)


def _concatenate(*batches: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {name: tf.concat([batch[name] for batch in batches], axis=0) for name in batches[0]}


class BatchIterator(Iterator[dict[str, np.ndarray]]):
    """Numpy batches from a tf.data dataset, whose position can be saved and restored."""

    _PREFIX = "position"

    def __init__(self, dataset: tf.data.Dataset):
        self._iterator = iter(dataset)
        self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)

    def __next__(self) -> dict[str, np.ndarray]:
        return {name: value.numpy() for name, value in next(self._iterator).items()}

    def save_position(self) -> bytes:
        """The position as an opaque blob, e.g. for checkpointing.CheckpointManager.save.

        Each host saves its own shard's position. The blob holds tf.train.Checkpoint's
        files in a zip archive, since tf.data writes iterator state only through files.
        """
        with tempfile.TemporaryDirectory() as directory:
            self._checkpoint.write(os.path.join(directory, self._PREFIX))
            buffer = io.BytesIO()
            # Fast deflate: the state is mostly token ids and 0/1 flags, a third of the size
            # for about a second per 60 MB.
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
                for path in sorted(pathlib.Path(directory).iterdir()):
                    archive.write(path, path.name)
        return buffer.getvalue()

    def restore_position(self, position: bytes) -> None:
        """Moves to a position from save_position of an iterator over the same pipeline."""
        with tempfile.TemporaryDirectory() as directory:
            with zipfile.ZipFile(io.BytesIO(position)) as archive:
                archive.extractall(directory)
            self._checkpoint.read(os.path.join(directory, self._PREFIX)).assert_consumed()


def make_iterator(mixture_or_task_name: str, **kwargs) -> BatchIterator:
    """A BatchIterator over make_dataset(mixture_or_task_name, **kwargs)."""
    return BatchIterator(make_dataset(mixture_or_task_name, **kwargs))
