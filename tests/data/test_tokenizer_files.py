"""The exported tokenizer files load with AutoTokenizer and tokenize as the project does."""

import json

import pytest
import transformers

from codegen2_jax.data import tokenizer_files, vocab
from tests.data import tiny_bpe

TEXTS = ["def f(x):\n\treturn x  +  1\r\n", "", "naïve = '日本語 🙂'\x00", "        if a:\n"]


@pytest.fixture(scope="module", params=["sentencepiece", "byte_level_bpe"])
def vocabulary(request, tmp_path_factory):
    if request.param == "sentencepiece":
        return vocab.default_vocabulary()
    return vocab.load_vocabulary(str(tiny_bpe.write(tmp_path_factory.mktemp("bpe"))))


def test_auto_tokenizer_puts_the_start_token_first_and_round_trips(vocabulary, tmp_path):
    written = tokenizer_files.write_tokenizer(vocabulary, tmp_path, model_max_length=256)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(written)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    start = vocabulary.decoder_start_id
    for text in TEXTS:
        ids = tokenizer(text).input_ids
        assert ids == [start, *vocabulary.encode(text)]
        assert tokenizer.decode(ids[1:]) == text
    ids = tokenizer_files.token_ids(vocabulary)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        ids["bos_token_id"],
        ids["eos_token_id"],
        ids["pad_token_id"],
    )
    assert ids["eos_token_id"] == vocabulary.eos_id == ids["pad_token_id"]
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["model_max_length"] == 256


def test_special_token_text_is_an_id_in_the_exported_tokenizer(vocabulary, tmp_path):
    """CodeGen2's infill prompts are written as text; the project's encoding keeps it text."""
    tokenizer_files.write_tokenizer(vocabulary, tmp_path, model_max_length=256)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    ids = tokenizer("a<mask_1>b<|endoftext|><sep><mask_1>", add_special_tokens=False).input_ids
    a, b = vocabulary.encode("a"), vocabulary.encode("b")
    mask, eos, sep = vocabulary.mask_id(1), vocabulary.eos_id, vocabulary.sep_id
    assert ids == [*a, mask, *b, eos, sep, mask]
    assert vocabulary.encode("<mask_1>") != [mask]
