"""The Decoder: shapes, scan == unrolled, remat, and the packing / prefix-LM contract.

Every computation is one compiled program: op-by-op, the same checks take seconds each.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codegen2_jax.model import Decoder, TransformerConfig

TINY = dict(vocab_size=97, num_layers=2, embed_dim=32, num_heads=4, rotary_dim=4, dtype="float32")


def init(config, length=12, seed=0):
    model = Decoder(config)
    params = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, length), jnp.int32))
    return model, nn.unbox(params)["params"]


@functools.partial(jax.jit, static_argnums=0)
def forward(model, params, x, **inputs):
    return model.apply({"params": params}, x, **inputs)


def tokens(shape, seed=1):
    return jax.random.randint(jax.random.key(seed), shape, 0, TINY["vocab_size"])


def test_parameter_count_matches_config():
    model, params = init(TransformerConfig(**TINY))
    assert sum(x.size for x in jax.tree.leaves(params)) == model.config.num_params()


def test_released_1b_shape_has_the_published_parameter_count():
    config = TransformerConfig(num_layers=16, embed_dim=2048, num_heads=16, vocab_size=51200)
    assert config.num_params() == 1_015_306_240  # CodeGen2-1B, as transformers counts it


def test_scanned_and_unrolled_layers_compute_the_same_function():
    scanned_model, scanned = init(TransformerConfig(**TINY, scan_layers=True))
    unrolled_model, _ = init(TransformerConfig(**TINY, scan_layers=False))
    unrolled = {k: v for k, v in scanned.items() if k != "layers"}
    for i in range(TINY["num_layers"]):
        unrolled[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], scanned["layers"])
    x = tokens((2, 12))
    np.testing.assert_allclose(
        forward(scanned_model, scanned, x),
        forward(unrolled_model, unrolled, x),
        atol=1e-5,
    )


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_keeps_values_and_gradients(policy):
    base_model, params = init(TransformerConfig(**TINY))
    remat_model = Decoder(TransformerConfig(**TINY, remat_policy=policy))
    x = tokens((2, 12))

    @functools.partial(jax.jit, static_argnums=0)
    def loss(model, p):
        return jnp.mean(model.apply({"params": p}, x) ** 2)

    gradient = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)
    np.testing.assert_allclose(loss(base_model, params), loss(remat_model, params), rtol=1e-6)
    g_base = gradient(base_model, params)
    g_remat = gradient(remat_model, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g_base, g_remat)


def test_packed_segments_equal_separate_documents():
    model, params = init(TransformerConfig(**TINY))
    doc_a, doc_b = tokens((1, 5), seed=2), tokens((1, 7), seed=3)
    packed = jnp.concatenate([doc_a, doc_b], axis=1)
    segments = jnp.array([[1] * 5 + [2] * 7])
    positions = jnp.array([list(range(5)) + list(range(7))])
    logits = forward(
        model, params, packed, decoder_segment_ids=segments, decoder_positions=positions
    )
    np.testing.assert_allclose(logits[:, :5], forward(model, params, doc_a), atol=1e-5)
    np.testing.assert_allclose(logits[:, 5:], forward(model, params, doc_b), atol=1e-5)


def test_prefix_tokens_see_later_prefix_tokens_and_nothing_after():
    model, params = init(TransformerConfig(**TINY))
    x = tokens((1, 8))
    prefix = jnp.array([[1, 1, 1, 1, 0, 0, 0, 0]])
    apply = lambda t: forward(model, params, t, decoder_causal_attention=prefix)
    changed_in_prefix = x.at[0, 3].set((x[0, 3] + 1) % TINY["vocab_size"])
    changed_after = x.at[0, 6].set((x[0, 6] + 1) % TINY["vocab_size"])
    # Position 0 is in the prefix, so it sees position 3 (bidirectional) but never position 6.
    assert not np.allclose(apply(x)[0, 0], apply(changed_in_prefix)[0, 0])
    np.testing.assert_allclose(apply(x)[0, :6], apply(changed_after)[0, :6], atol=1e-6)
    # Without the prefix flag the model is causal: position 0 ignores position 3.
    causal = forward(model, params, changed_in_prefix)[0, 0]
    np.testing.assert_allclose(forward(model, params, x)[0, 0], causal, atol=1e-6)


def test_bad_shapes_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        TransformerConfig(**{**TINY, "num_heads": 5})
    with pytest.raises(ValueError, match="remat_policy"):
        TransformerConfig(**TINY, remat_policy="sometimes")
