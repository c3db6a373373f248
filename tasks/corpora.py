"""The corpora: one ``register_corpus`` declaration each (README.md, "Add a corpus").

- ``stdlib_py`` / ``stdlib_nl``: the embedded corpus (codegen2_jax.data.corpus), built on
  first use into ``tasks.stdlib_data_dir.path`` (default: TFDS_DATA_DIR or
  ~/tensorflow_datasets).
- ``stdlib_py_tenth``: the first 10% of stdlib_py's training documents (about 92k of its
  1.23M tokens), its validation split whole: the smaller corpus of the multi-epoch lesson
  (gin/experiments/lessons/multi_epoch.gin).
- ``the_stack_<language>``: The Stack (v1.x dedup) as distributed, ``<root>/<language>/*.parquet``
  with ``content`` and ``max_stars_repo_*`` columns (jsonl copies with the same fields work
  too); the root is bound in gin: ``tasks.the_stack_root.path = "gs://bucket/the-stack-dedup/data"``.
  It ships one split, so the records whose repository/path hashes into 1% form "validation".
- ``starcoderdata_<language>``: StarCoderData (bigcode/starcoderdata, the filtered,
  decontaminated The Stack v1.2 that StarCoder trained on) as distributed,
  ``<root>/<language>/*.parquet`` with ``content`` and ``max_stars_repo_*`` columns;
  ``tasks.starcoderdata_root.path = ...``; 1% of repository/paths form "validation".
- ``pile``: The Pile as distributed, ``<root>/train/*.jsonl.zst``, ``<root>/val.jsonl.zst``
  (``.jsonl`` and ``.jsonl.gz`` too); ``tasks.the_pile_root.path = ...``.

The Stack and The Pile are parsed in Python, in chunks whose position checkpoints save
(codegen2_jax.data.chunked_files); seqio's offline cache of their tasks (codegen2_jax.data.cache)
reads faster.
"""

import gin

from codegen2_jax.data import corpus, sources
from tasks.registry import register_corpus

# The CodeGen2 languages: task name suffix -> The Stack directory.
THE_STACK_LANGUAGES = {
    "c": "c",
    "cpp": "c++",
    "csharp": "c-sharp",
    "dart": "dart",
    "go": "go",
    "java": "java",
    "javascript": "javascript",
    "kotlin": "kotlin",
    "lua": "lua",
    "php": "php",
    "python": "python",
    "ruby": "ruby",
    "rust": "rust",
    "scala": "scala",
    "shell": "shell",
    "sql": "sql",
    "swift": "swift",
    "typescript": "typescript",
    "vue": "vue",
}

# StarCoderData's directory names where they differ from the task name suffix.
STARCODERDATA_DIRECTORIES = {language: language for language in THE_STACK_LANGUAGES} | {
    "csharp": "c-sharp"
}


def _required(path: str | None, binding: str) -> str:
    if not path:
        raise ValueError(f"Bind {binding} in gin (a local path or bucket) to read this corpus.")
    return path.rstrip("/")


@gin.configurable(module="tasks")
def stdlib_data_dir(path: str | None = None) -> str | None:
    """TFDS data_dir of the embedded corpus (None: TFDS_DATA_DIR or ~/tensorflow_datasets)."""
    return path


@gin.configurable(module="tasks")
def the_stack_root(path: str | None = None) -> str:
    """Directory holding The Stack's per-language directories (gin: REQUIRED to read it)."""
    return _required(path, "tasks.the_stack_root.path")


@gin.configurable(module="tasks")
def starcoderdata_root(path: str | None = None) -> str:
    """Directory holding StarCoderData's per-language directories (gin: REQUIRED to read it)."""
    return _required(path, "tasks.starcoderdata_root.path")


@gin.configurable(module="tasks")
def the_pile_root(path: str | None = None) -> str:
    """Directory holding The Pile's train/ and val.jsonl.zst (gin: REQUIRED to read it)."""
    return _required(path, "tasks.the_pile_root.path")


def _per_language_files(root, directory: str):
    return lambda: [f"{root()}/{directory}/*.{ext}" for ext in ("parquet", "jsonl*")]


def _stack_source(root, directory: str, **fields) -> sources.DocumentSource:
    return sources.DocumentSource(
        split_to_filepattern={"train": _per_language_files(root, directory)},
        text_field="content",
        path_fields=("max_stars_repo_name", "max_stars_repo_path"),
        validation_percent=1,
        **fields,
    )


def _pile_files(pattern: str):
    return lambda: f"{the_pile_root()}/{pattern}"


for _config in ("python", "natural"):
    register_corpus(
        {"python": "stdlib_py", "natural": "stdlib_nl"}[_config],
        "v1",
        corpus.StdlibSource(_config, data_dir=stdlib_data_dir),
    )

register_corpus(
    "stdlib_py_tenth",
    "v1",
    corpus.StdlibSource("python", data_dir=stdlib_data_dir, train_split="train[:10%]"),
)

for _language, _directory in THE_STACK_LANGUAGES.items():
    register_corpus(
        f"the_stack_{_language}",
        "v1",
        _stack_source(the_stack_root, _directory, license_field="max_stars_repo_licenses"),
    )
    register_corpus(
        f"starcoderdata_{_language}",
        "v1",
        _stack_source(starcoderdata_root, STARCODERDATA_DIRECTORIES[_language]),
    )

register_corpus(
    "pile",
    "v1",
    sources.DocumentSource(
        split_to_filepattern={
            "train": _pile_files("train/*.jsonl*"),
            "validation": _pile_files("val.jsonl*"),
            "test": _pile_files("test.jsonl*"),
        },
        text_field="text",
    ),
)
