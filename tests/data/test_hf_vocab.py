"""The Hugging Face tokenizer vocabulary: CodeGen2's layout, byte-exact code, tf.data use."""

import json

import numpy as np
import pytest
import seqio
import tensorflow as tf
import transformers
from hypothesis import given, settings

from codegen2_jax.data import bpe, hf_vocab, pipeline, sources, vocab
from tasks.registry import register_corpus
from tests.data import tiny_bpe
from tests.data.test_tokenizer import TEXT

NASTY = "def f(x):\r\n\treturn x    # é 中文 😀\x00\n\n\n        <mask_1> <|endoftext|> <eom>\u3000"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return tiny_bpe.write(tmp_path_factory.mktemp("tiny_bpe"))


@pytest.fixture(scope="module")
def hf(tokenizer_dir):
    return vocab.load_vocabulary(str(tokenizer_dir))


def test_special_ids_follow_codegen2s_layout(hf):
    assert isinstance(hf, hf_vocab.HFVocabulary) and hf.vocab_size == tiny_bpe.VOCAB_SIZE
    assert hf.num_masks == tiny_bpe.NUM_MASKS
    assert [hf.mask_id(n) for n in (1, 2, 16)] == [1023, 1022, 1008]
    assert len({hf.eos_id, hf.sep_id, hf.eom_id, hf.mask_id(1)}) == 4
    with pytest.raises(ValueError, match="mask number 17"):
        hf.mask_id(17)


@settings(max_examples=300, deadline=None)
@given(text=TEXT)
def test_decode_encode_round_trips_every_string(hf, text):
    assert hf.decode(hf.encode(text)) == text


@pytest.mark.parametrize("kind", ["sentencepiece", "hugging_face"])
def test_code_round_trips_and_text_never_becomes_a_special_id(hf, kind):
    vocabulary = vocab.default_vocabulary() if kind == "sentencepiece" else hf
    ids = vocabulary.encode(NASTY)
    assert vocabulary.decode(ids) == NASTY
    specials = {vocabulary.eos_id, vocabulary.sep_id, vocabulary.eom_id, vocabulary.mask_id(1)}
    assert not specials & set(ids)


def test_transformers_encodes_the_file_as_we_do(hf, tokenizer_dir):
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_dir / bpe.TOKENIZER_FILE)
    )
    text = NASTY.split("<mask_1>")[0]  # transformers matches added tokens in text; we do not
    assert fast(text)["input_ids"] == hf.encode(text)
    assert fast.decode(hf.encode(NASTY)) == NASTY


def test_tf_encoding_and_decoding_match_python(hf):
    ids = hf.encode_tf(tf.constant(NASTY)).numpy().tolist()
    assert ids == hf.encode(NASTY)
    rows = tf.constant([ids + [hf.eos_id, 0, 0], ids[:5] + [0] * (len(ids) - 2)])
    texts = hf.decode_tf(rows).numpy().tolist()
    assert texts == [NASTY.encode(), hf.decode(ids[:5] + [0] * (len(ids) - 2)).encode()]
    assert hf.decode(ids + [hf.eos_id, 0, 0]) == NASTY  # nothing after the end of text


def test_a_pipeline_tokenizing_with_it_saves_and_resumes(hf, tmp_path):
    lines = [json.dumps({"content": f"def f{i}(x):\n    return x * {i}\n"}) for i in range(300)]
    (tmp_path / "code.jsonl").write_text("\n".join(lines), encoding="utf-8")
    source = sources.DocumentSource(split_to_filepattern={"train": str(tmp_path / "*.jsonl")})
    names = register_corpus("hf_vocab_test", "v1", source, vocabulary=hf)
    try:
        make = lambda: pipeline.make_iterator(  # noqa: E731
            "hf_vocab_test_v1_codegen2_mix", feature_lengths={"targets": 64}, batch_size=2, seed=1
        )
        original = make()
        for _ in range(4):
            next(original)
        position = original.save_position()
        expected = [next(original) for _ in range(4)]
        resumed = make()
        resumed.restore_position(position)
        for want in expected:
            got = next(resumed)
            for name in want:
                np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        batch = expected[0]
        assert int(batch["decoder_target_tokens"].max()) < hf.vocab_size
        # Each packed document starts after <|endoftext|>, as in the released models' stream,
        # never after id 0, which is a real token here.
        starts = batch["decoder_positions"] == 0
        assert (
            batch["decoder_input_tokens"][starts & (batch["decoder_segment_ids"] > 0)] == hf.eos_id
        ).all()
    finally:
        for name in names:
            seqio.TaskRegistry.remove(name)
