"""Random masked spans inside one document: the noise masks behind span corruption and FIM.

Two laws for the span lengths, both masking about round(length * ratio) tokens:

- "uniform" (uniform_spans_mask, the CodeGen2 paper's): every span's length is drawn
  uniformly from [1, max_span_length], independently, and the ratio decides how many spans
  there are;
- "composition" (random_spans_mask, t5's): the number of spans is round(masked /
  mean_span_length) and their lengths are a uniformly random composition of the masked
  tokens, as t5.data.preprocessors.random_spans_noise_mask draws them.

Both place the spans as t5 does, with two differences that the infill format needs:

- the text before the first span and after the last span may be empty, so a span can
  touch either end of the document (t5's mask always ends on a span unless rolled, and a
  roll can split a span across the end);
- the number of spans is capped (`max_spans`), because every span costs three sentinel
  tokens (<mask_i> twice and <eom>) in the output sequence.

Everything here is stateless TF, seeded by the caller, so a preprocessor that draws its
seeds from seqio.map_over_dataset is deterministic given the task seed.
"""

import numpy as np
import seqio
import tensorflow as tf


def random_segmentation(num_items, num_segments, seed):
    """Splits `num_items` into `num_segments` non-empty parts, every split equally likely.

    Args:
      num_items: int32 scalar >= 1.
      num_segments: int32 scalar in [1, num_items].
      seed: stateless seed, shape [2].

    Returns:
      int32 [num_segments], positive, summing to `num_items`.
    """
    # Choosing num_segments - 1 distinct cut points among the num_items - 1 inner gaps
    # makes every composition equally likely.
    gaps = seqio.stateless_shuffle(tf.range(1, num_items, dtype=tf.int32), seed)
    cuts = tf.sort(gaps[: num_segments - 1])
    bounds = tf.concat([[0], cuts, [num_items]], axis=0)
    return bounds[1:] - bounds[:-1]


def count_spans(length, mask_ratio, *, mean_span_length, max_spans):
    """Number of masked tokens and of spans for a document, as int32 scalars.

    Args:
      length: int32 scalar >= 1, document length in tokens.
      mask_ratio: float32 scalar in [0, 1], the fraction of tokens to mask.
      mean_span_length: target mean length of a span, in tokens.
      max_spans: upper bound on the number of spans.

    Returns:
      (num_masked, num_spans): at least one token and one span; at least one token stays
      unmasked when the document has two or more; inner gaps between spans are non-empty.
    """
    length = tf.cast(length, tf.int32)
    num_masked = tf.cast(tf.round(tf.cast(length, tf.float32) * mask_ratio), tf.int32)
    num_masked = tf.clip_by_value(num_masked, 1, tf.maximum(length - 1, 1))
    num_spans = tf.cast(tf.round(tf.cast(num_masked, tf.float32) / mean_span_length), tf.int32)
    # k spans need k - 1 unmasked tokens between them.
    most = tf.minimum(tf.minimum(max_spans, num_masked), length - num_masked + 1)
    return num_masked, tf.clip_by_value(num_spans, 1, most)


UNIFORM = "uniform"
COMPOSITION = "composition"
SPAN_LAWS = (UNIFORM, COMPOSITION)


def random_spans_mask(length, mask_ratio, seeds, *, mean_span_length, max_spans):
    """Boolean mask of random non-overlapping spans covering about `mask_ratio` of a document.

    Args:
      length: int32 scalar >= 1.
      mask_ratio: float32 scalar in [0, 1].
      seeds: two stateless seeds, shape [2, 2] (span lengths, gap lengths).
      mean_span_length: target mean span length, in tokens.
      max_spans: upper bound on the number of spans.

    Returns:
      bool [length]; True on masked tokens. Spans are maximal runs of True.
    """
    num_masked, num_spans = count_spans(
        length, mask_ratio, mean_span_length=mean_span_length, max_spans=max_spans
    )
    span_lengths = random_segmentation(num_masked, num_spans, seeds[0])
    return _place_spans(length, span_lengths, seeds[1])


def uniform_spans_mask(length, mask_ratio, seeds, *, max_span_length, max_spans):
    """Boolean mask of spans whose lengths are uniform in [1, max_span_length].

    Lengths are drawn independently, and spans are taken in order while the masked total
    stays within round(length * mask_ratio) (clipped as count_spans clips it), at most
    max_spans of them, each after the first with a kept token before it. A document too
    short for its first drawn span gets one span of its whole share instead.

    Args:
      length: int32 scalar >= 1.
      mask_ratio: float32 scalar in [0, 1].
      seeds: two stateless seeds, shape [2, 2] (span lengths, gap lengths).
      max_span_length: the longest span, in tokens.
      max_spans: upper bound on the number of spans.

    Returns:
      bool [length]; True on masked tokens. Spans are maximal runs of True.
    """
    length = tf.cast(length, tf.int32)
    share, _ = count_spans(length, mask_ratio, mean_span_length=1.0, max_spans=max_spans)
    drawn = tf.random.stateless_uniform(
        [max_spans], seeds[0], minval=1, maxval=max_span_length + 1, dtype=tf.int32
    )
    masked_after = tf.cumsum(drawn)  # masked tokens once spans 1..k are taken
    # The k-th span needs k - 1 kept tokens between the spans; both sums only grow with k.
    fits = (masked_after <= share) & (masked_after + tf.range(max_spans) <= length)
    num_spans = tf.maximum(tf.reduce_sum(tf.cast(fits, tf.int32)), 1)
    span_lengths = tf.concat([[tf.minimum(drawn[0], share)], drawn[1:num_spans]], axis=0)
    return _place_spans(length, span_lengths, seeds[1])


def _place_spans(length, span_lengths, seed):
    """Mask of the spans in order, separated by random gaps (inner ones non-empty)."""
    num_spans = tf.size(span_lengths)
    # Outer gaps may be empty, inner gaps may not: split two more tokens than there are
    # into non-empty parts, then give one back at each end.
    kept = length - tf.reduce_sum(span_lengths)
    gap_lengths = random_segmentation(kept + 2, num_spans + 1, seed)
    gap_lengths -= tf.one_hot(0, num_spans + 1, dtype=tf.int32)
    gap_lengths -= tf.one_hot(num_spans, num_spans + 1, dtype=tf.int32)
    return _interleave_to_mask(length, gap_lengths, span_lengths)


def _interleave_to_mask(length, gap_lengths, span_lengths):
    """Mask of `gap_0 span_1 gap_1 ... span_k gap_k`: True on the spans."""
    pieces = tf.reshape(tf.stack([gap_lengths[:-1], span_lengths], axis=1), [-1])  # [2k]
    bounds = tf.cumsum(pieces)  # end of gap_0, end of span_1, ...
    piece_index = tf.searchsorted(bounds, tf.range(length, dtype=tf.int32), side="right")
    return tf.equal(piece_index % 2, 1)


def infill_overhead(max_span_count):
    """Tokens the infill format adds to a document with at most `max_span_count` spans.

    `<|endoftext|>` and `<sep>`, then per span a `<mask_i>` in the body, a `<mask_i>` in
    the infill part and an `<eom>`.
    """
    return 2 + 3 * max_span_count


def max_document_length(sequence_length, *, max_mask_ratio, mean_span_length, max_spans):
    """Longest document whose infill rendering surely fits `sequence_length` tokens.

    The span count grows with the document length and the ratio, so the bound at
    `max_mask_ratio` holds for every shorter document and smaller drawn ratio. The count
    is computed in float32 with round-half-to-even, as count_spans does in TF.

    Raises:
      ValueError: if not even a one-token document fits.
    """
    for length in range(sequence_length - infill_overhead(1), 0, -1):
        masked = np.clip(np.round(np.float32(length) * np.float32(max_mask_ratio)), 1, length)
        spans = int(np.round(np.float32(masked) / np.float32(mean_span_length)))
        spans = min(max(spans, 1), max_spans)
        if length + infill_overhead(spans) <= sequence_length:
            return length
    raise ValueError(f"sequence length {sequence_length} cannot hold an infill example")
