"""Tests of the embedded corpus: file selection, split by path hash, metadata, TFDS build."""

import email.message

import pytest
import tensorflow_datasets as tfds

from codegen2_jax.data import corpus


def test_split_of_is_deterministic_and_near_the_percentage():
    keys = [f"pkg/module_{i}.py" for i in range(2000)]
    splits = [corpus.split_of(key, 10) for key in keys]
    assert splits == [corpus.split_of(key, 10) for key in keys]
    assert 150 <= splits.count("validation") <= 250


def test_stdlib_files_skip_tests_and_site_packages(tmp_path):
    for rel in [
        "json/decoder.py",
        "test/test_json.py",
        "site-packages/x/y.py",
        "os.py",
        "idlelib/idle_test/t.py",
        "json/README.txt",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    files = corpus.stdlib_files(tmp_path)
    assert sorted(rel for rel, _ in files) == ["json/decoder.py", "os.py"]
    assert files == corpus.stdlib_files(tmp_path)


def test_module_docstrings_collects_all_levels():
    source = b'"""Mod."""\nclass A:\n    """Cls."""\n    def f(self):\n        """Fn."""\n'
    assert corpus.module_docstrings(source) == "Mod.\n\nCls.\n\nFn."
    assert corpus.module_docstrings(b"def broken(:\n") == ""
    assert corpus.module_docstrings(b"x = '\x00'") == ""


def _metadata(**fields):
    message = email.message.Message()
    for name, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            message[name.replace("_", "-")] = item
    return message


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"License_Expression": "MIT", "License": "BSD"}, "MIT"),
        ({"License": "Apache 2.0"}, "Apache 2.0"),
        ({"License": "Long text\nof a license", "Classifier": ["License :: OSI :: BSD"]}, "BSD"),
        ({}, "UNKNOWN"),
    ],
)
def test_distribution_license(fields, expected):
    assert corpus.distribution_license(_metadata(**fields)) == expected


def _build(tmp_path, language):
    config = corpus.StdlibCorpusConfig(
        name=f"tiny_{language}",
        language=language,
        max_total_bytes=150_000,
        max_doc_bytes=20_000,
        validation_percent=30,
    )
    builder = corpus.CodegenStdlib(config=config, data_dir=str(tmp_path))
    builder.download_and_prepare()
    return builder, {
        split: list(builder.as_dataset(split=split).as_numpy_iterator())
        for split in ("train", "validation")
    }


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.mark.parametrize("language", ["python", "natural"])
def test_builds_small_corpus_with_metadata_and_disjoint_splits(tfds_dir, language):
    builder, splits = _build(tfds_dir, language)
    train, validation = splits["train"], splits["validation"]
    assert train and validation
    total = sum(len(ex["text"]) for ex in train + validation)
    assert 150_000 <= total <= 150_000 + 20_000
    keys = {s: {ex["path"].decode().split("#")[0] for ex in splits[s]} for s in splits}
    assert not keys["train"] & keys["validation"]
    for split, examples in splits.items():
        for ex in examples:
            path = ex["path"].decode()
            assert path.startswith(("stdlib/", "dist/")) and ex["license"] and ex["text"].strip()
            assert len(ex["text"]) <= 20_000
            split_key = path.removeprefix("stdlib/").split("#")[0]
            assert corpus.split_of(split_key, 30) == split
            if path.startswith("stdlib/"):
                assert ex["license"] == b"PSF-2.0"
    if language == "natural":
        paths = [ex["path"].decode() for ex in train + validation]
        assert any(p.endswith("#docstrings") for p in paths)
        assert any(p.startswith("dist/") for p in paths)
    assert builder.info.splits["train"].num_examples == len(train)


def test_prepared_corpus_reopens_from_cache(tfds_dir):
    _build(tfds_dir, "python")
    config = corpus.StdlibCorpusConfig(
        name="tiny_python",
        language="python",
        max_total_bytes=150_000,
        max_doc_bytes=20_000,
        validation_percent=30,
    )
    reopened = corpus.CodegenStdlib(config=config, data_dir=str(tfds_dir))
    assert reopened.is_prepared()
    assert tfds.builder("codegen2_stdlib/python", data_dir=str(tfds_dir)).name == "codegen2_stdlib"
