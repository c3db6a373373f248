"""The exported tokenizer.json: the vocabulary's ids on the whole embedded corpus and on nasty
strings, its decoding, special tokens at their ids, and the same through transformers."""

import re

import pytest
import tokenizers
import transformers
from hypothesis import given, settings
from sentencepiece import sentencepiece_model_pb2

from codegen2_jax.data import corpus, sentencepiece_export, tokenizer, vocab
from tests.data.test_tokenizer import TEXT

NASTY = [
    "",
    *(" " * n for n in range(1, 41)),
    *(f"x{' ' * n}y" for n in (1, 2, 15, 16, 17, 31, 32, 33, 40)),
    *("\t" * n + "pass" for n in range(1, 9)),
    "if x:\n\treturn 1\r\n\t\telse:\r\n    \t  pass\n\n\n",
    "a\rb\r\r\n\r",
    "😀 👍🏽 🇺🇳 emoji",
    "中文字符 日本語 한국어",
    "a\x00b\x00",
    "".join(map(chr, range(32))) + "\x7f\x85\xa0\u200b\u2028\u3000\ufeff",
    "0123456789 3.14159 1e-10 0xFF 1_000_000 x1 y22",
    "\u2581",
    "a\u2581b \u2581\u2581 \u2581 ",
    "<mask_1",
    "def f(x):\r\n\treturn x    # é 中文 😀\x00\n\n\n        done\u3000",
]


@pytest.fixture(scope="module")
def code_vocab():
    return vocab.default_vocabulary()


@pytest.fixture(scope="module")
def exported(code_vocab):
    return sentencepiece_export.tokenizer_json(code_vocab)


@pytest.fixture(scope="module")
def hf(exported):
    return tokenizers.Tokenizer.from_str(exported)


@pytest.fixture(scope="module")
def hf_text(exported):
    """The tokenizer with special tokens encoded as text, as CodeVocabulary encodes them."""
    tok = tokenizers.Tokenizer.from_str(exported)
    tok.encode_special_tokens = True
    return tok


@pytest.fixture(scope="module")
def fast(exported):
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer.from_str(exported)
    )


@pytest.fixture(scope="module")
def special_ids(code_vocab):
    ids = {
        vocab.PAD_PIECE: code_vocab.pad_id,
        vocab.EOS_PIECE: code_vocab.eos_id,
        vocab.UNK_PIECE: code_vocab.unk_id,
        vocab.SEP_PIECE: code_vocab.sep_id,
        vocab.EOM_PIECE: code_vocab.eom_id,
    }
    return ids | {vocab.mask_piece(n): code_vocab.mask_id(n) for n in range(1, 65)}


@pytest.fixture(scope="module")
def documents(corpus_dir):
    """Every document of the embedded corpus: both configs, both splits."""
    return [
        example["text"].decode("utf-8")
        for config in ("python", "natural")
        for split in ("train", "validation")
        for example in corpus.StdlibSource(config, data_dir=corpus_dir)
        .get_dataset(split, shuffle=False)
        .as_numpy_iterator()
    ]


def test_every_id_is_the_same_piece(code_vocab, hf):
    assert hf.get_vocab_size() == code_vocab.vocab_size == 8192
    pieces = [code_vocab.tokenizer.id_to_piece(i) for i in range(code_vocab.vocab_size)]
    assert [hf.id_to_token(i) for i in range(code_vocab.vocab_size)] == pieces


def test_special_pieces_are_special_tokens_at_their_ids(code_vocab, hf, special_ids):
    assert code_vocab.num_masks == 64
    assert {piece: hf.token_to_id(piece) for piece in special_ids} == special_ids
    added = hf.get_added_tokens_decoder()
    assert {i for i, token in added.items() if token.special} == set(special_ids.values())
    whitespace = {code_vocab.tokenizer.piece_to_id(p) for p in tokenizer.WHITESPACE_PIECES}
    assert {i for i, token in added.items() if not token.special} == whitespace


def test_the_whole_embedded_corpus_encodes_and_decodes_as_the_vocabulary_does(
    code_vocab, fast, documents
):
    expected = [code_vocab.encode(text) for text in documents]
    assert len(documents) > 500 and sum(map(len, expected)) > 1_000_000
    # Text spelling a special piece is a special token to transformers, by design.
    spells_special = re.compile(r"<pad>|<\|endoftext\|>|<unk>|<sep>|<eom>|<mask_\d+>").search
    plain = [i for i, text in enumerate(documents) if not spells_special(text)]
    spelled = [i for i, text in enumerate(documents) if spells_special(text)]
    assert len(plain) > 0.9 * len(documents)
    assert fast([documents[i] for i in plain])["input_ids"] == [expected[i] for i in plain]
    got = fast([documents[i] for i in spelled], split_special_tokens=True)["input_ids"]
    assert got == [expected[i] for i in spelled]
    # The project's decode stops at eos: encoded text has none.
    assert fast.batch_decode(expected) == [code_vocab.decode(ids) for ids in expected]


@pytest.mark.parametrize("text", NASTY)
def test_nasty_strings_encode_and_decode_as_the_vocabulary_does(code_vocab, hf, fast, text):
    ids = code_vocab.encode(text)
    assert hf.encode(text).ids == ids
    assert fast(text)["input_ids"] == ids
    assert fast.decode(ids) == hf.decode(ids) == code_vocab.decode(ids)
    assert code_vocab.decode(ids) == text.replace("\u2581", " ")


def test_space_runs_stay_whole_pieces(code_vocab, hf):
    # Sentencepiece matches the longest user-defined piece first: 40 spaces are 16 + 16 + 8.
    assert hf.encode(" " * 40).tokens == ["▁" * 16, "▁" * 16, "▁" * 8]
    assert hf.encode("a" + " " * 17 + "b").ids == code_vocab.encode("a" + " " * 17 + "b")


@settings(max_examples=300, deadline=None)
@given(text=TEXT)
def test_random_strings_encode_and_decode_as_the_vocabulary_does(code_vocab, hf_text, text):
    ids = code_vocab.encode(text)
    assert hf_text.encode(text).ids == ids
    assert hf_text.decode(ids, skip_special_tokens=False) == code_vocab.decode(ids)


def test_text_spelling_a_special_piece_is_that_token(code_vocab, hf, hf_text, fast, special_ids):
    for piece, piece_id in special_ids.items():
        assert hf.encode(piece).ids == [piece_id]
        assert hf_text.encode(piece).ids == code_vocab.encode(piece) != [piece_id]
    prompt = "def f(x):\n    <mask_1>\n<|endoftext|><sep><mask_1>"
    ids = fast(prompt)["input_ids"]
    sep_at = ids.index(code_vocab.sep_id)
    assert ids[sep_at - 1] == code_vocab.eos_id and ids[sep_at + 1] == code_vocab.mask_id(1)
    assert ids.count(code_vocab.mask_id(1)) == 2
    assert fast.decode(ids) == prompt
    assert fast(prompt, split_special_tokens=True)["input_ids"] == code_vocab.encode(prompt)


def test_decoding_renders_special_tokens_by_name(code_vocab, hf, fast):
    body = code_vocab.encode("def f():\n    ")
    ids = [code_vocab.sep_id, *body, code_vocab.eom_id, code_vocab.mask_id(1)]
    assert fast.decode(ids) == code_vocab.decode(ids) == "<sep>def f():\n    <eom><mask_1>"
    # Unlike the project's decode, which renders these as "", "" (and stops) and " ⁇ ".
    others = [code_vocab.pad_id, code_vocab.eos_id, code_vocab.unk_id, *body]
    assert fast.decode(others) == "<pad><|endoftext|><unk>def f():\n    "
    assert hf.decode(ids + others) == "def f():\n    def f():\n    "  # skip_special_tokens


def test_a_byte_run_that_is_not_utf8_decodes_as_replacement_characters(code_vocab, hf):
    # Never produced by encoding; sentencepiece keeps the valid characters of such a run.
    ids = [code_vocab.tokenizer.piece_to_id(f"<0x{b:02X}>") for b in "中".encode() + b"\xff"]
    assert code_vocab.decode(ids) == "中\ufffd"
    assert hf.decode(ids) == "\ufffd" * 4


@pytest.mark.parametrize("change", ["unigram", "dummy_prefix"])
def test_only_models_with_the_projects_options_are_exported(code_vocab, tmp_path, change):
    proto = sentencepiece_model_pb2.ModelProto.FromString(code_vocab.sp_model)
    if change == "unigram":
        proto.trainer_spec.model_type = sentencepiece_model_pb2.TrainerSpec.UNIGRAM
    else:
        proto.normalizer_spec.add_dummy_prefix = True
    path = tmp_path / "changed.model"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ValueError, match="only byte-fallback BPE"):
        sentencepiece_export.tokenizer_json(vocab.CodeVocabulary(str(path)))
