"""The code vocabulary: a seqio SentencePieceVocabulary that names CodeGen2's special ids.

Id layout of a model trained by ``codegen2_jax.data.tokenizer`` (vocab_size V, M masks)::

    0 <pad>   1 <|endoftext|> (eos)   2 <unk>   3 <sep>   4 <eom>   ... pieces ...
    V-M <mask_M>  ...  V-2 <mask_2>   V-1 <mask_1>

``<mask_N>`` = V − N, the way t5 numbers its sentinels (t5.data.preprocessors' span helpers
produce exactly these ids), and the way the released CodeGen2 models number their masks. The
masks live in the model file itself, so seqio's ``extra_ids`` stays 0 and the file alone
describes the vocabulary.

All special pieces are sentencepiece CONTROL pieces: no input text ever encodes to a special
id (a source file that contains the characters ``<eom>`` stays ordinary text), and only the
preprocessors insert them, by id. ``decode`` renders ``<sep>``, ``<eom>`` and ``<mask_N>`` by
name (and, as seqio does, stops after the first eos, which renders empty, like pad).
"""

import functools
import pathlib
import re

import seqio
import tensorflow as tf
import tensorflow_text as tf_text
from sentencepiece import SentencePieceProcessor, sentencepiece_model_pb2

PAD_PIECE = "<pad>"
EOS_PIECE = "<|endoftext|>"
UNK_PIECE = "<unk>"
SEP_PIECE = "<sep>"
EOM_PIECE = "<eom>"
DEFAULT_NUM_MASKS = 64
DEFAULT_MODEL_FILE = pathlib.Path(__file__).resolve().parent / "assets" / "code_8k.model"

_MASK_RE = re.compile(r"<mask_(\d+)>")
_ModelProto = sentencepiece_model_pb2.ModelProto


def mask_piece(n: int) -> str:
    """The piece string of the n-th mask (1-based), e.g. ``<mask_1>``."""
    return f"<mask_{n}>"


def _is_displayed(piece: str) -> bool:
    return piece in (SEP_PIECE, EOM_PIECE) or _MASK_RE.fullmatch(piece) is not None


@functools.cache
def _display_proto(sp_model: bytes) -> bytes:
    # Decoding renders CONTROL pieces as "", so decode uses a copy of the model in which the
    # displayed specials are USER_DEFINED (rendered literally). Encoding never uses it.
    proto = _ModelProto.FromString(sp_model)
    for piece in proto.pieces:
        if piece.type == _ModelProto.SentencePiece.CONTROL and _is_displayed(piece.piece):
            piece.type = _ModelProto.SentencePiece.USER_DEFINED
    return proto.SerializeToString()


@functools.cache
def _display_tokenizer(sp_model: bytes) -> SentencePieceProcessor:
    return SentencePieceProcessor(model_proto=_display_proto(sp_model))


class CodeVocabulary(seqio.SentencePieceVocabulary):
    """SentencePiece vocabulary with pad/eos/unk/sep/eom ids and ``<mask_N>`` = V − N.

    Args:
      sentencepiece_model_file: a model written by ``codegen2_jax.data.tokenizer`` (any path
        tf.io.gfile reads).
    """

    def __init__(self, sentencepiece_model_file: str):
        super().__init__(str(sentencepiece_model_file))

    def _special_id(self, piece: str) -> int:
        piece_id = self.tokenizer.piece_to_id(piece)
        if piece_id == self.tokenizer.unk_id() and piece != UNK_PIECE:
            raise ValueError(f"{self.sentencepiece_model_file} has no {piece} piece")
        return piece_id

    @property
    def decoder_start_id(self) -> int:
        """The input before a document's first token: seqio's shift-right fill, pad (0)."""
        return self.pad_id

    @property
    def sep_id(self) -> int:
        """Id of ``<sep>``, which separates the corrupted file from its spans."""
        return self._special_id(SEP_PIECE)

    @property
    def eom_id(self) -> int:
        """Id of ``<eom>``, which ends every infilled span."""
        return self._special_id(EOM_PIECE)

    @functools.cached_property
    def num_masks(self) -> int:
        """How many ``<mask_N>`` pieces end the vocabulary."""
        n = 0
        while n < self.vocab_size and self.tokenizer.id_to_piece(
            self.vocab_size - n - 1
        ) == mask_piece(n + 1):
            n += 1
        return n

    def mask_id(self, n: int) -> int:
        """Id of ``<mask_n>``: vocab_size − n, for n in 1..num_masks."""
        if not 1 <= n <= self.num_masks:
            raise ValueError(f"mask number {n} outside 1..{self.num_masks}")
        return self.vocab_size - n

    def _decode(self, ids):
        piece_size = self.tokenizer.GetPieceSize()
        ids = [self.unk_id if i >= piece_size else int(i) for i in ids]
        return _display_tokenizer(self.sp_model).DecodeIds(ids)

    def _decode_tf(self, ids):
        return tf_text.SentencepieceTokenizer(model=_display_proto(self.sp_model)).detokenize(
            tf.cast(ids, tf.int32)
        )

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("num_masks", None)  # cached_property: recomputed after unpickling.
        return state

    def __eq__(self, other) -> bool:
        # The same model whatever file it was read from (seqio's compares file paths too).
        return isinstance(other, CodeVocabulary) and self.sp_model == other.sp_model

    def __hash__(self) -> int:
        return hash(self.sp_model)


def default_vocabulary() -> CodeVocabulary:
    """The shipped vocabulary: 8192 pieces (64 masks) trained on the embedded corpus."""
    return CodeVocabulary(str(DEFAULT_MODEL_FILE))


def load_vocabulary(path: str) -> seqio.Vocabulary:
    """The vocabulary a path names: a sentencepiece ``.model`` (CodeVocabulary), else a
    Hugging Face tokenizer.json or a directory holding one (HFVocabulary)."""
    from codegen2_jax.data import hf_vocab  # tokenizers only for Hugging Face vocabularies

    if str(path).endswith(".model"):
        return CodeVocabulary(str(path))
    return hf_vocab.HFVocabulary(str(path))


SAVED_FILES = ("code.model", "tokenizer.json")  # a saved vocabulary: one of these
SAVED_VOCABULARY_DIR = "vocabulary"  # beside the steps of a Checkpointer directory


def vocabulary_file(vocabulary: seqio.Vocabulary) -> tuple[str, bytes]:
    """The file that describes a vocabulary: (name, contents) for save_vocabulary."""
    if isinstance(vocabulary, CodeVocabulary):
        return SAVED_FILES[0], vocabulary.sp_model
    return SAVED_FILES[1], vocabulary.tokenizer.tokenizer_json.encode("utf-8")


def save_vocabulary(vocabulary: seqio.Vocabulary, directory: str) -> str:
    """Writes the vocabulary's file into directory (any tf.io.gfile path); returns its path."""
    name, contents = vocabulary_file(vocabulary)
    tf.io.gfile.makedirs(directory)
    path = f"{directory.rstrip('/')}/{name}"
    # Written whole, then renamed: other processes may be reading the directory.
    with tf.io.gfile.GFile(path + ".incomplete", "wb") as f:
        f.write(contents)
    tf.io.gfile.rename(path + ".incomplete", path, overwrite=True)
    return path


def load_saved_vocabulary(directory: str) -> seqio.Vocabulary | None:
    """The vocabulary save_vocabulary wrote into directory, or None if there is none."""
    for name in SAVED_FILES:
        path = f"{directory.rstrip('/')}/{name}"
        if tf.io.gfile.exists(path):
            return load_vocabulary(path)
    return None


def keep_vocabulary(
    vocabulary: seqio.Vocabulary, directory: str, *, made: str, remedy: str, save: bool = True
) -> None:
    """Keeps the vocabulary that made something (checkpoints, a cache) in its directory.

    Args:
      vocabulary: the configured one.
      directory: where it is kept (load_saved_vocabulary); written if it keeps none and save.
      made: what the kept one made, for the error ("this run's checkpoints").
      remedy: what to do instead, for the error.

    Raises:
      ValueError: the directory keeps another vocabulary.
    """
    saved = load_saved_vocabulary(directory)
    if saved is None:
        if save:
            save_vocabulary(vocabulary, directory)
    elif saved != vocabulary:
        raise ValueError(
            f"{directory} holds the tokenizer {made} were made with, and the configured one "
            f"(VOCABULARY) is another tokenizer; {remedy}"
        )


@functools.cache
def _load_cached(path: str) -> seqio.Vocabulary:
    return load_vocabulary(path)


class ConfiguredVocabulary(seqio.Vocabulary):
    """The vocabulary a run configures, looked up when first used rather than at registration.

    Registered tasks are built when ``tasks`` is imported, before a run's gin config is
    parsed; this stands in for the vocabulary that ``path()`` names when the data is read
    (None: the shipped one), so one binding chooses the tokenizer of every registered corpus.

    Args:
      path: returns the path of a vocabulary (load_vocabulary), or None.
    """

    def __init__(self, path):
        self._path = path
        super().__init__(extra_ids=0)

    @property
    def resolved(self) -> seqio.Vocabulary:
        """The vocabulary the configured path names now."""
        return _load_cached(str(self._path() or DEFAULT_MODEL_FILE))

    def __getattr__(self, name):
        # Everything else (sep_id, eom_id, mask_id, num_masks, decoder_start_id, tokenizer)
        # is the configured vocabulary's.
        if name.startswith("__") or name in ("_path", "_extra_ids"):
            raise AttributeError(name)
        return getattr(self.resolved, name)

    eos_id = property(lambda self: self.resolved.eos_id)
    pad_id = property(lambda self: self.resolved.pad_id)
    unk_id = property(lambda self: self.resolved.unk_id)
    _base_vocab_size = property(lambda self: self.resolved.vocab_size)

    def _encode(self, s):
        return self.resolved.encode(s)

    def _decode(self, ids):
        return self.resolved.decode(ids)

    def _encode_tf(self, s):
        return self.resolved.encode_tf(s)

    def _decode_tf(self, ids):
        return self.resolved.decode_tf(ids)

    def __eq__(self, other) -> bool:
        return self.resolved == getattr(other, "resolved", other)

    def __hash__(self) -> int:
        return hash(self.resolved)
