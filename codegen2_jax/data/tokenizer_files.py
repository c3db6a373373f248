"""The Hugging Face tokenizer files of a vocabulary, for an exported model directory.

``AutoTokenizer.from_pretrained(out_dir)`` loads what ``write_tokenizer`` writes, offline:
tokenizer.json (a Hugging Face vocabulary's own; for the project's sentencepiece ones, the
exact conversion of codegen2_jax.data.sentencepiece_export), tokenizer_config.json and
special_tokens_map.json.

The exported tokenizer puts the vocabulary's decoder_start_id before every text it encodes
(its bos token): a document in training followed that token, so ``tokenizer(prompt)`` gives
``generate`` the prompt the model was trained to continue, as the project's sampler builds it.
In the Hugging Face tokenizer the special tokens' text (``<mask_1>``, ``<sep>``, …) becomes their
ids, which is how CodeGen2's infill prompts are written; the project's own encoding never does.
"""

from __future__ import annotations

import json
import pathlib

import seqio
import tokenizers

from codegen2_jax.data import bpe, hf_vocab, sentencepiece_export, vocab

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"


def token_ids(vocabulary: seqio.Vocabulary) -> dict[str, int]:
    """config.json's bos, eos and pad ids for a vocabulary.

    bos is what documents followed in training (decoder_start_id); pad is eos, as for GPT-2
    and CodeGen2, so that transformers never takes a leading bos for padding.
    """
    return {
        "bos_token_id": vocabulary.decoder_start_id,
        "eos_token_id": vocabulary.eos_id,
        "pad_token_id": vocabulary.eos_id,
    }


def hf_tokenizer(vocabulary: seqio.Vocabulary) -> tokenizers.Tokenizer:
    """The Hugging Face tokenizer of a vocabulary, bos put before every encoded text."""
    if isinstance(vocabulary, vocab.CodeVocabulary):
        text = sentencepiece_export.tokenizer_json(vocabulary)
    elif isinstance(vocabulary, hf_vocab.HFVocabulary):
        text = vocabulary.tokenizer.tokenizer_json
    else:
        raise TypeError(f"no Hugging Face tokenizer for a {type(vocabulary).__name__}")
    tokenizer = tokenizers.Tokenizer.from_str(text)
    bos_id = vocabulary.decoder_start_id
    bos = tokenizer.id_to_token(bos_id)
    with_bos = tokenizers.processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, bos_id)]
    )
    # Keep the tokenizer's own post-processing (byte-level offsets) ahead of it.
    previous = tokenizer.post_processor
    tokenizer.post_processor = (
        with_bos if previous is None else tokenizers.processors.Sequence([previous, with_bos])
    )
    return tokenizer


def write_tokenizer(
    vocabulary: seqio.Vocabulary, out_dir: str | pathlib.Path, *, model_max_length: int
) -> list[str]:
    """Writes the tokenizer files of a vocabulary into out_dir; returns their names."""
    tokenizer = hf_tokenizer(vocabulary)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / bpe.TOKENIZER_FILE))
    ids = token_ids(vocabulary)
    special = {
        "bos_token": tokenizer.id_to_token(ids["bos_token_id"]),
        "eos_token": tokenizer.id_to_token(ids["eos_token_id"]),
        "pad_token": tokenizer.id_to_token(ids["pad_token_id"]),
    }
    if vocabulary.unk_id is not None:
        special["unk_token"] = tokenizer.id_to_token(vocabulary.unk_id)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        # Decoding must give back the text exactly: no space clean-up before punctuation.
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (out / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (out / SPECIAL_TOKENS_MAP_FILE).write_text(json.dumps(special, indent=2) + "\n")
    return [bpe.TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE]
