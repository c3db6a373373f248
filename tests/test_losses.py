"""cross_entropy_sums: weighted cross-entropy and PaLM's z-loss as sums, against their formulas."""

import jax.numpy as jnp
import numpy as np
import pytest

from codegen2_jax import losses

BATCH, LENGTH, VOCAB = 3, 5, 11


def _batch(seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=scale, size=(BATCH, LENGTH, VOCAB)).astype(np.float32)
    targets = rng.integers(0, VOCAB, size=(BATCH, LENGTH)).astype(np.int32)
    weights = (rng.random((BATCH, LENGTH)) < 0.7).astype(np.float32)
    weights[0, 0] = 1.0  # at least one scored token
    return logits, targets, weights


def _log_z(logits: np.ndarray) -> np.ndarray:
    """log(sum(exp(logits))) over the vocabulary, in float64."""
    x = logits.astype(np.float64)
    peak = x.max(axis=-1, keepdims=True)
    return (peak + np.log(np.exp(x - peak).sum(axis=-1, keepdims=True)))[..., 0]


def _direct(logits, targets, weights, z_loss):
    """The three sums computed token by token from their definitions."""
    ce = z = 0.0
    log_z = _log_z(logits)
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            log_p = logits[b, t, targets[b, t]] - log_z[b, t]  # log softmax of the target
            ce += weights[b, t] * -log_p
            z += weights[b, t] * z_loss * log_z[b, t] ** 2
    return ce, z, float(np.sum(weights))


def test_cross_entropy_sum_equals_a_direct_computation():
    logits, targets, weights = _batch()
    ce, z, weight = losses.cross_entropy_sums(logits, targets, weights)
    expected_ce, _, expected_weight = _direct(logits, targets, weights, 0.0)
    np.testing.assert_allclose(float(ce), expected_ce, rtol=1e-5)
    assert float(z) == 0.0  # no z-loss unless asked for
    assert float(weight) == expected_weight == weights.sum()


@pytest.mark.parametrize("z_loss", [1e-4, 0.5])
def test_z_loss_is_its_coefficient_times_weighted_squared_log_normaliser(z_loss):
    logits, targets, weights = _batch(seed=1)
    ce, z, _ = losses.cross_entropy_sums(logits, targets, weights, z_loss=z_loss)
    expected_ce, expected_z, _ = _direct(logits, targets, weights, z_loss)
    np.testing.assert_allclose(float(z), expected_z, rtol=1e-5)
    np.testing.assert_allclose(
        float(z), z_loss * np.sum(weights * np.square(_log_z(logits))), rtol=1e-5
    )
    np.testing.assert_allclose(float(ce), expected_ce, rtol=1e-5)  # z-loss leaves CE alone


def test_z_loss_vanishes_when_the_normaliser_is_one():
    # Logits that are log-probabilities already: log Z = 0 at every token.
    probabilities = np.random.default_rng(2).dirichlet(np.ones(VOCAB), size=(BATCH, LENGTH))
    logits = np.log(probabilities).astype(np.float32)
    _, targets, weights = _batch()
    _, z, _ = losses.cross_entropy_sums(logits, targets, weights, z_loss=1.0)
    assert abs(float(z)) < 1e-9 * VOCAB


def test_weights_scale_each_token_and_zero_weights_ignore_it():
    logits, targets, weights = _batch(seed=3)
    fractional = weights * np.linspace(0.25, 2.0, LENGTH, dtype=np.float32)
    ce, z, weight = losses.cross_entropy_sums(logits, targets, fractional, z_loss=1e-2)
    expected = _direct(logits, targets, fractional, 1e-2)
    np.testing.assert_allclose([float(ce), float(z), float(weight)], expected, rtol=1e-5)

    # Whatever sits at an unscored position (padding, a prefix) changes nothing.
    noisy_logits, noisy_targets = logits.copy(), targets.copy()
    unscored = fractional == 0
    assert unscored.any()
    noisy_logits[unscored] = 1e3
    noisy_targets[unscored] = (targets[unscored] + 1) % VOCAB
    again = losses.cross_entropy_sums(noisy_logits, noisy_targets, fractional, z_loss=1e-2)
    np.testing.assert_array_equal([float(x) for x in again], [float(ce), float(z), float(weight)])

    # All weights zero: every sum is zero.
    zero = losses.cross_entropy_sums(logits, targets, np.zeros_like(weights), z_loss=1e-2)
    assert [float(x) for x in zero] == [0.0, 0.0, 0.0]


def test_sums_of_microbatches_add_up_to_the_batch():
    logits, targets, weights = _batch(seed=4)
    whole = losses.cross_entropy_sums(logits, targets, weights, z_loss=1e-4)
    parts = [
        losses.cross_entropy_sums(logits[i : i + 1], targets[i : i + 1], weights[i : i + 1], 1e-4)
        for i in range(BATCH)
    ]
    for total, *pieces in zip(whole, *parts, strict=True):
        np.testing.assert_allclose(float(total), sum(float(p) for p in pieces), rtol=1e-6)


def test_low_precision_logits_are_scored_in_float32_and_large_logits_stay_finite():
    logits, targets, weights = _batch(seed=5)
    sums = losses.cross_entropy_sums(jnp.asarray(logits, jnp.bfloat16), targets, weights, 1e-4)
    assert all(x.dtype == jnp.float32 for x in sums)
    upcast = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(
        [float(x) for x in sums], _direct(upcast, targets, weights, 1e-4), rtol=1e-5
    )

    shifted = losses.cross_entropy_sums(logits + 1e4, targets, weights)
    assert np.isfinite(float(shifted[0]))
    # Softmax is shift-invariant, so cross-entropy is too (up to fp32 rounding of the shift).
    np.testing.assert_allclose(
        float(shifted[0]), float(losses.cross_entropy_sums(logits, targets, weights)[0]), atol=0.1
    )
