"""Tests of the code tokenizer: lossless round trip, its stated exceptions, training, CLI."""

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codegen2_jax.data import tokenizer, vocab

# Fragments code is made of, beside arbitrary characters: indentation, line ends, odd spaces.
FRAGMENTS = [
    "\t",
    "\r\n",
    "\n",
    "\r",
    "    ",
    "  ",
    " ",
    "\x00",
    "\x0b",
    "\x1b[0m",
    "\u3000",
    "😀",
    "中文",
    "é",
    "\ufeff",
    "\u200b",
    "def ",
    "<mask_1>",
    "<|endoftext|>",
]
CHARACTERS = st.characters(exclude_categories=("Cs",), exclude_characters="\u2581")
TEXT = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(CHARACTERS, max_size=8))).map("".join)


@pytest.fixture(scope="module")
def code_vocab():
    return vocab.default_vocabulary()


@settings(max_examples=300, deadline=None)
@given(text=TEXT)
def test_decode_encode_round_trips_every_string(code_vocab, text):
    assert code_vocab.decode(code_vocab.encode(text)) == text


def test_whitespace_symbol_decodes_as_a_space(code_vocab):
    assert code_vocab.decode(code_vocab.encode("a\u2581b")) == "a b"


def test_lone_surrogates_are_rejected(code_vocab):
    with pytest.raises(TypeError):  # sentencepiece's binding cannot convert the str.
        code_vocab.encode("a\ud800b")


def test_indentation_and_line_ends_have_pieces(code_vocab):
    pieces = code_vocab.tokenizer.encode("\tif x:\n        return 1\n", out_type=str)
    assert pieces[0] == "\t" and "\n" in pieces and "▁" * 8 in pieces
    assert "<0x0A>" not in pieces and "<0x09>" not in pieces


@pytest.mark.parametrize("max_bytes", [16, 64])
def test_split_chunks_is_lossless_and_bounded(max_bytes):
    text = "short\n" + "x" * 100 + "\n" + "é" * 40 + "\n\n"
    chunks = list(tokenizer.split_chunks(text, max_bytes))
    assert "".join(chunks) == text
    assert all(len(chunk.encode()) <= max_bytes for chunk in chunks)


CORPUS = [
    "import os\n\n\ndef main(argv):\n    for arg in argv:\n        print(arg)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "Natural language: the quick brown fox jumps over the lazy dog.\n",
] * 20


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tiny.model"
    path.write_bytes(tokenizer.train(CORPUS, vocab_size=400, num_masks=8))
    return vocab.CodeVocabulary(str(path))


def test_trained_model_has_the_special_layout(tiny_model):
    assert (tiny_model.pad_id, tiny_model.eos_id, tiny_model.unk_id) == (0, 1, 2)
    assert (tiny_model.sep_id, tiny_model.eom_id, tiny_model.num_masks) == (3, 4, 8)
    assert tiny_model.mask_id(1) == tiny_model.vocab_size - 1
    assert tiny_model.decode([tiny_model.mask_id(8)]) == "<mask_8>"
    for text in CORPUS[:3] + ["unseen: λ 😀\t\r\n"]:
        assert tiny_model.decode(tiny_model.encode(text)) == text


def _train_with_the_command(directory, pattern: str, *flags: str) -> None:
    """Writes CORPUS's first three documents under directory/src/pkg, then runs the command."""
    (directory / "src" / "pkg").mkdir(parents=True)
    for i, text in enumerate(CORPUS[:3]):
        (directory / "src" / "pkg" / f"doc{i}.py").write_text(text * 5)
    command = [sys.executable, "-m", "codegen2_jax.data.tokenizer", f"--files={pattern}", *flags]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def test_command_trains_from_files(tmp_path):
    out = tmp_path / "cli.model"
    _train_with_the_command(
        tmp_path, f"{tmp_path}/src/pkg/*.py", "--vocab_size=400", "--num_masks=4", f"--out={out}"
    )
    trained = vocab.CodeVocabulary(str(out))
    assert trained.num_masks == 4 and trained.sep_id == 3
    assert trained.decode(trained.encode(CORPUS[0])) == CORPUS[0]


def test_command_trains_a_byte_level_bpe_in_codegen2s_layout(tmp_path):
    out = tmp_path / "my_tokenizer"
    _train_with_the_command(
        tmp_path,
        f"{tmp_path}/src/**/*.py",
        "--kind=byte_level_bpe",
        "--vocab_size=300",
        "--num_masks=4",
        f"--out={out}",
    )
    trained = vocab.load_vocabulary(str(out))
    assert trained.vocab_size == 300 and trained.num_masks == 4
    assert [trained.mask_id(n) for n in (1, 4)] == [299, 296]
    assert trained.decode(trained.encode(CORPUS[0])) == CORPUS[0]
