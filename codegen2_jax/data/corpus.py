"""The embedded default corpus: a TFDS builder over text every Python installation holds.

Two configs, built without network access:

- ``codegen2_stdlib/python``: the ``.py`` files of the running interpreter's standard library
  (tests and site-packages excluded), license PSF-2.0.
- ``codegen2_stdlib/natural``: natural language from the same machine: the docstrings of those
  standard-library modules, the descriptions in installed distributions' ``METADATA``, and the
  ``.md``/``.rst`` files installed distributions ship, each with its distribution's license.

Each document has ``text``, ``path`` (relative, e.g. ``stdlib/json/decoder.py``) and
``license``. The split is by a hash of the path (``validation_percent`` of paths go to
validation), and docstrings split with their module, so no validation module leaks into the
training split of either config. Files are taken in hash order until ``max_total_bytes``, a
spread sample of the library rather than its alphabetical head. The bytes depend on the
interpreter and the installed distributions; the version pins the recipe. Bad input follows
``codegen2_jax.data.documents``; the counts are logged when a split is generated.

``StdlibSource`` is the seqio source over it: it builds the corpus into its data_dir on first
use (later uses read the cache) and shards a split across hosts by examples.
"""

import ast
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import io
import itertools
import logging
import pathlib
import sysconfig
from collections.abc import Callable, Iterator

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from codegen2_jax.data import documents

logger = logging.getLogger(__name__)

STDLIB_LICENSE = "PSF-2.0"
_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)
_DOC_SUFFIXES = (".md", ".rst")


@dataclasses.dataclass(frozen=True)
class RawDocument:
    """A document before the bad-input rules: exactly one of ``raw`` and ``text`` is set."""

    path: str
    split_key: str
    license: str
    raw: bytes | None = None
    text: str | None = None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def split_of(split_key: str, validation_percent: int) -> str:
    """ "validation" for ``validation_percent`` % of keys (by hash), else "train"."""
    bucket = int.from_bytes(_digest(split_key)[:8], "big") % 100
    return "validation" if bucket < validation_percent else "train"


def stdlib_files(root: pathlib.Path | None = None) -> list[tuple[str, pathlib.Path]]:
    """(relative path, file) of the standard library's modules, in hash order."""
    root = root or pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = [
        (path.relative_to(root).as_posix(), path)
        for path in root.rglob("*.py")
        if not _EXCLUDED_DIRS.intersection(path.relative_to(root).parts[:-1])
    ]
    return sorted(files, key=lambda item: _digest(item[0])[8:])


def _read(path: pathlib.Path, max_bytes: int) -> bytes:
    with path.open("rb") as f:
        return documents.read_head(f, max_bytes)


def python_documents(max_bytes: int) -> Iterator[RawDocument]:
    """Standard-library modules as raw documents."""
    for rel, path in stdlib_files():
        yield RawDocument(
            path=f"stdlib/{rel}", split_key=rel, license=STDLIB_LICENSE, raw=_read(path, max_bytes)
        )


def module_docstrings(source: bytes) -> str:
    """The module, class and function docstrings of a module, blank-line separated."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):  # ValueError: a NUL byte in the source.
        return ""
    nodes = (
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    )
    return "\n\n".join(doc for doc in map(ast.get_docstring, nodes) if doc)


def distribution_license(metadata) -> str:
    """A distribution's license: SPDX expression, short License field, or classifier."""
    expression = metadata.get("License-Expression")
    if expression:
        return expression
    license_field = metadata.get("License") or ""
    if license_field and "\n" not in license_field and len(license_field) < 64:
        return license_field
    classifiers = [c for c in metadata.get_all("Classifier") or [] if c.startswith("License ::")]
    return classifiers[0].split(" :: ")[-1] if classifiers else "UNKNOWN"


def _distribution_documents(dist, max_bytes: int) -> Iterator[RawDocument]:
    name = dist.metadata.get("Name") or "unknown"
    license_name = distribution_license(dist.metadata)
    description = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
    key = f"dist/{name}/METADATA"
    yield RawDocument(path=key, split_key=key, license=license_name, text=description)
    for file in dist.files or ():
        if file.suffix in _DOC_SUFFIXES and "licenses" not in file.parts:
            key = f"dist/{name}/{file.as_posix()}"
            located = pathlib.Path(dist.locate_file(file))
            if located.is_file():
                raw = _read(located, max_bytes)
                yield RawDocument(path=key, split_key=key, license=license_name, raw=raw)


def _docstring_documents(max_bytes: int) -> Iterator[RawDocument]:
    for rel, path in stdlib_files():
        text = module_docstrings(_read(path, max_bytes))
        yield RawDocument(
            path=f"stdlib/{rel}#docstrings", split_key=rel, license=STDLIB_LICENSE, text=text
        )


def _package_documents(max_bytes: int) -> Iterator[RawDocument]:
    dists = sorted(importlib.metadata.distributions(), key=lambda d: d.metadata.get("Name") or "")
    for dist in dists:
        yield from _distribution_documents(dist, max_bytes)


def natural_documents(max_bytes: int) -> Iterator[RawDocument]:
    """Stdlib docstrings alternating with installed distributions' documentation.

    Alternating keeps both kinds in a capped sample. A distribution installed twice yields
    its documents once.
    """
    seen = set()
    for pair in itertools.zip_longest(
        _docstring_documents(max_bytes), _package_documents(max_bytes)
    ):
        for doc in pair:
            if doc is not None and doc.path not in seen:
                seen.add(doc.path)
                yield doc


def clean(doc: RawDocument, *, max_bytes: int, stats: documents.DocumentStats) -> str | None:
    """The document's text under the bad-input rules, or None when it is skipped."""
    if doc.raw is not None:
        return documents.text_from_bytes(doc.raw, max_bytes=max_bytes, stats=stats)
    return documents.text_from_str(doc.text, max_bytes=max_bytes, stats=stats)


class StdlibCorpusConfig(tfds.core.BuilderConfig):
    """Which language to collect and how much.

    Args:
      language: "python" or "natural".
      max_total_bytes: stop once this much text is collected (both splits together).
      max_doc_bytes: per-document truncation limit.
      validation_percent: share of paths, by hash, in the validation split.
      **kwargs: name, description and version, as for tfds.core.BuilderConfig.
    """

    def __init__(
        self,
        *,
        language: str,
        max_total_bytes: int,
        max_doc_bytes: int = 256 << 10,
        validation_percent: int = 5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.language = language
        self.max_total_bytes = max_total_bytes
        self.max_doc_bytes = max_doc_bytes
        self.validation_percent = validation_percent


class CodegenStdlib(tfds.core.GeneratorBasedBuilder):
    """TFDS builder ``codegen2_stdlib``: the embedded, network-free default corpus."""

    name = "codegen2_stdlib"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Standard-library code; docstrings and package docs."}
    BUILDER_CONFIGS = [
        StdlibCorpusConfig(name="python", language="python", max_total_bytes=4 << 20),
        StdlibCorpusConfig(name="natural", language="natural", max_total_bytes=2 << 20),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        info = self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"text": text, "path": text, "license": text}),
            description=__doc__.split("\n\n")[0],
        )
        # Stated in code so that reopening a prepared dataset never restores it from
        # dataset_info.json, a path that fails with tfds-nightly 4.9.2 under protobuf 7.
        info.set_file_format("tfrecord")
        return info

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        return {split: self._generate_examples(split) for split in ("train", "validation")}

    def _generate_examples(self, split: str):
        config = self.builder_config
        stats = documents.DocumentStats()
        make = python_documents if config.language == "python" else natural_documents
        total = 0
        for doc in make(config.max_doc_bytes):
            if total >= config.max_total_bytes:
                break
            text = clean(doc, max_bytes=config.max_doc_bytes, stats=stats)
            if text is None:
                continue
            # Both splits walk the same capped sequence, so they partition one sample.
            total += len(text.encode("utf-8"))
            if split_of(doc.split_key, config.validation_percent) == split:
                yield doc.path, {"text": text, "path": doc.path, "license": doc.license}
        stats.log(f"codegen2_stdlib/{config.name} {split}")


class StdlibSource(seqio.DataSource):
    """seqio source over a ``codegen2_stdlib`` config, built into ``data_dir`` on first use.

    It constructs the builder from this module's class rather than through ``tfds.builder``
    with a version, which would read the prepared dataset's info from disk, a path that
    fails with tfds-nightly 4.9.2 under protobuf 7.

    Args:
      config: "python" or "natural".
      data_dir: TFDS data_dir, or a callable returning it when the dataset is built (e.g. a
        gin-configured one); None: TFDS's default (TFDS_DATA_DIR or ~/tensorflow_datasets).
      train_split: the TFDS split expression read as "train"; a slice such as "train[:10%]"
        caps the training corpus (validation stays whole, so capped and full corpora are
        measured on the same held-out documents).
    """

    def __init__(
        self,
        config: str,
        data_dir: str | Callable[[], str | None] | None = None,
        train_split: str = "train",
    ):
        if not train_split.startswith("train"):
            raise ValueError(f"train_split must select from 'train', got {train_split!r}")
        self._config = config
        self._data_dir = data_dir
        self._train_split = train_split
        super().__init__(splits=("train", "validation"))

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def builder(self) -> CodegenStdlib:
        """The prepared builder (prepared now if its data_dir has no copy yet)."""
        data_dir = self._data_dir() if callable(self._data_dir) else self._data_dir
        builder = CodegenStdlib(config=self._config, data_dir=data_dir)
        if not builder.is_prepared():
            _prepare(builder)
        return builder

    def list_shards(self, split: str) -> list[str]:
        return [split]

    def get_dataset(
        self, split="train", shuffle=True, seed=None, shard_info=None, **unused_kwargs
    ) -> tf.data.Dataset:
        """A split (or this host's even part of it) as {"text", "path", "license"}."""
        if split == "train":
            split = self._train_split
        if shard_info and shard_info.num_shards > 1:
            split = tfds.even_splits(split, n=shard_info.num_shards)[shard_info.index]
        read_config = tfds.ReadConfig(shuffle_seed=seed)
        return self.builder().as_dataset(
            split=split, shuffle_files=shuffle, read_config=read_config
        )


def _prepare(builder: CodegenStdlib) -> None:
    """Builds the corpus (seconds): one line here and one per split, not TFDS's bars and banners.

    The bars are switched back on afterwards (TFDS's default, which nothing else here changes).
    """
    logger.info(
        "building the embedded corpus %s/%s in %s",
        builder.name,
        builder.builder_config.name,
        builder.data_dir_root,
    )
    tfds.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints its banners there
            builder.download_and_prepare()
    finally:
        tfds.enable_progress_bar()
