"""Training the code sentencepiece model, and the command that does it.

    python -m codegen2_jax.data.tokenizer --source=stdlib_py_v1_causal,stdlib_nl_v1_causal \\
        --vocab_size=8192 --out=codegen2_jax/data/assets/code_8k.model
    python -m codegen2_jax.data.tokenizer --files='src/**/*.py' --vocab_size=8192 --out=m.model
    python -m codegen2_jax.data.tokenizer --files='src/**/*.py' --kind=byte_level_bpe \
        --vocab_size=51200 --out=my_tokenizer/      # tokenizer.json in CodeGen2's layout

``--source`` names seqio tasks (registered by ``--module``, default ``tasks``) whose sources
yield a ``text`` field, configured by ``--gin_bindings`` (e.g.
``--gin_bindings="tasks.the_stack_root.path = 'gs://bucket/the-stack-dedup/data'"``); their
"train" split is read in order, up to ``--max_input_bytes``. ``--files`` is a tf.io.gfile glob
(``**`` recursive, codegen2_jax.data.file_patterns) read with the rules of
``codegen2_jax.data.documents``. The shipped model is rebuilt by the first command above; it
reproduces byte for byte on the same interpreter and installed packages (the embedded corpus
is built from them).

The model is built so that ``decode(encode(s)) == s`` for every string ``s``: identity
normalization (no NFKC), no dummy prefix, no whitespace folding, byte fallback for every
character outside the learned pieces (emoji, CJK, control characters, NUL included), pieces for
newline, tab and runs of 2–16 spaces, and digits split one per piece. The smallest
vocabulary is about 320 pieces (256 byte pieces, specials, whitespace, the corpus'
characters). The rules for what does not round-trip:

- U+2581 (▁) is sentencepiece's own whitespace symbol: it decodes as a space (U+0020).
- Text that spells a special piece (``<|endoftext|>``, ``<sep>``, ``<mask_1>``…) encodes as
  ordinary characters, never as the special id, and so does round-trip as text.
- A Python ``str`` must be encodable as UTF-8: one with a lone surrogate (U+D800–U+DFFF) is
  rejected (sentencepiece 0.2.1 raises TypeError).

Special pieces (see ``codegen2_jax.data.vocab``): ``<pad>`` 0, ``<|endoftext|>`` 1, ``<unk>`` 2,
``<sep>`` 3, ``<eom>`` 4, and ``<mask_N>`` = vocab_size − N appended after training.
"""

from codegen2_jax import console  # first: native libraries read their log levels at load

# isort: split
import argparse
import importlib
import io
import logging
from collections.abc import Iterable, Iterator, Sequence

import gin
import sentencepiece as spm
import tensorflow as tf
from sentencepiece import sentencepiece_model_pb2

from codegen2_jax.data import bpe, documents, file_patterns, vocab

logger = logging.getLogger(__name__)

_ModelProto = sentencepiece_model_pb2.ModelProto

# sentencepiece trains on "sentences"; a code chunk of up to this many bytes keeps its newlines.
MAX_CHUNK_BYTES = 8192
WHITESPACE_PIECES = ["\n", "\t", "\t\t", "\t\t\t", *("▁" * k for k in range(2, 17))]


def trainer_options(*, vocab_size: int, model_type: str, num_threads: int) -> dict:
    """sentencepiece trainer options for a lossless code vocabulary of ``vocab_size`` pieces."""
    return dict(
        vocab_size=vocab_size,
        model_type=model_type,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        byte_fallback=True,
        character_coverage=0.9995,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece=vocab.PAD_PIECE,
        eos_piece=vocab.EOS_PIECE,
        unk_piece=vocab.UNK_PIECE,
        control_symbols=[vocab.SEP_PIECE, vocab.EOM_PIECE],
        user_defined_symbols=WHITESPACE_PIECES,
        max_sentence_length=MAX_CHUNK_BYTES * 2,
        # Tiny corpora (tests) cannot fill a large vocabulary; real ones reach it.
        hard_vocab_limit=False,
        num_threads=num_threads,
        minloglevel=2,
    )


def split_chunks(text: str, max_bytes: int = MAX_CHUNK_BYTES) -> Iterator[str]:
    """Splits a document at line ends into chunks of at most ``max_bytes`` bytes."""
    chunk, size = [], 0
    # Slices of an overlong line (4 bytes per character at most) still fit in a chunk.
    step = max_bytes // 4
    for line in text.splitlines(keepends=True):
        for start in range(0, len(line), step):
            piece = line[start : start + step]
            piece_bytes = len(piece.encode("utf-8"))
            if chunk and size + piece_bytes > max_bytes:
                yield "".join(chunk)
                chunk, size = [], 0
            chunk.append(piece)
            size += piece_bytes
    if chunk:
        yield "".join(chunk)


def append_masks(model_proto: bytes, num_masks: int) -> bytes:
    """Appends ``<mask_num_masks>`` … ``<mask_1>`` as CONTROL pieces, so mask N = size − N."""
    proto = _ModelProto.FromString(model_proto)
    for n in range(num_masks, 0, -1):
        proto.pieces.add(
            piece=vocab.mask_piece(n), score=0.0, type=_ModelProto.SentencePiece.CONTROL
        )
    return proto.SerializeToString()


def train(
    texts: Iterable[str],
    *,
    vocab_size: int,
    num_masks: int = vocab.DEFAULT_NUM_MASKS,
    model_type: str = "bpe",
    num_threads: int = 2,
) -> bytes:
    """Trains the code sentencepiece model on documents.

    Args:
      texts: documents; each is split into line-aligned chunks.
      vocab_size: total vocabulary size, masks included.
      num_masks: number of ``<mask_N>`` pieces at the end of the vocabulary.
      model_type: "bpe" (the default: better compression on code) or "unigram".
      num_threads: trainer threads.

    Returns:
      The serialized model proto (write it to a ``.model`` file).
    """
    chunks = (chunk for text in texts for chunk in split_chunks(text))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=chunks,
        model_writer=model,
        **trainer_options(
            vocab_size=vocab_size - num_masks, model_type=model_type, num_threads=num_threads
        ),
    )
    return append_masks(model.getvalue(), num_masks)


def texts_from_files(
    pattern: str, *, max_bytes: int = documents.DEFAULT_MAX_BYTES
) -> Iterator[str]:
    """Documents of the files matching a glob, under the bad-input rules."""
    stats = documents.DocumentStats()
    for path in file_patterns.expand(pattern):
        with tf.io.gfile.GFile(path, "rb") as f:
            text = documents.text_from_bytes(
                documents.read_head(f, max_bytes), max_bytes=max_bytes, stats=stats
            )
        if text is not None:
            yield text
    stats.log(f"tokenizer input {pattern}")


def texts_from_tasks(
    names: Sequence[str], *, split: str = "train", text_field: str = "text"
) -> Iterator[str]:
    """The raw text of registered seqio tasks' sources (before any preprocessing)."""
    import seqio  # Only the --source path needs the registry.

    for name in names:
        source = seqio.get_mixture_or_task(name).source
        for example in source.get_dataset(split, shuffle=False).as_numpy_iterator():
            yield example[text_field].decode("utf-8")


def limit_bytes(texts: Iterable[str], max_total_bytes: int) -> Iterator[str]:
    """Stops after about ``max_total_bytes`` of text."""
    total = 0
    for text in texts:
        if total >= max_total_bytes:
            return
        total += len(text.encode("utf-8"))
        yield text


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=_comma_list, default=[], help="seqio task names whose sources give `text`."
    )
    parser.add_argument("--files", help="Glob of text files (tf.io.gfile paths; ** is recursive).")
    parser.add_argument(
        "--module",
        type=_comma_list,
        default=["tasks"],
        help="Modules to import to register --source.",
    )
    parser.add_argument(
        "--gin_bindings",
        action="append",
        default=[],
        help="Gin bindings the --source tasks read, e.g. their data roots.",
    )
    parser.add_argument(
        "--vocab_size", type=int, default=8192, help="Total pieces, masks included."
    )
    parser.add_argument(
        "--num_masks", type=int, default=vocab.DEFAULT_NUM_MASKS, help="<mask_N> pieces."
    )
    parser.add_argument(
        "--kind",
        default="sentencepiece",
        choices=["sentencepiece", "byte_level_bpe"],
        help="A sentencepiece .model, or a byte-level BPE tokenizer.json in CodeGen2's layout "
        "(codegen2_jax.data.bpe), which transformers' AutoTokenizer also loads.",
    )
    parser.add_argument(
        "--model_type", default="bpe", choices=["bpe", "unigram"], help="sentencepiece model type."
    )
    parser.add_argument("--max_input_bytes", type=int, default=256 << 20, help="Training text cap.")
    parser.add_argument(
        "--out",
        required=True,
        help="Output .model path (byte_level_bpe: a directory or .json path).",
    )
    parser.add_argument("--verbose", action="store_true", help="Every library's INFO lines too.")
    return parser


def _input_texts(args: argparse.Namespace) -> Iterator[str]:
    if args.files:
        return texts_from_files(args.files)
    for module in args.module:
        importlib.import_module(module)
    gin.parse_config(args.gin_bindings)
    return texts_from_tasks(args.source)


def main(argv: Sequence[str] | None = None) -> None:
    """Command entry point; argv: the arguments, None for sys.argv[1:]."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if bool(args.source) == bool(args.files):
        parser.error("Give exactly one of --source and --files.")
    console.configure(args.verbose)
    texts = limit_bytes(_input_texts(args), args.max_input_bytes)
    out = args.out
    if args.kind == "byte_level_bpe":
        model = bpe.train(texts, vocab_size=args.vocab_size, num_masks=args.num_masks)
        model = model.tokenizer_json.encode("utf-8")
        if not out.endswith(".json"):
            tf.io.gfile.makedirs(out)
            out = f"{out.rstrip('/')}/{bpe.TOKENIZER_FILE}"
    else:
        model = train(
            texts,
            vocab_size=args.vocab_size,
            num_masks=args.num_masks,
            model_type=args.model_type,
        )
    with tf.io.gfile.GFile(out, "wb") as f:
        f.write(model)
    logger.info("Wrote %s (%d bytes)", out, len(model))


if __name__ == "__main__":
    main()
