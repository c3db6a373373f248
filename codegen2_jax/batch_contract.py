"""The batch contract: the decoder features every objective's batches carry, defined once.

Every feature is [batch, length] int32 (seqio's decoder feature names):

| feature | meaning |
|---|---|
| decoder_input_tokens / decoder_target_tokens | the targets shifted right / the targets |
| decoder_loss_weights | 1 where a token is scored, else 0 |
| decoder_segment_ids / decoder_positions | packing: which document, position inside it |
| decoder_causal_attention | 1 on tokens of a bidirectional prefix (prefix-LM), else 0 |

The input pipeline's converter (data/features.py) declares these dtypes to seqio, the trainer
feeds MODEL_INPUTS to the Decoder, and the AOT check and the benchmarks build their batches
here. No TensorFlow: benchmarks run on JAX images without it.
"""

from __future__ import annotations

import jax
import numpy as np

FEATURE_DTYPES: dict[str, np.dtype] = {
    "decoder_input_tokens": np.dtype(np.int32),
    "decoder_target_tokens": np.dtype(np.int32),
    "decoder_loss_weights": np.dtype(np.int32),
    "decoder_causal_attention": np.dtype(np.int32),
    "decoder_segment_ids": np.dtype(np.int32),
    "decoder_positions": np.dtype(np.int32),
}
# Present only in packed batches; without them every row is one document.
PACKING_FEATURES = ("decoder_segment_ids", "decoder_positions")
# What the Decoder reads; absent packing/prefix features mean unpacked causal rows.
MODEL_INPUTS = (
    "decoder_input_tokens",
    "decoder_segment_ids",
    "decoder_positions",
    "decoder_causal_attention",
)
# synthetic_batch's layouts: one document per row, packed documents, packed prefix-LM ones.
LAYOUTS = ("causal", "packed", "prefix_lm")


def abstract_batch(
    batch: int, seq: int, sharding: jax.sharding.Sharding | None = None
) -> dict[str, jax.ShapeDtypeStruct]:
    """A packed batch of every feature as shapes alone, for lowering the train step."""
    return {
        name: jax.ShapeDtypeStruct((batch, seq), dtype, sharding=sharding)
        for name, dtype in FEATURE_DTYPES.items()
    }


def synthetic_batch(
    batch: int, seq: int, vocab: int, layout: str, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random tokens in the contract, with the objectives' segment structure.

    "causal": one document per row. "packed": documents of random lengths packed into rows
    (geometric, mean seq / 4, the last one cut at the row's end), as the CodeGen2 mixture's
    rows are. "prefix_lm": the same packing, each document with a bidirectional, unscored
    prefix of uniform length in [1, n - 1] (a one-token document is all prefix), flagged as
    ObjectiveFeatureConverter flags it.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(batch, seq), dtype=np.int32)
    features = {
        "decoder_input_tokens": tokens,
        "decoder_target_tokens": np.roll(tokens, -1, axis=1),
        "decoder_loss_weights": np.ones((batch, seq), np.int32),
    }
    if layout == "causal":
        return features
    rows = [_packed_row(rng, seq, prefix=layout == "prefix_lm") for _ in range(batch)]
    segments, positions, prefix = (
        np.stack(column).astype(np.int32) for column in zip(*rows, strict=True)
    )
    features["decoder_segment_ids"] = segments
    features["decoder_positions"] = positions
    if layout == "prefix_lm":
        # The prefix plus the position after it, where the first scored token is predicted.
        after = np.roll(prefix, 1, axis=1) & (np.roll(segments, 1, axis=1) == segments)
        after[:, 0] = 0
        features["decoder_causal_attention"] = prefix | after
        features["decoder_loss_weights"] = 1 - prefix
    return features


def _packed_row(rng: np.random.Generator, seq: int, prefix: bool):
    """(segment ids, positions, prefix flags) of one row of packed documents."""
    segments, positions, flags = [], [], []
    segment = 0
    while len(segments) < seq:
        segment += 1
        length = min(max(int(rng.geometric(4 / seq)), 2), seq - len(segments))
        cut = (int(rng.integers(1, length)) if length > 1 else 1) if prefix else 0
        segments += [segment] * length
        positions += range(length)
        flags += [1] * cut + [0] * (length - cut)
    return np.array(segments), np.array(positions), np.array(flags)
