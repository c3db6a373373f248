"""The code vocabulary as a Hugging Face tokenizer.json, so that models trained here load in
transformers with the tokenizer they were trained with.

Sentencepiece's BPE encodes by merging adjacent symbols, always the pair whose concatenation
is the highest-scoring piece; Hugging Face's BPE merges the pair of lowest rank. Ranking every
split of every normal piece in score order gives the same merges. The other options of
``codegen2_jax.data.tokenizer`` map one to one:

- identity normalization, no dummy prefix: the normalizer only replaces " " with "▁" (so a
  literal "▁" encodes, and decodes, as a space, as in sentencepiece);
- byte fallback: ``<0xNN>`` tokens for characters outside the pieces, fused back on decoding;
- user-defined pieces (newline, tabs, runs of 2–16 "▁") are matched longest first and never
  merged with their neighbours: non-special added tokens matched on normalized text;
- CONTROL pieces (``<pad>``, ``<|endoftext|>``, ``<unk>``, ``<sep>``, ``<eom>``,
  ``<mask_N>``) are special added tokens at their ids, rendered by name when decoded.

Where the two differ:

- Hugging Face matches special tokens in text (``"<mask_1>"`` becomes mask 1, as CodeGen2's
  infill prompts need); ``CodeVocabulary.encode`` never does. ``encode_special_tokens``
  (``split_special_tokens`` in transformers) encodes them as text, exactly as it does.
- Decoding renders ``<pad>``, ``<|endoftext|>`` and ``<unk>`` by name and does not stop at
  ``<|endoftext|>``; a run of byte tokens that is not UTF-8 (never the output of encoding)
  decodes as one U+FFFD per byte, where sentencepiece keeps the run's valid characters.
- Two different pairs that make the same piece tie in sentencepiece, which merges the
  leftmost; ranks order them by pair instead. Encodings differ only if such a tie is ever
  the best merge (e.g. ``[---, -, ---]``, which makes ``----`` at either end), and no input
  is known to reach one.
"""

import tokenizers
from sentencepiece import sentencepiece_model_pb2
from tokenizers import decoders, models, normalizers

from codegen2_jax.data.vocab import CodeVocabulary

_ModelProto = sentencepiece_model_pb2.ModelProto
_Piece = _ModelProto.SentencePiece


def _check_exportable(proto: _ModelProto) -> None:
    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    if (
        trainer.model_type != sentencepiece_model_pb2.TrainerSpec.BPE
        or not trainer.byte_fallback
        or trainer.treat_whitespace_as_suffix
        or normalizer.name != "identity"
        or normalizer.add_dummy_prefix
        or normalizer.remove_extra_whitespaces
        or not normalizer.escape_whitespaces
    ):
        raise ValueError(
            "only byte-fallback BPE models with codegen2_jax.data.tokenizer's normalization "
            "can be exported"
        )


def _merges(pieces) -> list[tuple[str, str]]:
    # Only normal pieces take part in merges: user-defined ones stay whole, and byte and
    # control pieces are never made from text.
    normal = {p.piece for p in pieces if p.type == _Piece.NORMAL}
    merges = []
    for piece in sorted(pieces, key=lambda p: -p.score):
        text = piece.piece
        if piece.type == _Piece.NORMAL:
            merges.extend(
                (text[:i], text[i:])
                for i in range(1, len(text))
                if text[:i] in normal and text[i:] in normal
            )
    return merges


def tokenizer_json(vocabulary: CodeVocabulary) -> str:
    """The Hugging Face tokenizer.json (text) that encodes and decodes like the vocabulary."""
    proto = _ModelProto.FromString(vocabulary.sp_model)
    _check_exportable(proto)
    pieces = list(proto.pieces)
    tokenizer = tokenizers.Tokenizer(
        models.BPE(
            vocab={p.piece: i for i, p in enumerate(pieces)},
            merges=_merges(pieces),
            unk_token=pieces[vocabulary.unk_id].piece,
            byte_fallback=True,
        )
    )
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    # Every added token is already in the model's vocabulary, so it keeps its piece's id.
    tokenizer.add_tokens(
        [
            tokenizers.AddedToken(p.piece, normalized=True)
            for p in pieces
            if p.type == _Piece.USER_DEFINED
        ]
    )
    tokenizer.add_special_tokens(
        [
            tokenizers.AddedToken(p.piece, special=True, normalized=False)
            for p in pieces
            if p.type in (_Piece.CONTROL, _Piece.UNKNOWN)
        ]
    )
    return tokenizer.to_str()
