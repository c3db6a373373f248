"""How a corpus becomes tasks: "<corpus>_<version>_<objective>" for each objective.

Every task reads its source's text field, tokenizes it with the run's vocabulary (no EOS:
the objectives append it) and ends with one objective of tasks.objectives. seqio's offline
cache (codegen2_jax.data.cache) stores what comes before the objective: the tokenized
documents, so masks and mixture draws are still made afresh in every epoch.
"""

import functools
from collections.abc import Sequence

import gin
import seqio
import tensorflow as tf

from codegen2_jax.data import bpe, features, vocab
from tasks import objectives


@gin.configurable(module="tasks")
def run_vocabulary(path: str | None = None, init_from_hf: str | None = None) -> str | None:
    """The tokenizer of every corpus registered without its own (gin: VOCABULARY).

    A sentencepiece ``.model``, a Hugging Face tokenizer.json or a directory holding one
    (e.g. a released CodeGen2 checkpoint's). Unset, a run that starts from a Hugging Face
    checkpoint (INIT_FROM_HF) takes that checkpoint's tokenizer; any other, the shipped code
    vocabulary (None).
    """
    if path or not init_from_hf:
        return path
    if not tf.io.gfile.exists(f"{init_from_hf.rstrip('/')}/{bpe.TOKENIZER_FILE}"):
        raise FileNotFoundError(
            f"INIT_FROM_HF {init_from_hf} has no {bpe.TOKENIZER_FILE}: set VOCABULARY to the "
            "tokenizer the model was trained with, or write that file with transformers: "
            f"AutoTokenizer.from_pretrained('{init_from_hf}').save_pretrained('{init_from_hf}')"
        )
    return init_from_hf


def task_name(corpus: str, version: str, objective: str) -> str:
    """The registered name, e.g. ``stdlib_py_v1_codegen2_mix``."""
    return f"{corpus}_{version}_{objective}"


def is_prefix_lm(objective: str) -> bool:
    """Whether an objective reads prompts as bidirectional prefixes (gin: train's prefix_lm)."""
    return objectives.OBJECTIVES.get(objective) is objectives.prefix_lm


def register_corpus(
    corpus: str,
    version: str,
    source: seqio.DataSource,
    *,
    text_field: str = "text",
    objectives_to_register: Sequence[str] = tuple(objectives.OBJECTIVES),
    vocabulary: seqio.Vocabulary | None = None,
) -> list[str]:
    """Registers one task per objective over a source of documents.

    Args:
      corpus: corpus name, e.g. "the_stack_python" (letters, digits, underscores).
      version: corpus version, e.g. "v1"; bump it when the source's content changes.
      source: a seqio DataSource whose examples hold the document in ``text_field``.
      text_field: the field holding a document's text.
      objectives_to_register: names from tasks.objectives.OBJECTIVES (default: all).
      vocabulary: the tokenizer (default: the run's, ``tasks.run_vocabulary``).

    Returns:
      The registered task names.
    """
    output_features = features.output_features(
        vocabulary or vocab.ConfiguredVocabulary(run_vocabulary)
    )
    names = []
    for objective in objectives_to_register:
        name = task_name(corpus, version, objective)
        seqio.TaskRegistry.add(
            name,
            source=source,
            preprocessors=[
                functools.partial(seqio.preprocessors.rekey, key_map={"targets": text_field}),
                functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                seqio.CacheDatasetPlaceholder(),
                objectives.OBJECTIVES[objective],
            ],
            output_features=output_features,
        )
        names.append(name)
    return names
