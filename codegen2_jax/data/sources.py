"""Document sources over files: plain text files, jsonl (.gz, .zst) and parquet, for seqio.

``DocumentSource`` is a seqio.FileDataSource whose examples are ``{"text", "path", "license"}``
(tf.string), the fields of the embedded corpus, so every corpus feeds the same tasks. Files
are listed with tf.io.gfile (local paths, gs://, any registered filesystem), sharded per host
and shuffled by seqio; each file is parsed in Python under the bad-input rules of
``codegen2_jax.data.documents`` (counters in ``DocumentSource.stats``, logged as files finish),
in chunks that keep the pipeline's position saveable (``codegen2_jax.data.chunked_files``):
a run over any DocumentSource checkpoints and resumes at the exact document.

Formats:

- ``"text"``: one file is one document (a directory or glob of source files, ``**`` recursive);
  ``path`` is the file's name below the pattern's root (file_patterns). Reading stops after
  ``max_bytes``.
- ``"jsonl"``: one JSON object per line, the text in ``text_field``; ``.gz`` is read with gzip,
  ``.zst`` with zstandard. A line that is not a JSON object with a string text field is counted
  as ``skipped_malformed``.
- ``"parquet"``: the ``text_field`` column and metadata columns, read with pyarrow through its
  own filesystems: local paths, gs://, s3://.

- ``"auto"``: by file name: ``.parquet``, jsonl (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``,
  ``.json.gz``, ``.json.zst``), anything else text.

jsonl and parquet records are parsed whole and then truncated to ``max_bytes``.

A corpus published with a single split gets a validation split from ``validation_percent``:
"train" and "validation" then read the same files and keep the records whose ``path`` hashes
(tf.strings.to_hash_bucket_fast) below or above the percentage. ``path`` is the record's own
path fields or its file's name below the pattern's root (``name:record number`` in jsonl and
parquet), never where the corpus lies, so moving it keeps every split as it was.

Parsing in Python is the slow part of reading: for long runs, seqio's offline cache
(codegen2_jax.data.cache) stores the tokenized documents once, which tf.data reads natively.
"""

import gzip
import io
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence

import pyarrow.fs
import pyarrow.parquet as pq
import seqio
import tensorflow as tf
import zstandard

from codegen2_jax.data import chunked_files, documents, file_patterns
from codegen2_jax.data.file_patterns import Pattern

FORMATS = ("auto", "text", "jsonl", "parquet")
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst")
FIELDS = ("text", "path", "license")  # every example's tf.string scalars
STATS_EVERY_S = 60.0  # at most one line of reader counters per this many seconds

logger = logging.getLogger(__name__)
_stats_logged = [-float("inf")]  # when the counters were last logged (any reader)


def _open_jsonl(path: str, f) -> io.BufferedIOBase:
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=f)
    if path.endswith(".zst"):
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(f))
    return f


def _field(record: Mapping, dotted: str):
    # Dotted names reach nested metadata, e.g. The Pile's "meta.pile_set_name".
    for name in dotted.split("."):
        if not isinstance(record, Mapping):
            return None
        record = record.get(name)
    return record


def _as_text(value) -> str:
    if isinstance(value, list | tuple):  # The Stack stores licenses as a list.
        return ",".join(map(str, value))
    return "" if value is None else str(value)


def file_format_of(path: str) -> str:
    """The format "auto" reads a file as."""
    if path.endswith(".parquet"):
        return "parquet"
    return "jsonl" if path.endswith(_JSONL_SUFFIXES) else "text"


class DocumentSource(seqio.FileDataSource):
    """A seqio source of documents read from files.

    Args:
      split_to_filepattern: split name → glob(s), or a callable returning them, called when
        the dataset is built (so a gin-configured root can be bound after registration).
      file_format: one of FORMATS (default "auto": by file name).
      text_field: jsonl key or parquet column of the document text.
      path_fields: fields joined with "/" into ``path``; none: the file's name below its
        pattern's root (text format) or "name:record number".
      license_field: field holding the license; missing: ``default_license``.
      default_license: license of records without a license field.
      max_bytes: per-document truncation limit, in UTF-8 bytes.
      validation_percent: if set, split_to_filepattern must hold only "train"; a
        "validation" split is carved out of it by path hash.
    """

    def __init__(
        self,
        *,
        split_to_filepattern: Mapping[str, Pattern],
        file_format: str = "auto",
        text_field: str = "content",
        path_fields: Sequence[str] = (),
        license_field: str | None = None,
        default_license: str = "UNKNOWN",
        max_bytes: int = documents.DEFAULT_MAX_BYTES,
        validation_percent: int | None = None,
    ):
        if file_format not in FORMATS:
            raise ValueError(f"file_format {file_format!r} not in {FORMATS}")
        self._format = file_format
        self._text_field = text_field
        self._path_fields = tuple(path_fields)
        self._license_field = license_field
        self._default_license = default_license
        self._max_bytes = max_bytes
        self.stats = documents.DocumentStats()
        if validation_percent is not None:
            if set(split_to_filepattern) != {"train"}:
                raise ValueError("validation_percent carves validation out of 'train' only")
            train = split_to_filepattern["train"]
            split_to_filepattern = {"train": train, "validation": train}
        self._validation_percent = validation_percent
        chunks = chunked_files.ChunkedFiles(self.documents, fields=FIELDS)
        super().__init__(read_file_fn=chunks.dataset, split_to_filepattern=split_to_filepattern)

    def list_shards(self, split: str) -> Sequence[str]:
        """Files of a split, sorted; globs (and lazy roots) are expanded on every call."""
        return file_patterns.expand(self._split_to_filepattern[split])

    def relative_path(self, path: str) -> str:
        """A file's name below the root of the pattern that lists it (file_patterns)."""
        roots = [
            file_patterns.root_of(p)
            for pattern in self._split_to_filepattern.values()
            for p in file_patterns.patterns_of(pattern)
        ]
        return file_patterns.relative_to_roots(path, roots)

    def get_dataset(self, split: str = "train", *args, **kwargs) -> tf.data.Dataset:
        """The split's documents; see seqio.FileDataSource.get_dataset for the arguments."""
        dataset = super().get_dataset(split, *args, **kwargs)
        if self._validation_percent is None:
            return dataset
        want_validation = split == "validation"

        def keep(example):
            bucket = tf.strings.to_hash_bucket_fast(example["path"], 100)
            return tf.equal(bucket < self._validation_percent, want_validation)

        return dataset.filter(keep)

    def documents(self, path: str) -> Iterator[dict[str, str]]:
        """The documents of one file, in order (what the tf.data pipeline reads in chunks)."""
        readers = {"text": self._text_file, "jsonl": self._jsonl, "parquet": self._parquet}
        file_format = file_format_of(path) if self._format == "auto" else self._format
        yield from readers[file_format](path)
        if time.monotonic() - _stats_logged[0] >= STATS_EVERY_S:
            _stats_logged[0] = time.monotonic()
            logger.info("%s: %s", path, self.stats.as_dict())

    def _document(self, record: Mapping, fallback_path: str) -> dict[str, str] | None:
        value = _field(record, self._text_field)
        if not isinstance(value, str):
            self.stats.add("skipped_malformed")
            return None
        text = documents.text_from_str(value, max_bytes=self._max_bytes, stats=self.stats)
        if text is None:
            return None
        path = "/".join(_as_text(_field(record, f)) for f in self._path_fields)
        license_name = _field(record, self._license_field) if self._license_field else None
        return {
            "text": text,
            "path": path or fallback_path,
            "license": _as_text(license_name) or self._default_license,
        }

    def _text_file(self, path: str) -> Iterator[dict[str, str]]:
        with tf.io.gfile.GFile(path, "rb") as f:
            raw = documents.read_head(f, self._max_bytes)
        text = documents.text_from_bytes(raw, max_bytes=self._max_bytes, stats=self.stats)
        if text is not None:
            yield {"text": text, "path": self.relative_path(path), "license": self._default_license}

    def _jsonl(self, path: str) -> Iterator[dict[str, str]]:
        name = self.relative_path(path)
        with tf.io.gfile.GFile(path, "rb") as f:
            for number, line in enumerate(_open_jsonl(path, f)):
                try:
                    record = json.loads(line)
                except ValueError:  # Also UnicodeDecodeError: not UTF-8 JSON.
                    record = None
                if not isinstance(record, dict):
                    self.stats.add("skipped_malformed")
                    continue
                document = self._document(record, f"{name}:{number}")
                if document is not None:
                    yield document

    def _parquet(self, path: str) -> Iterator[dict[str, str]]:
        # pyarrow's own filesystems (local, gs://, s3://) give the random access parquet
        # needs, which a GFile does not offer it.
        name = self.relative_path(path)
        uri = path if "://" in path else os.path.abspath(path)
        filesystem, inner_path = pyarrow.fs.FileSystem.from_uri(uri)
        fields = {self._text_field, *self._path_fields}
        fields.update([self._license_field] if self._license_field else [])
        with filesystem.open_input_file(inner_path) as f:
            parquet = pq.ParquetFile(f)
            columns = [c for c in parquet.schema_arrow.names if c in fields]
            number = 0
            for batch in parquet.iter_batches(batch_size=256, columns=columns):
                for record in batch.to_pylist():
                    document = self._document(record, f"{name}:{number}")
                    number += 1
                    if document is not None:
                        yield document
