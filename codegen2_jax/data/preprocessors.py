"""The CodeGen2 objectives as seqio preprocessors on tokenized documents.

Each objective takes examples whose "targets" is one tokenized document (int32, no EOS),
splits documents longer than the sequence length allows (chunk_documents), and emits the
three features of features.py (targets, loss_weights, prefix_mask), so that all objectives
share one packed stream. Formats (ARCHITECTURE.md, section 2):

- causal_lm: `doc <|endoftext|>`, every token scored; a document cut into several pieces
  ends with `<|endoftext|>` only in its last one (the infill format's `<|endoftext|>`
  before `<sep>` belongs to the format and is in every piece).
- prefix_lm: the same tokens; a prefix of the document, split point drawn uniformly,
  attends bidirectionally and is not scored.
- span_corruption_infill: `pre <mask_1> mid <mask_2> post <|endoftext|> <sep>
  <mask_1> span_1 <eom> <mask_2> span_2 <eom>`, spans drawn by spans.random_spans_mask.
- fim: the same format with exactly one span between two uniform cut points, per example
  with probability `fim_rate`, else causal_lm.
- codegen2_mixture: per example, causal_lm with probability `causal_rate`, else
  span_corruption_infill.

Special ids come from `output_features["targets"].vocabulary` (eos_id, sep_id, eom_id,
num_masks, mask_id(n)). Random draws use seeds from seqio.map_over_dataset, so a
task is deterministic given its seed.

Defaults: the CodeGen2 paper samples span lengths uniformly (spans.UNIFORM, the default
law) but does not publish their range, the mask ratio range or the span count, so those
defaults are this project's choices: a mask ratio drawn uniformly from [0.05, 0.5) per
example, span lengths uniform in [1, 31] (mean 16 tokens, about one line of code), at most
32 spans per example. The "composition" law (t5's) takes a mean span length instead. The
0.5 causal rate is the paper's mixture.
"""

from collections.abc import Mapping
from typing import NamedTuple

import seqio
import tensorflow as tf

from codegen2_jax.data import features, spans

LOSS_ALL = "all"
LOSS_INFILL_ONLY = "infill_only"

DEFAULT_MIN_MASK_RATIO = 0.05
DEFAULT_MAX_MASK_RATIO = 0.5
DEFAULT_SPAN_LENGTHS = spans.UNIFORM
DEFAULT_MAX_SPAN_LENGTH = 31
DEFAULT_MEAN_SPAN_LENGTH = 16.0
DEFAULT_MAX_SPANS = 32
DEFAULT_CAUSAL_RATE = 0.5
DEFAULT_FIM_RATE = 0.5

LAST_PIECE = "last_piece"  # chunk_documents: whether a piece ends its document

_AUTOTUNE = tf.data.AUTOTUNE


def chunk_documents(dataset: tf.data.Dataset, *, max_tokens: int) -> tf.data.Dataset:
    """Splits every document into consecutive pieces of at most `max_tokens` tokens.

    No token is dropped: a document of n tokens becomes ceil(n / max_tokens) examples, the
    last one possibly shorter. An empty document has no tokens and yields no example. Each
    piece keeps "targets" and whether it ends its document (LAST_PIECE): only a document's
    last piece ends with `<|endoftext|>` in the causal formats.

    Args:
      dataset: examples with int32 "targets" [n].
      max_tokens: the longest piece, >= 1.
    """

    def split(example):
        tokens = example[features.TARGETS]
        num_tokens = tf.size(tokens)
        starts = tf.range(0, num_tokens, max_tokens)
        piece_lengths = tf.minimum(max_tokens, num_tokens - starts)
        pieces = tf.RaggedTensor.from_row_lengths(tokens, piece_lengths)
        return {features.TARGETS: pieces, LAST_PIECE: starts + max_tokens >= num_tokens}

    pieces = dataset.map(split, num_parallel_calls=_AUTOTUNE).unbatch()
    # unbatch yields rank-1 ragged values; make them plain tensors again.
    return pieces.map(
        lambda piece: {
            features.TARGETS: tf.ensure_shape(piece[features.TARGETS], [None]),
            LAST_PIECE: piece[LAST_PIECE],
        },
        num_parallel_calls=_AUTOTUNE,
    )


def causal_lm(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
) -> tf.data.Dataset:
    """`doc <|endoftext|>`, loss on every token; documents chunked to fit, and only a
    document's last piece ends with `<|endoftext|>`."""
    eos_id = _vocabulary(output_features).eos_id
    dataset = chunk_documents(dataset, max_tokens=_targets_length(sequence_length) - 1)
    return dataset.map(
        lambda ex: _causal_example(ex[features.TARGETS], ex[LAST_PIECE], eos_id),
        num_parallel_calls=_AUTOTUNE,
    )


def prefix_lm(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
) -> tf.data.Dataset:
    """`doc <|endoftext|>` with a bidirectional, unscored prefix of the document.

    The prefix length is drawn uniformly from [1, n - 1] for a document of n >= 2 tokens
    (both parts non-empty); a one-token document is all prefix and only
    `<|endoftext|>` is scored. As in causal_lm, only a document's last piece ends with
    `<|endoftext|>`.
    """
    eos_id = _vocabulary(output_features).eos_id

    @seqio.map_over_dataset(num_seeds=1)
    def split(example, seed):
        tokens = example[features.TARGETS]
        most = tf.maximum(tf.size(tokens) - 1, 1)
        prefix_length = tf.random.stateless_uniform(
            [], seed, minval=1, maxval=most + 1, dtype=tf.int32
        )
        return _prefix_example(tokens, example[LAST_PIECE], prefix_length, eos_id)

    dataset = chunk_documents(dataset, max_tokens=_targets_length(sequence_length) - 1)
    return split(dataset)


def span_corruption_infill(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
    *,
    min_mask_ratio: float = DEFAULT_MIN_MASK_RATIO,
    max_mask_ratio: float = DEFAULT_MAX_MASK_RATIO,
    span_lengths: str = DEFAULT_SPAN_LENGTHS,
    max_span_length: int = DEFAULT_MAX_SPAN_LENGTH,
    mean_span_length: float = DEFAULT_MEAN_SPAN_LENGTH,
    max_spans: int = DEFAULT_MAX_SPANS,
    loss_policy: str = LOSS_ALL,
) -> tf.data.Dataset:
    """Span corruption rendered in CodeGen2's infill format, spans inside one document.

    Args:
      dataset: tokenized documents ("targets", no EOS).
      sequence_length: {"targets": length}; documents are chunked so the output fits.
      output_features: {"targets": Feature} whose vocabulary has the special ids.
      min_mask_ratio: lower end of the per-example masked fraction, drawn uniformly
        (default 0.05).
      max_mask_ratio: upper end, exclusive (default 0.5).
      span_lengths: the law of span lengths, "uniform" (default) or "composition"
        (codegen2_jax.data.spans).
      max_span_length: "uniform": lengths are uniform in [1, this] (default 31).
      mean_span_length: "composition": the span count is round(masked tokens / this)
        (default 16.0).
      max_spans: most spans per example (default 32), also bounded by the vocabulary's
        number of mask tokens. Past the cap, "uniform" masks less than the drawn ratio and
        "composition" makes its spans longer.
      loss_policy: "all" scores every token; "infill_only" scores only the tokens after
        `<sep>` (default "all").
    """
    vocabulary = _vocabulary(output_features)
    objective = _InfillObjective(
        vocabulary,
        mask_ratio_range=(min_mask_ratio, max_mask_ratio),
        span_law=_SpanLaw(span_lengths, max_span_length, mean_span_length),
        max_spans=min(max_spans, vocabulary.num_masks),
        loss_policy=loss_policy,
    )
    return _apply_infill(dataset, objective, sequence_length)


def _apply_infill(dataset, objective, sequence_length) -> tf.data.Dataset:
    """Chunks documents to fit the objective's output, then renders each as infill."""
    dataset = chunk_documents(dataset, max_tokens=objective.max_tokens(sequence_length))

    @seqio.map_over_dataset(num_seeds=3)
    def corrupt(example, seeds):
        return objective(example[features.TARGETS], seeds)

    return corrupt(dataset)


def fim(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
    *,
    fim_rate: float = DEFAULT_FIM_RATE,
    loss_policy: str = LOSS_ALL,
) -> tf.data.Dataset:
    """Fill-in-the-middle as Bavarian et al. (2022) train it, mixed per example with causal LM.

    With probability `fim_rate` (default 0.5, the lesson's arm) an example becomes
    `pre <mask_1> post <|endoftext|> <sep> <mask_1> middle <eom>`, the single-span case of the
    infill format, else the causal `doc <|endoftext|>`. The middle lies between two cut points
    drawn uniformly among the document's n + 1 token boundaries (distinct, so it holds at
    least one token; the prefix or the suffix may be empty).
    """
    vocabulary = _vocabulary(output_features)
    _check_loss_policy(loss_policy)
    _check_rate("fim_rate", fim_rate)
    budget = spans.max_document_length(
        _targets_length(sequence_length), max_mask_ratio=1.0, mean_span_length=1.0, max_spans=1
    )

    def middle(tokens, seeds):
        n = tf.size(tokens)
        cuts = tf.sort(seqio.stateless_shuffle(tf.range(n + 1), seeds[0])[:2])
        positions = tf.range(n)
        mask = (positions >= cuts[0]) & (positions < cuts[1])
        return render_infill(tokens, mask, vocabulary, loss_policy=loss_policy)

    return _mix_with_causal(dataset, budget, 1.0 - fim_rate, middle, 1, vocabulary.eos_id)


def codegen2_mixture(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
    *,
    causal_rate: float = DEFAULT_CAUSAL_RATE,
    min_mask_ratio: float = DEFAULT_MIN_MASK_RATIO,
    max_mask_ratio: float = DEFAULT_MAX_MASK_RATIO,
    span_lengths: str = DEFAULT_SPAN_LENGTHS,
    max_span_length: int = DEFAULT_MAX_SPAN_LENGTH,
    mean_span_length: float = DEFAULT_MEAN_SPAN_LENGTH,
    max_spans: int = DEFAULT_MAX_SPANS,
    loss_policy: str = LOSS_ALL,
) -> tf.data.Dataset:
    """CodeGen2's per-example mixture: causal LM with probability `causal_rate` (default
    0.5, the paper's), else span_corruption_infill with the given span parameters."""
    vocabulary = _vocabulary(output_features)
    _check_rate("causal_rate", causal_rate)
    objective = _InfillObjective(
        vocabulary,
        mask_ratio_range=(min_mask_ratio, max_mask_ratio),
        span_law=_SpanLaw(span_lengths, max_span_length, mean_span_length),
        max_spans=min(max_spans, vocabulary.num_masks),
        loss_policy=loss_policy,
    )
    return _mix_with_causal(
        dataset, objective.max_tokens(sequence_length), causal_rate, objective, 3, vocabulary.eos_id
    )


def _check_loss_policy(loss_policy: str) -> None:
    if loss_policy not in (LOSS_ALL, LOSS_INFILL_ONLY):
        raise ValueError(f"loss_policy must be {LOSS_ALL!r} or {LOSS_INFILL_ONLY!r}")


def _check_rate(name: str, rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {rate}")


def _mix_with_causal(dataset, max_tokens, causal_rate, infill_example, num_seeds, eos_id):
    """Per piece: causal LM with probability `causal_rate`, else infill_example(tokens,
    seeds), seeds [num_seeds, 2]. Documents are chunked to the infill budget, so both
    objectives see the same pieces."""
    dataset = chunk_documents(dataset, max_tokens=max_tokens)

    @seqio.map_over_dataset(num_seeds=1 + num_seeds)
    def mix(example, seeds):
        tokens = example[features.TARGETS]
        is_causal = tf.random.stateless_uniform([], seeds[0]) < causal_rate
        return tf.cond(
            is_causal,
            lambda: _causal_example(tokens, example[LAST_PIECE], eos_id),
            lambda: infill_example(tokens, seeds[1:]),
        )

    return mix(dataset)


class _SpanLaw(NamedTuple):
    """How span lengths are drawn (codegen2_jax.data.spans)."""

    name: str  # spans.UNIFORM or spans.COMPOSITION
    max_span_length: int  # UNIFORM's longest span
    mean_span_length: float  # COMPOSITION's mean span

    def check(self) -> None:
        if self.name not in spans.SPAN_LAWS:
            raise ValueError(f"span_lengths must be one of {spans.SPAN_LAWS}, got {self.name!r}")
        if self.name == spans.UNIFORM and self.max_span_length < 1:
            raise ValueError(f"max_span_length must be at least 1, got {self.max_span_length}")

    def worst_case_mean(self) -> float:
        """The mean span length that bounds the span count (spans.max_document_length)."""
        return 1.0 if self.name == spans.UNIFORM else self.mean_span_length

    def mask(self, length, mask_ratio, seeds, max_spans):
        if self.name == spans.UNIFORM:
            return spans.uniform_spans_mask(
                length,
                mask_ratio,
                seeds,
                max_span_length=self.max_span_length,
                max_spans=max_spans,
            )
        return spans.random_spans_mask(
            length,
            mask_ratio,
            seeds,
            mean_span_length=self.mean_span_length,
            max_spans=max_spans,
        )


class _InfillObjective:
    """Draws a mask ratio and spans for a document and renders the infill format."""

    def __init__(self, vocabulary, *, mask_ratio_range, span_law, max_spans, loss_policy):
        _check_loss_policy(loss_policy)
        if not 0.0 <= mask_ratio_range[0] <= mask_ratio_range[1] <= 1.0:
            raise ValueError(f"mask ratio range {mask_ratio_range} is not inside [0, 1]")
        span_law.check()
        self._vocabulary = vocabulary
        self._mask_ratio_range = mask_ratio_range
        self._span_law = span_law
        self._max_spans = max_spans
        self._loss_policy = loss_policy

    def max_tokens(self, sequence_length: Mapping[str, int]) -> int:
        """The chunk length that keeps every rendered example within the sequence length."""
        return spans.max_document_length(
            _targets_length(sequence_length),
            max_mask_ratio=self._mask_ratio_range[1],
            mean_span_length=self._span_law.worst_case_mean(),
            max_spans=self._max_spans,
        )

    def __call__(self, tokens, seeds):
        """Infill example for `tokens` [n >= 1]; `seeds` holds three stateless seeds."""
        low, high = self._mask_ratio_range
        mask_ratio = tf.random.stateless_uniform([], seeds[0], minval=low, maxval=high)
        mask = self._span_law.mask(tf.size(tokens), mask_ratio, seeds[1:3], self._max_spans)
        return render_infill(tokens, mask, self._vocabulary, loss_policy=self._loss_policy)


def render_infill(tokens, mask, vocabulary, *, loss_policy=LOSS_ALL):
    """Renders a document and its span mask in CodeGen2's infill format.

    Args:
      tokens: int32 [n], one document.
      mask: bool [n]; each maximal run of True is one span, numbered from 1 left to right.
      vocabulary: has eos_id, sep_id, eom_id and mask_id(i) for i up to the span count.
      loss_policy: "all" or "infill_only" (tokens after `<sep>`).

    Returns:
      The three objective features (see features.py).
    """
    starts = mask & ~tf.pad(mask[:-1], [[1, 0]])
    ends = mask & ~tf.pad(mask[1:], [[0, 1]])
    span_number = tf.cumsum(tf.cast(starts, tf.int32))  # [n], 1-based from each start on
    mask_ids = tf.constant([vocabulary.mask_id(i + 1) for i in range(vocabulary.num_masks)])
    sentinels = tf.gather(mask_ids, tf.maximum(span_number - 1, 0))
    eoms = tf.fill(tf.shape(tokens), vocabulary.eom_id)
    # Each position contributes [<mask_i> if a span starts here, the token if kept].
    body = _interleave([sentinels, tokens], [starts, ~mask])
    # ... and to the infill part [<mask_i> if a span starts, the token if masked, <eom>
    # if a span ends].
    infill = _interleave([sentinels, tokens, eoms], [starts, mask, ends])
    separator = tf.constant([vocabulary.eos_id, vocabulary.sep_id], tf.int32)
    targets = tf.concat([body, separator, infill], axis=0)
    num_unscored = tf.size(body) + 2 if loss_policy == LOSS_INFILL_ONLY else 0
    loss_weights = tf.cast(tf.range(tf.size(targets)) >= num_unscored, tf.int32)
    return _example(targets, loss_weights, tf.zeros_like(targets))


def _interleave(values, keeps):
    """Row-major selection from per-position slots: values[j][i] where keeps[j][i]."""
    return tf.boolean_mask(tf.stack(values, axis=1), tf.stack(keeps, axis=1))


def _with_end_of_text(tokens, last_piece, eos_id):
    """tokens, then `<|endoftext|>` if they end their document."""
    return tf.concat([tokens, tf.fill([tf.cast(last_piece, tf.int32)], eos_id)], axis=0)


def _causal_example(tokens, last_piece, eos_id):
    targets = _with_end_of_text(tokens, last_piece, eos_id)
    return _example(targets, tf.ones_like(targets), tf.zeros_like(targets))


def _prefix_example(tokens, last_piece, prefix_length, eos_id):
    targets = _with_end_of_text(tokens, last_piece, eos_id)
    prefix_mask = tf.cast(tf.range(tf.size(targets)) < prefix_length, tf.int32)
    return _example(targets, 1 - prefix_mask, prefix_mask)


def _example(targets, loss_weights, prefix_mask):
    return {
        features.TARGETS: targets,
        features.LOSS_WEIGHTS: loss_weights,
        features.PREFIX_MASK: prefix_mask,
    }


def _targets_length(sequence_length):
    # Chunking needs the length: without it (seqio's sequence_length=None) nothing would fit.
    if not sequence_length or not sequence_length.get(features.TARGETS):
        raise ValueError(f"the objectives need sequence_length['targets'], got {sequence_length}")
    return sequence_length[features.TARGETS]


def _vocabulary(output_features):
    return output_features[features.TARGETS].vocabulary
