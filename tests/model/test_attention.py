"""Masks against hand-written matrices; rotary against its definition; the two kernels agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codegen2_jax.model import attention


def test_causal_only_mask_is_none():
    assert attention.make_attention_mask(4) is None


def test_packed_prefix_mask_matches_hand_written_matrix():
    # Two packed documents and a padding position; the first doc has a 2-token prefix.
    segments = jnp.array([[1, 1, 1, 2, 2, 0]])
    prefix = jnp.array([[1, 1, 0, 1, 0, 0]])
    expected = np.array(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 0, 0],
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],
        ],
        bool,
    )
    mask = attention.make_attention_mask(6, segments, prefix)
    np.testing.assert_array_equal(mask[0, 0], expected)


def test_prefix_is_bidirectional_only_within_its_segment():
    # Both segments start with prefixes; prefix tokens of different segments must not mix.
    segments = jnp.array([[1, 1, 2, 2]])
    prefix = jnp.array([[1, 1, 1, 1]])
    expected = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], bool)
    np.testing.assert_array_equal(
        attention.make_attention_mask(4, segments, prefix)[0, 0], expected
    )


def test_rotary_rotates_interleaved_pairs_by_position_angle():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 2, 8)).astype(np.float32)
    positions = jnp.array([[0, 5, 2]])
    sin, cos = attention.rotary_tables(positions, rotary_dim=4)
    out = np.asarray(attention.apply_rotary(jnp.asarray(x), sin, cos))
    for t, pos in enumerate([0, 5, 2]):
        for i in range(2):  # rotary_dim / 2 pairs
            theta = pos / 10000 ** (2 * i / 4)
            pair = x[0, t, :, 2 * i] + 1j * x[0, t, :, 2 * i + 1]
            rotated = pair * np.exp(1j * theta)
            np.testing.assert_allclose(out[0, t, :, 2 * i], rotated.real, atol=1e-5)
            np.testing.assert_allclose(out[0, t, :, 2 * i + 1], rotated.imag, atol=1e-5)
    np.testing.assert_array_equal(out[..., 4:], x[..., 4:])  # channels past rotary_dim pass


MASK_CASES = {
    "causal": lambda: None,
    "packed": lambda: attention.make_attention_mask(8, jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]] * 2)),
    "packed_prefix": lambda: attention.make_attention_mask(
        8, jnp.array([[1, 1, 1, 1, 2, 2, 2, 2]] * 2), jnp.array([[1, 1, 1, 0, 1, 1, 0, 0]] * 2)
    ),
}


@pytest.mark.parametrize("case", sorted(MASK_CASES))
def test_xla_and_fused_paths_agree(case):
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 8, 4, 16))
    mask = MASK_CASES[case]()
    reference = attention.xla_attention(q, k, v, mask)
    # The fused path's call with implementation="xla": same masking logic, runs on CPU.
    fused = attention.fused_attention(q, k, v, mask, implementation="xla")
    np.testing.assert_allclose(fused, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(
    jax.default_backend() != "gpu", reason="cuDNN fused attention runs only on a GPU"
)
@pytest.mark.parametrize("case", sorted(MASK_CASES))
def test_cudnn_path_agrees_with_xla(case):
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 8, 4, 16), jnp.bfloat16)
    mask = MASK_CASES[case]()
    reference = attention.xla_attention(q, k, v, mask).astype(jnp.float32)
    fused = attention.fused_attention(q, k, v, mask, implementation="cudnn").astype(jnp.float32)
    np.testing.assert_allclose(fused, reference, atol=2e-2)
