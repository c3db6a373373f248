"""Weighted token cross-entropy with PaLM's z-loss, as sums so microbatches add up exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_sums(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, z_loss: float = 0.0
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Weighted sums of cross-entropy and z-loss over every scored token, in fp32.

    Returning sums (not means) lets gradient accumulation divide once by the total weight of
    the whole batch, which makes microbatched gradients equal full-batch ones.

    Args:
      logits: [batch, T, vocab], any float dtype.
      targets: int [batch, T].
      weights: [batch, T], decoder_loss_weights (0 on unscored tokens and padding).
      z_loss: coefficient of log(Z)^2, which keeps the softmax normaliser near 1.

    Returns:
      (cross-entropy sum, z-loss sum, weight sum), fp32 scalars.
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)  # [B, T]
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)
    cross_entropy = log_z - target_logit[..., 0]
    return (
        jnp.sum(cross_entropy * weights),
        z_loss * jnp.sum(jnp.square(log_z) * weights),
        jnp.sum(weights),
    )
