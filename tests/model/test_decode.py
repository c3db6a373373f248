"""Incremental decoding over the KV cache computes the same logits as the full forward pass.

fp32; atol 1e-5 (the cache path sums attention over a longer, masked key axis, so results
agree to float rounding, not bit for bit).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codegen2_jax.model import Decoder, TransformerConfig, attention, init_cache

TINY = dict(vocab_size=97, num_layers=2, embed_dim=32, num_heads=4, rotary_dim=4, dtype="float32")
LENGTHS = np.array([7, 3, 5])  # prompt lengths of the three rows
STEPS = 4  # tokens decoded one at a time after the prompt


def test_decode_mask_against_hand_written_matrix():
    # Two new tokens in slots 2 and 3 of a 5-slot cache; row 0 has one slot of left padding.
    keys = jnp.array([[0, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    mask = attention.make_decode_mask(jnp.int32(2), jnp.array([[1, 1], [1, 1]]), keys)
    expected = np.array(
        [
            [[0, 1, 1, 0, 0], [0, 1, 1, 1, 0]],
            [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]],
        ],
        bool,
    )
    np.testing.assert_array_equal(mask[:, 0], expected)


def test_cache_attention_equals_the_einsum_path_over_a_cache():
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 9, 4, 16))
    keys = jnp.array([[0, 0, 1, 1, 1, 1, 0, 0, 0], [1] * 6 + [0] * 3])  # left padding, future
    for new in (1, 2):  # a decoding step, and a prompt of two tokens in slots 4-5
        mask = attention.make_decode_mask(jnp.int32(6 - new), jnp.ones((2, new), jnp.int32), keys)
        heads_major = [x.transpose(0, 2, 1, 3) for x in (k, v)]
        np.testing.assert_allclose(
            attention.cache_attention(q[:, :new], *heads_major, mask),
            attention.xla_attention(q[:, :new], k, v, mask),
            atol=1e-6,
            rtol=1e-6,
        )


def _left_padded_prompt(tokens, width):
    pad = width - LENGTHS
    slots = np.arange(width)[None]
    prompt = np.zeros((len(LENGTHS), width), np.int32)
    for row, length in enumerate(LENGTHS):
        prompt[row, pad[row] :] = tokens[row, :length]
    return prompt, (slots >= pad[:, None]).astype(np.int32), np.maximum(slots - pad[:, None], 0)


def test_decode_mask_makes_flagged_new_tokens_a_prefix():
    # Three new tokens in slots 1-3 of a 5-slot cache; the first two form a prefix.
    keys = jnp.array([[1, 1, 1, 1, 0]])
    mask = attention.make_decode_mask(
        jnp.int32(1), jnp.array([[1, 1, 1]]), keys, jnp.array([[1, 1, 0]])
    )
    expected = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool)
    np.testing.assert_array_equal(mask[0, 0], expected)


def _incremental_logits(model, params, tokens, prefix_prompt=False):
    """Per row: logits of its prompt positions (one prefill call) then of STEPS single steps.

    prefix_prompt: the prompt is a bidirectional prefix (prefix-LM decoding).
    """
    width = int(LENGTHS.max())
    prompt, segments, positions = _left_padded_prompt(tokens, width)
    cache = init_cache(model, len(LENGTHS), width + STEPS)
    apply = jax.jit(model.apply, static_argnames=("decode", "mutable"))  # one compile per shape
    logits, variables = apply(
        {"params": params, "cache": cache},
        prompt,
        decoder_segment_ids=segments,
        decoder_positions=positions,
        decoder_causal_attention=segments if prefix_prompt else None,
        decode=True,
        mutable=("cache",),
    )
    rows = [[logits[r, width - n :]] for r, n in enumerate(LENGTHS)]
    for t in range(STEPS):
        step_tokens = tokens[np.arange(len(LENGTHS)), LENGTHS + t][:, None]
        logits, variables = apply(
            {"params": params, "cache": variables["cache"]},
            step_tokens,
            decoder_positions=(LENGTHS + t)[:, None],
            decode=True,
            mutable=("cache",),
        )
        for r in range(len(LENGTHS)):
            rows[r].append(logits[r])
    assert int(variables["cache"]["index"]) == width + STEPS
    return [jnp.concatenate(parts) for parts in rows]


@pytest.mark.parametrize("scan_layers", [True, False])
def test_incremental_decoding_matches_full_forward(scan_layers):
    model = Decoder(TransformerConfig(**TINY, scan_layers=scan_layers))
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))["params"]
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (3, 12), 1, TINY["vocab_size"]))
    incremental = _incremental_logits(model, params, tokens)
    # Causal attention: tokens after a row's end change none of its earlier logits.
    full = model.apply({"params": params}, tokens[:, : LENGTHS.max() + STEPS])
    for row, length in enumerate(LENGTHS):
        np.testing.assert_allclose(incremental[row], full[row, : length + STEPS], atol=1e-5)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_cache_holds_keys_and_values_of_every_layer(scan_layers):
    cache = init_cache(Decoder(TransformerConfig(**TINY, scan_layers=scan_layers)), 2, 9)
    if scan_layers:
        assert cache["layers"]["attn"]["key"].shape == (2, 2, 4, 9, 8)  # [L, B, H, S, hd]
    else:
        assert cache["layers_1"]["attn"]["value"].shape == (2, 4, 9, 8)  # [B, H, S, hd]
    assert cache["segment_ids"].shape == (2, 9) and int(cache["index"]) == 0


@pytest.mark.parametrize("scan_layers", [True, False])
def test_prefix_lm_decoding_matches_full_forward_with_the_prompt_as_prefix(scan_layers):
    model = Decoder(TransformerConfig(**TINY, scan_layers=scan_layers))
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))["params"]
    tokens = np.asarray(jax.random.randint(jax.random.key(2), (3, 12), 1, TINY["vocab_size"]))
    incremental = _incremental_logits(model, params, tokens, prefix_prompt=True)
    width = LENGTHS.max() + STEPS
    prefix = (np.arange(width)[None] < LENGTHS[:, None]).astype(np.int32)
    full = model.apply({"params": params}, tokens[:, :width], decoder_causal_attention=prefix)
    causal = model.apply({"params": params}, tokens[:, :width])
    for row, length in enumerate(LENGTHS):
        np.testing.assert_allclose(incremental[row], full[row, : length + STEPS], atol=1e-5)
        # The prefix changes the prompt's logits, so the comparison can fail.
        assert np.abs(full[row, : length - 1] - causal[row, : length - 1]).max() > 1e-3
