"""A seqio Vocabulary over a Hugging Face tokenizer.json (CodeGen2's byte-level BPE).

It has the special ids the objectives use (eos_id, sep_id, eom_id, mask_id(n), num_masks),
found from the tokenizer's own tokens (codegen2_jax.data.bpe). In tf.data it tokenizes through
a stateless ``tf.numpy_function``: a pure function of its input, so a pipeline over it still
saves and restores its position (a ``py_function`` would fail at the first checkpoint).

Id 0 is a real token in these tokenizers ("!" in GPT-2's), so seqio's padding at 0 is only
harmless where segment ids and loss weights mask it; decoding stops at the first
``<|endoftext|>``, as seqio's decode does, and never renders what follows it.
"""

import numpy as np
import seqio
import tensorflow as tf

from codegen2_jax.data import bpe


def tokenizer_file(path: str) -> str:
    """The tokenizer.json a path names: the file itself, or the one in a directory."""
    return f"{path.rstrip('/')}/{bpe.TOKENIZER_FILE}" if tf.io.gfile.isdir(path) else path


def _text(value) -> str:
    # numpy_function passes a scalar string as bytes in tf.data and as a 0-d array eagerly.
    return np.asarray(value).item().decode("utf-8")


class HFVocabulary(seqio.Vocabulary):
    """seqio Vocabulary of a tokenizer.json (a file or a directory, any tf.io.gfile path)."""

    def __init__(self, path: str):
        self.path = path
        file = tokenizer_file(path)
        if not tf.io.gfile.exists(file):
            raise FileNotFoundError(
                f"no tokenizer at {path}: a vocabulary is a sentencepiece .model, a Hugging "
                f"Face {bpe.TOKENIZER_FILE} or a directory holding one"
            )
        with tf.io.gfile.GFile(file) as f:
            self.tokenizer = bpe.ByteLevelBPE(f.read(), name=file)
        super().__init__(extra_ids=0)

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def decoder_start_id(self) -> int:
        """The input before a document's first token: in the token stream these tokenizers
        were made for, each document follows the previous one's ``<|endoftext|>``."""
        return self.eos_id

    @property
    def unk_id(self) -> None:
        return None  # byte-level: every input has tokens

    @property
    def sep_id(self) -> int:
        return self.tokenizer.sep_id

    @property
    def eom_id(self) -> int:
        return self.tokenizer.eom_id

    @property
    def num_masks(self) -> int:
        return self.tokenizer.num_masks

    def mask_id(self, n: int) -> int:
        return self.tokenizer.mask_id(n)

    @property
    def _base_vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def _encode(self, s: str) -> list[int]:
        return self.tokenizer.encode(s)

    def _decode(self, ids) -> str:
        ids = list(ids)
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode(ids)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        ids = tf.numpy_function(
            lambda text: np.asarray(self.tokenizer.encode(_text(text)), np.int32),
            [tf.ensure_shape(s, [])],
            tf.int32,
            stateful=False,  # a pure function: the pipeline's position stays saveable
        )
        return tf.ensure_shape(ids, [None])

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        def decode(rows: np.ndarray) -> np.ndarray:
            flat = rows.reshape(-1, rows.shape[-1])
            texts = [self._decode(row.tolist()).encode("utf-8") for row in flat]
            return np.array(texts, dtype=object).reshape(rows.shape[:-1])

        texts = tf.numpy_function(decode, [tf.cast(ids, tf.int32)], tf.string, stateful=False)
        return tf.ensure_shape(texts, ids.shape[:-1])

    def __eq__(self, other) -> bool:
        return isinstance(other, HFVocabulary) and self.tokenizer.digest == other.tokenizer.digest

    def __hash__(self) -> int:
        return hash(self.tokenizer.digest)
