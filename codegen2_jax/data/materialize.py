"""Writing a DocumentSource's documents to TFRecord shards, the resumable form for training.

    python -m codegen2_jax.data.materialize --task=the_stack_python_v1_causal \\
        --gin_bindings="tasks.the_stack_root.path = 'gs://bucket/the-stack-dedup/data'" \\
        --out_dir=gs://bucket/materialized/the_stack_python_v1 [--worker=3 --num_workers=8]

Input file number i of a split becomes ``<out_dir>/<split>/<i>-of-<n>.tfrecord``
(tf.train.Example with ``text``, ``path`` and ``license``), after the bad-input rules. A shard
is written under a temporary name and renamed when complete, so an interrupted job is rerun
and skips the finished shards; ``--num_workers`` machines split the files (i % num_workers).
Each worker writes its counters to ``<out_dir>/stats-<worker>.json``. A source whose
validation split is carved out of "train" (validation_percent) is written once, as "train".
Declare the copy with ``sources.TFRecordDocumentSource(split_to_filepattern={"train":
"<out_dir>/train/*.tfrecord", ...}, validation_percent=<the source's>)``.
"""

import importlib
import json
from collections.abc import Sequence

import gin
import seqio
import tensorflow as tf
from absl import app, flags, logging

from codegen2_jax.data import sources


def example_bytes(document: dict[str, str]) -> bytes:
    """A document as a serialized tf.train.Example."""
    feature = {
        name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))
        for name, value in document.items()
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def materialized_splits(source: sources.DocumentSource) -> list[str]:
    """The splits with files of their own (a carved validation split shares train's)."""
    if source.validation_percent is not None:
        return ["train"]
    return list(source.splits)


def write_shard(source: sources.DocumentSource, path: str, out_path: str) -> None:
    """Writes the documents of one input file, atomically."""
    temporary = out_path + ".incomplete"
    with tf.io.TFRecordWriter(temporary) as writer:
        for document in source.documents(path):
            writer.write(example_bytes(document))
    tf.io.gfile.rename(temporary, out_path, overwrite=True)


def materialize(
    source: sources.DocumentSource, out_dir: str, *, worker: int = 0, num_workers: int = 1
) -> dict[str, int]:
    """Writes this worker's shards of every split; returns the bad-input counters.

    Args:
      source: the source to copy.
      out_dir: output directory (any tf.io.gfile path).
      worker: this worker's index, in [0, num_workers).
      num_workers: how many workers split the input files.
    """
    for split in materialized_splits(source):
        files = source.list_shards(split)
        tf.io.gfile.makedirs(f"{out_dir}/{split}")
        for index in range(worker, len(files), num_workers):
            out_path = f"{out_dir}/{split}/{index:05d}-of-{len(files):05d}.tfrecord"
            if tf.io.gfile.exists(out_path):
                continue  # Finished by an earlier, interrupted run.
            write_shard(source, files[index], out_path)
            logging.info("%s -> %s", files[index], out_path)
    stats = source.stats.as_dict()
    with tf.io.gfile.GFile(f"{out_dir}/stats-{worker}.json", "w") as f:
        json.dump(stats, f, indent=1)
    return stats


def define_flags() -> None:
    """The command's flags; defined only when it runs, so importing the module defines none."""
    flags.DEFINE_string("task", None, "A registered task whose source is a DocumentSource.")
    flags.DEFINE_string("out_dir", None, "Output directory.")
    flags.DEFINE_integer("worker", 0, "This worker's index.")
    flags.DEFINE_integer("num_workers", 1, "Workers splitting the input files.")
    flags.DEFINE_list("module", ["tasks"], "Modules to import to register --task.")
    flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, e.g. data roots.")
    flags.mark_flags_as_required(["task", "out_dir"])


def main(argv: Sequence[str]) -> None:
    del argv
    FLAGS = flags.FLAGS
    for module in FLAGS.module:
        importlib.import_module(module)
    gin.parse_config(FLAGS.gin_bindings)
    source = seqio.get_mixture_or_task(FLAGS.task).source
    if not isinstance(source, sources.DocumentSource):
        raise app.UsageError(f"{FLAGS.task}'s source is not a DocumentSource")
    stats = materialize(
        source, FLAGS.out_dir.rstrip("/"), worker=FLAGS.worker, num_workers=FLAGS.num_workers
    )
    logging.info("Done: %s", stats)


if __name__ == "__main__":
    define_flags()
    app.run(main)
