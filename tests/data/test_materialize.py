"""Tests of materializing a DocumentSource to TFRecord shards and reading them back."""

import gzip
import json
import subprocess
import sys

import pytest
import tensorflow as tf

from codegen2_jax.data import materialize, sources


@pytest.fixture
def raw_source(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    for i in range(12):
        (root / f"m{i:02d}.py").write_text(f"value = {i}\n")
    (root / "empty.py").write_bytes(b"")
    (root / "latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    return sources.DocumentSource(
        split_to_filepattern={"train": str(root / "*.py")}, validation_percent=30
    )


def _texts(source, split):
    return sorted(ex["text"] for ex in source.get_dataset(split, shuffle=False).as_numpy_iterator())


def test_copy_keeps_documents_splits_and_counts(raw_source, tmp_path):
    out_dir = str(tmp_path / "copy")
    stats = [materialize.materialize(raw_source, out_dir, worker=w, num_workers=2) for w in (0, 1)]
    assert stats[-1]["skipped_empty"] == 1 and stats[-1]["replaced_invalid_utf8"] == 1
    assert len(tf.io.gfile.glob(f"{out_dir}/train/*.tfrecord")) == 14
    assert not tf.io.gfile.glob(f"{out_dir}/validation")
    copy = sources.TFRecordDocumentSource(
        split_to_filepattern={"train": f"{out_dir}/train/*.tfrecord"}, validation_percent=30
    )
    for split in ("train", "validation"):
        assert _texts(copy, split) == _texts(raw_source, split)
    assert b"s = 'caf\xef\xbf\xbd'\n" in _texts(copy, "train") + _texts(copy, "validation")


def test_rerun_writes_only_missing_shards(raw_source, tmp_path):
    out_dir = str(tmp_path / "copy")
    materialize.materialize(raw_source, out_dir)
    shards = sorted(tf.io.gfile.glob(f"{out_dir}/train/*.tfrecord"))
    tf.io.gfile.remove(shards[3])
    before = {path: tf.io.gfile.stat(path).mtime_nsec for path in shards if path != shards[3]}
    materialize.materialize(raw_source, out_dir)
    assert tf.io.gfile.exists(shards[3])
    assert {path: tf.io.gfile.stat(path).mtime_nsec for path in before} == before


def test_copy_position_saves_and_restores(raw_source, tmp_path):
    out_dir = str(tmp_path / "copy")
    materialize.materialize(raw_source, out_dir)
    copy = sources.TFRecordDocumentSource(split_to_filepattern={"train": f"{out_dir}/train/*"})
    dataset = copy.get_dataset("train", shuffle=True, seed=7).repeat()
    iterator = iter(dataset)
    next(iterator)
    checkpoint = tf.train.Checkpoint(iterator=iterator)
    saved = checkpoint.write(str(tmp_path / "position"))
    expected = [next(iterator)["text"].numpy() for _ in range(5)]
    restored_iterator = iter(dataset)
    tf.train.Checkpoint(iterator=restored_iterator).read(saved).assert_consumed()
    assert [next(restored_iterator)["text"].numpy() for _ in range(5)] == expected


def test_command_copies_a_registered_corpus(tmp_path):
    (tmp_path / "pile" / "train").mkdir(parents=True)
    lines = [json.dumps({"text": f"Doc {i}."}) for i in range(3)] + ["not json"]
    (tmp_path / "pile" / "train" / "00.jsonl.gz").write_bytes(
        gzip.compress("\n".join(lines).encode())
    )
    (tmp_path / "pile" / "val.jsonl").write_text(json.dumps({"text": "Val."}) + "\n")
    out_dir = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "codegen2_jax.data.materialize",
        "--task=pile_v1_causal",
        f"--gin_bindings=tasks.the_pile_root.path = '{tmp_path / 'pile'}'",
        f"--out_dir={out_dir}",
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    assert json.loads((out_dir / "stats-0.json").read_text())["skipped_malformed"] == 1
    copy = sources.TFRecordDocumentSource(
        split_to_filepattern={s: str(out_dir / s / "*.tfrecord") for s in ("train", "validation")}
    )
    assert _texts(copy, "train") == [b"Doc 0.", b"Doc 1.", b"Doc 2."]
    assert _texts(copy, "validation") == [b"Val."]
