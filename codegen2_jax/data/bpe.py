"""Byte-level BPE tokenizers in CodeGen2's layout (Hugging Face tokenizer.json), without TensorFlow.

The released CodeGen2 models use GPT-2's byte-level BPE with infill tokens added: 51200 ids,
``<|endoftext|>`` 50256, ``<sep>`` 50299, ``<eom>`` 50300, ``<mask_N>`` = 51200 − N. Every id
here is found from the tokenizer's own tokens, never by number, so any tokenizer.json with
those tokens works, whatever its size.

Encoding is byte-exact for code: byte-level BPE maps every byte sequence (whitespace runs,
tabs, CRLF, NUL, any UTF-8) to tokens and back. Text never encodes to an added token: text
that spells ``<mask_1>`` or ``<|endoftext|>`` stays ordinary characters, because encoding
uses a copy of the tokenizer without its added tokens; only the objectives insert specials,
by id. Decoding renders every token, specials by name.

``train`` builds such a tokenizer from a corpus (``python -m codegen2_jax.data.tokenizer
--kind=bpe``) for pretraining from scratch on other languages.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Sequence

import tokenizers

EOS_TOKEN = "<|endoftext|>"
SEP_TOKEN = "<sep>"
EOM_TOKEN = "<eom>"
TOKENIZER_FILE = "tokenizer.json"


def mask_token(n: int) -> str:
    """The n-th mask token (1-based), e.g. ``<mask_1>``."""
    return f"<mask_{n}>"


class ByteLevelBPE:
    """A tokenizer.json's encoding, decoding and CodeGen2 special ids.

    Args:
      tokenizer_json: the text of a Hugging Face tokenizer.json.
      name: where it came from, for messages.
    """

    def __init__(self, tokenizer_json: str, *, name: str = TOKENIZER_FILE):
        self.tokenizer_json = tokenizer_json
        self.name = name
        self._full = tokenizers.Tokenizer.from_str(tokenizer_json)
        if self.eos_id is None:
            raise ValueError(f"{name} has no {EOS_TOKEN} token")

    @functools.cached_property
    def _text_only(self) -> tokenizers.Tokenizer:
        config = json.loads(self.tokenizer_json)
        config["added_tokens"] = []  # text never becomes a special token
        config["truncation"] = config["padding"] = None
        return tokenizers.Tokenizer.from_str(json.dumps(config))

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of the tokenizer.json text: two tokenizers are equal when it is."""
        return hashlib.sha256(self.tokenizer_json.encode("utf-8")).hexdigest()

    @property
    def vocab_size(self) -> int:
        """Ids in use, added tokens included: the model's embedding rows must cover them."""
        return self._full.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int | None:
        """The id of a token, or None."""
        return self._full.token_to_id(token)

    def _required_id(self, token: str, purpose: str) -> int:
        token_id = self.token_id(token)
        if token_id is None:
            raise ValueError(f"{self.name} has no {token} token, which {purpose} needs")
        return token_id

    @property
    def eos_id(self) -> int | None:
        """``<|endoftext|>``: ends every document, and precedes each one in the token stream."""
        return self.token_id(EOS_TOKEN)

    @property
    def sep_id(self) -> int:
        return self._required_id(SEP_TOKEN, "the infill format")

    @property
    def eom_id(self) -> int:
        return self._required_id(EOM_TOKEN, "the infill format")

    @functools.cached_property
    def num_masks(self) -> int:
        """How many ``<mask_N>`` tokens there are, counting from ``<mask_1>`` up."""
        n = 0
        while self.token_id(mask_token(n + 1)) is not None:
            n += 1
        return n

    def mask_id(self, n: int) -> int:
        """The id of ``<mask_n>``, for n in 1..num_masks."""
        if not 1 <= n <= self.num_masks:
            raise ValueError(f"mask number {n} outside 1..{self.num_masks} of {self.name}")
        return self.token_id(mask_token(n))

    def encode(self, text: str) -> list[int]:
        """Token ids of text; added tokens are never matched."""
        return self._text_only.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """encode() of several texts at once (the Rust side runs them in parallel)."""
        encodings = self._text_only.encode_batch(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids, special tokens rendered by name; ids beyond the vocabulary dropped."""
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        return self._full.decode(ids, skip_special_tokens=False)

    def __getstate__(self):
        return {"tokenizer_json": self.tokenizer_json, "name": self.name}

    def __setstate__(self, state):
        self.__init__(state["tokenizer_json"], name=state["name"])


def read_local(path: str) -> ByteLevelBPE:
    """A tokenizer from a local tokenizer.json, or a directory holding one (no TensorFlow)."""
    import os

    file = os.path.join(path, TOKENIZER_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"no {file}: transformers writes one for a directory that has the tokenizer in "
            "another form, AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)"
        )
    with open(file, encoding="utf-8") as f:
        return ByteLevelBPE(f.read(), name=file)


def train(texts: Iterable[str], *, vocab_size: int, num_masks: int = 64) -> ByteLevelBPE:
    """A byte-level BPE tokenizer in CodeGen2's layout, learnt from texts.

    Ids: the 256 byte tokens and learnt merges, ``<|endoftext|>``, ``<sep>``, ``<eom>``, then
    ``<mask_num_masks>`` … ``<mask_1>`` last, so ``<mask_N>`` = vocab_size − N as in CodeGen2.

    Args:
      texts: the training documents.
      vocab_size: the total number of ids, specials included.
      num_masks: how many ``<mask_N>`` tokens (CodeGen2's spans per example at most).
    """
    specials = [EOS_TOKEN, SEP_TOKEN, EOM_TOKEN]
    masks = [mask_token(n) for n in range(num_masks, 0, -1)]
    base_size = vocab_size - len(masks)
    if base_size < 256 + len(specials):
        raise ValueError(f"vocab_size {vocab_size} leaves no room for 256 bytes and the specials")
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=base_size - len(specials),
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.add_special_tokens(specials + masks)
    if tokenizer.get_vocab_size(with_added_tokens=True) != vocab_size:
        raise ValueError(
            f"the corpus supports only {tokenizer.get_vocab_size() - len(specials) - len(masks)} "
            f"learnt tokens; lower vocab_size below {vocab_size}"
        )
    return ByteLevelBPE(tokenizer.to_str(), name=f"bpe_{vocab_size}")
