"""Tests of the code vocabulary: special ids, mask layout, decoding of specials."""

import io
import pickle

import pytest
import sentencepiece as spm
import tensorflow as tf
from t5.data import preprocessors as t5_preprocessors

from codegen2_jax.data import vocab


@pytest.fixture(scope="module")
def code_vocab():
    return vocab.default_vocabulary()


def test_special_ids_of_the_shipped_vocabulary(code_vocab):
    assert code_vocab.vocab_size == 8192
    assert (code_vocab.pad_id, code_vocab.eos_id, code_vocab.unk_id) == (0, 1, 2)
    assert (code_vocab.sep_id, code_vocab.eom_id) == (3, 4)
    pieces = [code_vocab.tokenizer.id_to_piece(i) for i in range(5)]
    assert pieces == ["<pad>", "<|endoftext|>", "<unk>", "<sep>", "<eom>"]
    assert code_vocab.num_masks == vocab.DEFAULT_NUM_MASKS == 64


def test_masks_count_down_from_the_end(code_vocab):
    assert code_vocab.mask_id(1) == 8191
    assert code_vocab.mask_id(64) == 8192 - 64
    assert code_vocab.tokenizer.id_to_piece(8191 - 9) == "<mask_10>"
    for bad in (0, 65):
        with pytest.raises(ValueError, match="mask number"):
            code_vocab.mask_id(bad)


def test_masks_are_t5_sentinels(code_vocab):
    tokens = tf.constant([10, 11, 12, 13, 14])
    noise = tf.constant([False, True, False, True, True])
    out = t5_preprocessors.noise_span_to_unique_sentinel(tokens, noise, code_vocab, seeds=None)
    assert out.numpy().tolist() == [10, code_vocab.mask_id(1), 12, code_vocab.mask_id(2)]


def _infill_ids(code_vocab):
    return (
        code_vocab.encode("a = ")
        + [code_vocab.mask_id(1)]
        + code_vocab.encode("\n")
        + [code_vocab.sep_id, code_vocab.mask_id(1)]
        + code_vocab.encode("b")
        + [code_vocab.eom_id]
    )


def test_decode_renders_specials_by_name(code_vocab):
    expected = "a = <mask_1>\n<sep><mask_1>b<eom>"
    assert code_vocab.decode(_infill_ids(code_vocab)) == expected
    assert code_vocab.decode_tf(tf.constant(_infill_ids(code_vocab))).numpy().decode() == expected


def test_decode_stops_at_eos_and_drops_pad(code_vocab):
    ids = code_vocab.encode("x") + [code_vocab.pad_id, code_vocab.eos_id] + code_vocab.encode("y")
    assert code_vocab.decode(ids) == "x"


def test_text_never_encodes_to_a_special_id(code_vocab):
    text = "<|endoftext|><pad><sep><eom><mask_1><unk>"
    ids = code_vocab.encode(text)
    specials = {0, 1, 2, 3, 4, *range(8192 - 64, 8192)}
    assert not specials & set(ids)
    assert code_vocab.decode(ids) == text


def test_encode_tf_matches_encode(code_vocab):
    text = "def f(x):\n\treturn x  # é 中\r\n"
    assert code_vocab.encode_tf(tf.constant(text)).numpy().tolist() == code_vocab.encode(text)


def test_pickles_and_compares_equal(code_vocab):
    assert code_vocab.num_masks == 64  # Computed before pickling: must not leak into state.
    restored = pickle.loads(pickle.dumps(code_vocab))
    assert restored == vocab.default_vocabulary()
    assert restored.mask_id(3) == code_vocab.mask_id(3)


def test_a_model_without_the_specials_is_refused(tmp_path):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["plain text model"] * 10),
        model_writer=model,
        vocab_size=20,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (tmp_path / "plain.model").write_bytes(model.getvalue())
    plain = vocab.CodeVocabulary(str(tmp_path / "plain.model"))
    with pytest.raises(ValueError, match="<sep>"):
        _ = plain.sep_id
    assert plain.num_masks == 0
