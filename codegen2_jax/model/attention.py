"""Attention for the packed prefix-LM batch contract: masks, rotary embedding and the kernels.

A query at position i may attend to key j of the same row when both lie in the same packed
segment and either j <= i (causal) or both are prefix tokens (decoder_causal_attention == 1),
which makes each segment's prefix bidirectional. The masks follow t5x's make_decoder_mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def make_attention_mask(
    length: int,
    segment_ids: jax.Array | None = None,
    causal_attention: jax.Array | None = None,
) -> jax.Array | None:
    """Boolean mask [batch | 1, 1, length, length]; None means plain causal attention.

    Args:
      length: sequence length T.
      segment_ids: int [batch, T], packed document ids (0 on padding), or None for unpacked rows.
      causal_attention: int [batch, T], 1 on the bidirectional prefix of each segment, or None.
    """
    if segment_ids is None and causal_attention is None:
        return None
    position = jnp.arange(length)
    mask = (position[:, None] >= position[None, :])[None]  # [1, T, T]
    if causal_attention is not None:
        prefix = causal_attention.astype(bool)
        mask = mask | (prefix[:, :, None] & prefix[:, None, :])
    if segment_ids is not None:
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    return mask[:, None]


def make_decode_mask(
    start: jax.Array,
    query_segment_ids: jax.Array,
    key_segment_ids: jax.Array,
    query_prefix: jax.Array | None = None,
) -> jax.Array:
    """Boolean mask [batch, 1, T, cache_length] of T new tokens against a KV cache.

    A query in cache slot start + i attends to slot j when j <= start + i and both carry the
    same segment id; left padding (segment 0) thus never mixes with a row's tokens, and slots
    not yet written lie in the future. New tokens flagged in query_prefix also attend to every
    flagged new token after them: a prompt fed in one call becomes a bidirectional prefix, as
    decoder_causal_attention makes it in training.

    Args:
      start: int scalar, the cache slot of the first new token.
      query_segment_ids: int [batch, T], segment ids of the new tokens.
      key_segment_ids: int [batch, cache_length], segment ids of every cache slot.
      query_prefix: int [batch, T], 1 on new tokens of a bidirectional prefix, or None.
    """
    query_slots = start + jnp.arange(query_segment_ids.shape[1])
    key_slots = jnp.arange(key_segment_ids.shape[1])
    mask = (key_slots[None, :] <= query_slots[:, None])[None]  # [1, T, S]
    if query_prefix is not None:
        prefix = query_prefix.astype(bool)
        key_prefix = jax.lax.dynamic_update_slice(
            jnp.zeros(key_segment_ids.shape, bool), prefix, (0, start)
        )
        mask = mask | (prefix[:, :, None] & key_prefix[:, None, :])
    same = query_segment_ids[:, :, None] == key_segment_ids[:, None, :]  # [B, T, S]
    return (mask & same)[:, None]


def rotary_tables(positions: jax.Array, rotary_dim: int) -> tuple[jax.Array, jax.Array]:
    """sin and cos [batch, T, 1, rotary_dim / 2] for integer positions [batch, T] (fp32)."""
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, R/2]
    return jnp.sin(angles)[:, :, None], jnp.cos(angles)[:, :, None]


def apply_rotary(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """Rotates interleaved channel pairs (2i, 2i + 1) of x's first rotary channels (GPT-J style).

    Args:
      x: [batch, T, heads, head_dim].
      sin, cos: [batch, T, 1, rotary_dim / 2] from rotary_tables.
    """
    rotary_dim = 2 * sin.shape[-1]
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    even = rotated[..., ::2].astype(jnp.float32)
    odd = rotated[..., 1::2].astype(jnp.float32)
    out = jnp.stack([even * cos - odd * sin, odd * cos + even * sin], axis=-1)
    out = out.reshape(rotated.shape).astype(x.dtype)
    return jnp.concatenate([out, passed], axis=-1)


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Softmax attention as einsums; scores and softmax in fp32, as CodeGen computes them.

    Args:
      q, k, v: [batch, T, heads, head_dim].
      mask: boolean [batch | 1, 1, T, T] from make_attention_mask; None means causal.

    Returns:
      [batch, T, heads, head_dim] in v's dtype.
    """
    length = q.shape[1]
    if mask is None:
        position = jnp.arange(length)
        mask = (position[:, None] >= position[None, :])[None, None]
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def cache_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """xla_attention of T new tokens against a heads-major KV cache (prompt or decoding step).

    The cache is stored [batch, heads, cache_length, head_dim]: with (batch, heads) leading,
    both dots read it in place. In the training layout XLA copied every layer's whole cache
    into a transposed one at every decoding step; only q and the output (T rows) move here.

    Args:
      q: [batch, T, heads, head_dim].
      k, v: [batch, heads, cache_length, head_dim].
      mask: boolean [batch, 1, T, cache_length] from make_decode_mask.

    Returns:
      [batch, T, heads, head_dim] in v's dtype.
    """
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bqhd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bhkd->bqhd", probs, v)


def fused_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    implementation: str = "cudnn",
) -> jax.Array:
    """jax.nn.dot_product_attention: the cuDNN flash kernel on GPUs.

    Plain causal rows use the kernel's built-in causal masking; packed or prefix-LM rows pass the
    dense mask (the kernel has no segment-id input in this JAX). implementation="xla" runs the
    same call anywhere, which is how the CPU tests check the mask plumbing of this path.
    """
    if mask is None:
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
