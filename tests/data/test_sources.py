"""Tests of the file sources and of the bad-input rules, on a corpus with every bad case."""

import gzip
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import seqio
import tensorflow as tf
import zstandard

from codegen2_jax.data import documents, file_patterns, sources

GOOD = "def f(x):\n    return x\n"
MAX_BYTES = 1 << 20


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
    """One file per rule of codegen2_jax.data.documents, and one good file."""
    root = tmp_path_factory.mktemp("bad_corpus")
    _write(root / "good.py", GOOD.encode())
    _write(root / "latin1.py", "x = 'caf\xe9'\n".encode("latin-1"))
    _write(root / "empty.py", b"")
    _write(root / "blank.py", b" \n\t\n")
    _write(root / "binary.bin", b"\x7fELF\x02\x01\x00\x00" + bytes(range(256)))
    late_nul = b"a = 1\n" * (documents.BINARY_SNIFF_BYTES // 6 + 1) + b"b = 2\x00\n"
    _write(root / "late_nul.py", late_nul)
    # 100 MB, read only up to the limit: the rule is truncation at max_bytes.
    _write(root / "huge.py", b"y = 0  # \xc3\xa9\n" * (100 * (1 << 20) // 13))
    (root / "subdir").mkdir()
    return root


def _read_all(source, split="train"):
    dataset = source.get_dataset(split, shuffle=False)
    return {
        ex["path"].decode().rsplit("/", 1)[-1]: ex["text"].decode()
        for ex in dataset.as_numpy_iterator()
    }


def test_bad_input_rules_on_text_files(bad_corpus):
    source = sources.DocumentSource(
        split_to_filepattern={"train": str(bad_corpus / "*")},
        file_format="text",
        max_bytes=MAX_BYTES,
    )
    docs = _read_all(source)
    assert sorted(docs) == ["good.py", "huge.py", "late_nul.py", "latin1.py"]
    assert docs["good.py"] == GOOD
    assert docs["latin1.py"] == "x = 'caf\ufffd'\n"
    assert "\x00" not in docs["late_nul.py"] and docs["late_nul.py"].endswith("b = 2\n")
    huge = docs["huge.py"].encode()
    # Cut on a character boundary at or just below the limit, never a broken é.
    assert MAX_BYTES - 2 <= len(huge) <= MAX_BYTES and "\ufffd" not in docs["huge.py"]
    assert source.stats.as_dict() == {
        "documents": 4,
        "skipped_empty": 2,
        "skipped_binary": 1,
        "truncated": 1,
        "replaced_invalid_utf8": 1,
        "stripped_nul": 1,
        "skipped_malformed": 0,
    }


def test_text_from_str_truncates_on_character_boundary():
    stats = documents.DocumentStats()
    text = documents.text_from_str("é" * 10, max_bytes=5, stats=stats)
    assert text == "éé"
    assert stats.as_dict()["truncated"] == 1


def _jsonl_records():
    return [
        {"text": "first doc\n", "meta": {"pile_set_name": "Github"}},
        {"text": ""},
        {"text": "with nul\x00 inside"},
        {"no_text": 1},
        {"text": 7},
    ]


COMPRESSORS = {
    ".jsonl": lambda data: data,
    ".jsonl.gz": gzip.compress,
    ".jsonl.zst": lambda data: zstandard.ZstdCompressor().compress(data),
}


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_jsonl_source_reads_plain_gzip_and_zstandard(tmp_path, suffix):
    lines = [json.dumps(r) for r in _jsonl_records()] + ["{not json", "[1, 2]"]
    data = ("\n".join(lines) + "\n").encode() + b"\xff\xfe\n"
    _write(tmp_path / f"part{suffix}", COMPRESSORS[suffix](data))
    source = sources.DocumentSource(
        split_to_filepattern={"validation": str(tmp_path / f"*{suffix}")},
        file_format="jsonl",
        text_field="text",
        license_field="meta.pile_set_name",
    )
    examples = list(source.get_dataset("validation", shuffle=False).as_numpy_iterator())
    assert [ex["text"] for ex in examples] == [b"first doc\n", b"with nul inside"]
    assert [ex["license"] for ex in examples] == [b"Github", b"UNKNOWN"]
    assert examples[0]["path"].decode().endswith(f"part{suffix}:0")
    stats = source.stats.as_dict()
    assert (stats["documents"], stats["skipped_empty"], stats["skipped_malformed"]) == (2, 1, 5)


def test_parquet_source_joins_path_fields_and_license_lists(tmp_path):
    table = pa.table(
        {
            "content": ["print(1)\n", "", "x = 2\n"],
            "max_stars_repo_name": ["a/b", "a/b", "c/d"],
            "max_stars_repo_path": ["m.py", "e.py", "n.py"],
            "max_stars_repo_licenses": [["MIT"], ["MIT"], ["Apache-2.0", "MIT"]],
            "size": [9, 0, 6],
        }
    )
    pq.write_table(table, tmp_path / "data-00000-of-00001.parquet")
    source = sources.DocumentSource(
        split_to_filepattern={"train": lambda: str(tmp_path / "*.parquet")},
        file_format="parquet",
        path_fields=("max_stars_repo_name", "max_stars_repo_path"),
        license_field="max_stars_repo_licenses",
    )
    examples = list(source.get_dataset("train", shuffle=False).as_numpy_iterator())
    assert [(ex["path"], ex["license"]) for ex in examples] == [
        (b"a/b/m.py", b"MIT"),
        (b"c/d/n.py", b"Apache-2.0,MIT"),
    ]


def test_validation_percent_partitions_train_by_path_hash(tmp_path):
    for i in range(60):
        _write(tmp_path / f"f{i:02d}.py", f"v = {i}\n".encode())
    source = sources.DocumentSource(
        split_to_filepattern={"train": str(tmp_path / "*.py")},
        file_format="text",
        validation_percent=20,
    )
    train, validation = _read_all(source, "train"), _read_all(source, "validation")
    assert len(train) + len(validation) == 60
    assert not set(train) & set(validation)
    assert 3 <= len(validation) <= 25
    assert _read_all(source, "validation") == validation


def test_per_host_sharding_splits_files(tmp_path):
    for i in range(4):
        _write(tmp_path / f"f{i}.py", f"v = {i}\n".encode())
    source = sources.DocumentSource(
        split_to_filepattern={"train": str(tmp_path / "*.py")}, file_format="text"
    )
    shards = []
    for index in range(2):
        shard_info = seqio.ShardInfo(index=index, num_shards=2)
        dataset = source.get_dataset("train", shuffle=False, shard_info=shard_info)
        shards.append({ex["text"] for ex in dataset.as_numpy_iterator()})
    assert len(shards[0]) == len(shards[1]) == 2 and not shards[0] & shards[1]


def test_rejects_unknown_format_and_bad_holdout():
    with pytest.raises(ValueError, match="file_format"):
        sources.DocumentSource(split_to_filepattern={"train": "x"}, file_format="csv")
    with pytest.raises(ValueError, match="validation_percent"):
        sources.DocumentSource(
            split_to_filepattern={"train": "x", "test": "y"},
            file_format="text",
            validation_percent=5,
        )


def test_missing_files_raise_a_clear_error(tmp_path):
    source = sources.DocumentSource(
        split_to_filepattern={"train": str(tmp_path / "nothing-*.parquet")},
        file_format="parquet",
    )
    with pytest.raises(ValueError, match="No file is found"):
        source.get_dataset("train")


def test_auto_format_reads_each_file_by_its_name(tmp_path):
    _write(tmp_path / "a.py", b"print('a')\n")
    _write(tmp_path / "b.jsonl.gz", gzip.compress(json.dumps({"content": "b = 1\n"}).encode()))
    source = sources.DocumentSource(split_to_filepattern={"train": str(tmp_path / "*")})
    texts = {ex["text"] for ex in source.get_dataset("train", shuffle=False).as_numpy_iterator()}
    assert texts == {b"print('a')\n", b"b = 1\n"}
    assert sources.file_format_of("x/train-0.parquet") == "parquet"
    assert sources.file_format_of("val.jsonl.zst") == "jsonl"


def _texts(iterator, count: int) -> list[bytes]:
    return [next(iterator)["text"].numpy() for _ in range(count)]


def test_position_saves_and_restores_at_the_exact_document(tmp_path):
    """Mid-file, across chunks and files, under seqio's shuffles: a restore resumes exactly."""
    for shard in range(3):
        records = [{"content": f"doc {shard}.{i}\n"} for i in range(700)]  # 3 chunks each
        data = "".join(json.dumps(r) + "\n" for r in records).encode()
        _write(tmp_path / f"part{shard}.jsonl.gz", gzip.compress(data))
    _write(tmp_path / "single.py", b"x = 1\n")
    source = sources.DocumentSource(split_to_filepattern={"train": str(tmp_path / "*")})
    dataset = source.get_dataset("train", shuffle=True, seed=3).shuffle(64, seed=5).repeat()

    original = iter(dataset)
    head = _texts(original, 1000)
    position = tf.train.Checkpoint(iterator=original).write(str(tmp_path / "position" / "p"))
    expected = _texts(original, 1500)
    resumed = iter(dataset)
    tf.train.Checkpoint(iterator=resumed).read(position).assert_consumed()
    assert _texts(resumed, 1500) == expected
    assert len(set(head + expected)) == 2101  # every document once, then the next epoch


def test_recursive_patterns_match_every_depth(tmp_path):
    for relative in ["setup.py", "pkg/a.py", "pkg/sub/deep/b.py", "pkg/notes.txt", "c.pyc"]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        _write(tmp_path / relative, b"x = 1\n")
    names = (
        lambda pattern: [  # noqa: E731
            p[len(str(tmp_path)) + 1 :] for p in file_patterns.expand(str(tmp_path / pattern))
        ]
    )
    assert names("**/*.py") == ["pkg/a.py", "pkg/sub/deep/b.py", "setup.py"]
    assert names("pkg/**") == ["pkg/a.py", "pkg/notes.txt", "pkg/sub/deep/b.py"]
    assert names("pkg/**/[!a]*.py") == ["pkg/sub/deep/b.py"]
    assert names("*/*.py") == ["pkg/a.py"]  # one level, as tf.io.gfile.glob
    assert names("missing/**/*.py") == []


def test_moving_a_corpus_keeps_its_names_and_splits(tmp_path):
    for i in range(40):
        (tmp_path / "here" / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        _write(tmp_path / "here" / f"d{i % 3}" / f"f{i:02d}.py", f"v = {i}\n".encode())
    splits = []
    for root in ("here", "moved"):
        if root == "moved":
            shutil.copytree(tmp_path / "here", tmp_path / "moved")
        source = sources.DocumentSource(
            split_to_filepattern={"train": str(tmp_path / root / "**" / "*.py")},
            validation_percent=25,
        )
        splits.append(
            {
                split: sorted(
                    ex["path"]
                    for ex in source.get_dataset(split, shuffle=False).as_numpy_iterator()
                )
                for split in ("train", "validation")
            }
        )
    assert splits[0] == splits[1]
    assert len(splits[0]["train"]) + len(splits[0]["validation"]) == 40
    assert splits[0]["validation"] and b"d0/f00.py" in splits[0]["train"] + splits[0]["validation"]
