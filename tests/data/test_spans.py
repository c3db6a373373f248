"""Span masks: golden values, properties over many seeds, statistics against t5's sampler."""

from math import comb

import numpy as np
import pytest
import tensorflow as tf
from t5.data import preprocessors as t5_preprocessors

from codegen2_jax.data import spans


def _runs(mask):
    """(start, end) of each maximal run of True."""
    padded = np.concatenate([[False], mask, [False]]).astype(int)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2], edges[1::2], strict=True))


def _mask(length, ratio, seed, *, mean_span_length=3.0, max_spans=1000):
    seeds = tf.constant([[seed, 1], [seed, 2]])
    return spans.random_spans_mask(
        tf.constant(length),
        tf.constant(ratio),
        seeds,
        mean_span_length=mean_span_length,
        max_spans=max_spans,
    ).numpy()


def _uniform_mask(length, ratio, seeds, *, max_span_length, max_spans):
    return spans.uniform_spans_mask(
        tf.constant(length),
        tf.constant(ratio),
        tf.constant(seeds),
        max_span_length=max_span_length,
        max_spans=max_spans,
    ).numpy()


def test_golden_mask():
    seeds = tf.constant([[1, 2], [3, 4]])
    mask = spans.random_spans_mask(
        tf.constant(24), tf.constant(0.25), seeds, mean_span_length=2.0, max_spans=8
    ).numpy()
    # 24 * 0.25 = 6 masked tokens in round(6 / 2) = 3 spans.
    expected = [0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0]
    np.testing.assert_array_equal(mask.astype(int), expected)


def test_golden_segmentation():
    lengths = spans.random_segmentation(tf.constant(10), tf.constant(4), tf.constant([5, 6]))
    np.testing.assert_array_equal(lengths.numpy(), [4, 2, 3, 1])


@pytest.mark.parametrize("num_items,num_segments", [(1, 1), (5, 5), (9, 3), (40, 1)])
def test_segmentation_is_a_composition(num_items, num_segments):
    for seed in range(20):
        lengths = spans.random_segmentation(
            tf.constant(num_items), tf.constant(num_segments), tf.constant([seed, 0])
        ).numpy()
        assert len(lengths) == num_segments and lengths.min() >= 1
        assert lengths.sum() == num_items


def test_properties_over_many_seeds():
    rng = np.random.default_rng(0)
    for seed in range(300):
        length = int(rng.integers(1, 300))
        ratio = float(rng.uniform(0.0, 0.9))
        max_spans = int(rng.integers(1, 12))
        mask = _mask(length, ratio, seed, mean_span_length=4.0, max_spans=max_spans)
        runs = _runs(mask)
        assert len(mask) == length
        # At least one masked token; one kept when there are two or more.
        assert 1 <= mask.sum() <= max(length - 1, 1)
        # The masked count is round(length * ratio) up to those bounds.
        assert abs(mask.sum() - length * ratio) <= 0.5 + 1e-4 or mask.sum() in (1, length - 1)
        assert 1 <= len(runs) <= max_spans
        expected_spans = min(max(round(mask.sum() / 4.0), 1), max_spans, length - mask.sum() + 1)
        assert len(runs) == expected_spans, (length, ratio, max_spans)


def test_spans_reach_both_ends():
    """Unlike t5's unrolled mask, spans may start the document and need not end it."""
    masks = np.stack([_mask(30, 0.2, seed) for seed in range(200)])
    assert masks[:, 0].any() and not masks[:, -1].all()
    # Every position is masked about as often (0.2) away from the ends.
    assert np.abs(masks[:, 5:-5].mean(axis=0) - 0.2).max() < 0.12


def _span_lengths(mask):
    return [end - start for start, end in _runs(mask)]


@pytest.mark.parametrize("length,density,mean_span_length", [(200, 0.15, 3.0), (500, 0.3, 8.0)])
def test_statistics_match_t5_random_spans_noise_mask(length, density, mean_span_length):
    ours, theirs = [], []
    for seed in range(150):
        ours.append(_mask(length, density, seed, mean_span_length=mean_span_length))
        t5_seeds = tf.constant([[seed, 3], [seed, 4]])
        theirs.append(
            t5_preprocessors.random_spans_noise_mask(
                length, density, t5_seeds, mean_noise_span_length=mean_span_length
            ).numpy()
        )
    # Same masked count and span count, hence the same density and mean span length.
    assert {m.sum() for m in ours} == {m.sum() for m in theirs}
    assert {len(_runs(m)) for m in ours} == {len(_runs(m)) for m in theirs}
    # Span lengths follow the same law (a uniformly random composition).
    ours_lengths = np.concatenate([_span_lengths(m) for m in ours])
    theirs_lengths = np.concatenate([_span_lengths(m) for m in theirs])
    # Two-sample Kolmogorov-Smirnov distance; about 0.05 is the 0.1% critical value here.
    grid = np.arange(1, max(ours_lengths.max(), theirs_lengths.max()) + 1)
    ours_cdf = np.searchsorted(np.sort(ours_lengths), grid, side="right") / len(ours_lengths)
    theirs_cdf = np.searchsorted(np.sort(theirs_lengths), grid, side="right") / len(theirs_lengths)
    assert np.abs(ours_cdf - theirs_cdf).max() < 0.06
    assert abs(np.std(ours_lengths) - np.std(theirs_lengths)) < 0.1 * np.std(theirs_lengths)


def test_max_document_length_leaves_room_for_every_span():
    for sequence_length in (16, 64, 2048):
        longest = spans.max_document_length(
            sequence_length, max_mask_ratio=0.5, mean_span_length=4.0, max_spans=64
        )
        _, num_spans = spans.count_spans(
            tf.constant(longest), tf.constant(0.5), mean_span_length=4.0, max_spans=64
        )
        assert longest + spans.infill_overhead(int(num_spans)) <= sequence_length
    with pytest.raises(ValueError):
        spans.max_document_length(5, max_mask_ratio=0.5, mean_span_length=4.0, max_spans=4)


def _histogram(lengths, support):
    counts = np.bincount(lengths, minlength=support + 1)[1 : support + 1]
    assert counts.sum() == len(lengths), "a span is longer than the law allows"
    return counts / counts.sum()


def test_uniform_span_lengths_follow_the_uniform_law():
    """CodeGen2's law: every span's length uniform in [1, max_span_length], independently."""
    lengths = []
    for seed in range(60):
        mask = _uniform_mask(2000, 0.5, [[seed, 1], [seed, 2]], max_span_length=10, max_spans=1000)
        runs = _span_lengths(mask)
        # The ratio decides the count: about 1000 masked tokens in spans of mean 5.5.
        assert 1000 - 10 < mask.sum() <= 1000 and abs(len(runs) - 1000 / 5.5) < 60
        lengths += runs
    histogram = _histogram(np.array(lengths), 10)
    assert 0.5 * np.abs(histogram - 0.1).sum() < 0.03  # total variation from uniform


def test_composition_span_lengths_follow_the_composition_law():
    """t5's law: k spans of m masked tokens, every composition of m into k parts alike, so
    P(length = n) = C(m - n - 1, k - 2) / C(m - 1, k - 1)."""
    lengths = np.concatenate(
        [_span_lengths(_mask(200, 0.3, seed, mean_span_length=6.0)) for seed in range(300)]
    )
    m, k = 60, 10  # round(200 * 0.3) masked tokens in round(60 / 6) spans
    law = np.array([comb(m - n - 1, k - 2) / comb(m - 1, k - 1) for n in range(1, m - k + 2)])
    histogram = _histogram(lengths, m - k + 1)
    assert abs(law.sum() - 1) < 1e-12
    assert 0.5 * np.abs(histogram - law).sum() < 0.05


def test_uniform_spans_fit_short_documents():
    for seed in range(200):
        length = 1 + seed % 12
        mask = _uniform_mask(length, 0.5, [[seed, 3], [seed, 4]], max_span_length=31, max_spans=4)
        runs = _runs(mask)
        assert len(mask) == length and 1 <= len(runs) <= 4
        assert 1 <= mask.sum() <= max(length - 1, 1)
