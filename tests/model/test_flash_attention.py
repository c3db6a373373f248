"""The block-skipping Pallas kernel (interpret mode) against xla_attention and its mask.

Every mask kind is one row of a single batch, so the kernels compile once; each kind is then
checked on its own row. T = 64 with 16-row blocks gives four blocks per row, so key and query
blocks are skipped wherever the intervals allow; the prefixes cross block boundaries, so a
range that ignored them would drop keys.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codegen2_jax.model import Decoder, TransformerConfig, attention, flash_attention

T, BLOCK, HEADS, HEAD_DIM = 64, 16, 2, 16
FORWARD_ATOL, GRAD_ATOL = 1e-5, 1e-4  # fp32; observed differences are about 1e-6


def runs(*pieces):
    """Concatenated runs of (value, count) pairs: one row of a feature."""
    return [value for value, count in pieces for _ in range(count)]


# kind: (segment ids, prefix flags) of one row of length T.
ROWS = {
    "causal": (runs((1, T)), runs((0, T))),
    "packed_with_padding": (runs((1, 20), (2, 25), (3, 9), (0, 10)), runs((0, T))),
    "prefix_lm": (runs((1, T)), runs((1, 23), (0, T - 23))),
    "packed_prefix_lm": (
        runs((1, 24), (2, 28), (0, 12)),
        runs((1, 9), (0, 15), (1, 18), (0, 22)),
    ),
    "empty_and_nonempty_prefixes": (
        runs((1, 12), (2, 24), (3, 28)),
        runs((0, 12), (1, 10), (0, 42)),
    ),
    "all_padding": (runs((0, T)), runs((0, T))),
    # Padding before and after a document: id 0 recurs, so no block may be skipped.
    "padding_at_both_ends": (runs((0, 8), (1, 40), (0, 16)), runs((0, 8), (1, 5), (0, 51))),
}
KINDS = list(ROWS)


@pytest.fixture(scope="module")
def batch():
    segments = jnp.array([ROWS[kind][0] for kind in KINDS])
    prefix = jnp.array([ROWS[kind][1] for kind in KINDS])
    q, k, v, d_out = jax.random.normal(jax.random.key(0), (4, len(KINDS), T, HEADS, HEAD_DIM))
    return segments, prefix, (q, k, v), d_out


def outputs_and_grads(attend, qkv, d_out):
    out, vjp = jax.vjp(attend, *qkv)
    return out, vjp(d_out)


@jax.jit
def kernel_results(qkv, d_out, layout):
    return outputs_and_grads(
        lambda q, k, v: flash_attention.flash_attention(q, k, v, layout), qkv, d_out
    )


@jax.jit
def reference_results(qkv, d_out, mask):
    return outputs_and_grads(lambda q, k, v: attention.xla_attention(q, k, v, mask), qkv, d_out)


@pytest.fixture(scope="module")
def results(batch):
    segments, prefix, qkv, d_out = batch
    mask = attention.make_attention_mask(T, segments, prefix)
    layout = flash_attention.block_layout(len(KINDS), T, segments, prefix, BLOCK, BLOCK)
    return kernel_results(qkv, d_out, layout), reference_results(qkv, d_out, mask)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_equals_xla_attention(results, kind):
    (out, _), (expected, _) = results
    row = KINDS.index(kind)
    np.testing.assert_allclose(out[row], expected[row], atol=FORWARD_ATOL, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_equal_xla_attention(results, kind):
    (_, grads), (_, expected) = results
    row = KINDS.index(kind)
    for name, grad, want in zip("qkv", grads, expected, strict=True):
        np.testing.assert_allclose(grad[row], want[row], atol=GRAD_ATOL, rtol=0, err_msg=f"d{name}")


@pytest.mark.parametrize("kind", KINDS)
def test_intervals_are_the_hull_of_each_mask_row(kind):
    segments, prefix = (jnp.array([feature]) for feature in ROWS[kind])
    lo, hi = (np.asarray(x[0]) for x in flash_attention.query_key_bounds(segments, prefix))
    mask = np.asarray(attention.make_attention_mask(T, segments, prefix)[0, 0])
    keys = np.arange(T)
    if kind == "padding_at_both_ends":
        np.testing.assert_array_equal((lo, hi), (np.zeros(T), np.full(T, T)))
        return
    first = np.array([keys[allowed].min() for allowed in mask])
    last = np.array([keys[allowed].max() for allowed in mask])
    np.testing.assert_array_equal(lo, first)
    np.testing.assert_array_equal(hi, last + 1)


def test_query_key_bounds_of_a_hand_written_row():
    segments = jnp.array([[1, 1, 1, 2, 2, 2, 0, 0]])
    prefix = jnp.array([[1, 1, 0, 1, 1, 0, 0, 0]])
    lo, hi = flash_attention.query_key_bounds(segments, prefix)
    np.testing.assert_array_equal(lo[0], [0, 0, 0, 3, 3, 3, 6, 6])
    np.testing.assert_array_equal(hi[0], [2, 2, 3, 5, 5, 6, 7, 8])


def test_packed_rows_skip_key_and_query_blocks():
    segments, prefix = (jnp.array([feature]) for feature in ROWS["packed_prefix_lm"])
    layout = flash_attention.block_layout(1, T, segments, prefix, BLOCK, BLOCK)
    # Documents [0, 24) with prefix [0, 9), [24, 52) with prefix [24, 42), padding [52, 64).
    np.testing.assert_array_equal(layout.key_block_start[0], [0, 0, 1, 1])
    np.testing.assert_array_equal(layout.key_block_end[0], [1, 3, 3, 4])
    np.testing.assert_array_equal(layout.query_block_start[0], [0, 1, 1, 3])
    np.testing.assert_array_equal(layout.query_block_end[0], [2, 4, 4, 4])


def test_plain_causal_layout_is_one_segment_without_prefix():
    causal = flash_attention.block_layout(2, T, block_q=BLOCK, block_k=BLOCK)
    np.testing.assert_array_equal(causal.key_block_start, 0)
    np.testing.assert_array_equal(causal.key_block_end, [[1, 2, 3, 4]] * 2)
    np.testing.assert_array_equal(causal.query_block_start, [[0, 1, 2, 3]] * 2)


def test_blocks_that_triton_cannot_tile_are_refused():
    with pytest.raises(ValueError, match="block_k to be a power of two >= 16; got 24"):
        flash_attention.block_layout(1, T, block_q=16, block_k=24)
    with pytest.raises(ValueError, match="block_q to be a power of two >= 16; got 8"):
        flash_attention.block_layout(1, T, block_q=8)


def test_a_sequence_the_blocks_do_not_divide_is_padded_with_a_segment_of_its_own():
    segments = jnp.array([runs((1, 30), (2, 10))])
    layout = flash_attention.block_layout(1, 40, segments, block_q=BLOCK, block_k=32)
    np.testing.assert_array_equal(layout.segment_ids, [runs((1, 30), (2, 10), (0, 24))])
    np.testing.assert_array_equal(layout.key_block_start, [[0, 0, 0, 1]])
    assert flash_attention.block_layout(1, 1).segment_ids.shape == (1, 16)


def test_every_kernel_lowers_to_triton_for_a_gpu():
    # Lowering only (no GPU here): Pallas emits each kernel's Triton IR in a custom call.
    q = jax.ShapeDtypeStruct((1, 256, 2, 128), jnp.bfloat16)
    layout = jax.eval_shape(lambda: flash_attention.block_layout(1, 256))

    def loss(q, k, v, layout):
        out = flash_attention.flash_attention(q, k, v, layout, interpret=False)
        return jnp.sum(out.astype(jnp.float32))

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    text = grads.trace(q, q, q, layout).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("xla.gpu.triton") == 3
    for kernel in ("forward", "backward_dq", "backward_dkdv"):
        assert f'name = "flash_attention_{kernel}"' in text


# head_dim 8 and 56-token rows: the kernel pads them to 16 and 64 and cuts the padding off.
TINY = dict(vocab_size=97, num_layers=1, embed_dim=32, num_heads=4, rotary_dim=4, dtype="float32")


def random_params(model):
    """Normal parameters of the model's shapes; cheaper than compiling model.init."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(scale=0.2, size=s.shape), s.dtype),
        nn.unbox(shapes)["params"],
    )


def test_decoder_with_pallas_attention_matches_xla(monkeypatch):
    # 16-row blocks, so the rows have blocks to skip (the defaults would cover them whole).
    monkeypatch.setattr(
        flash_attention,
        "block_layout",
        functools.partial(flash_attention.block_layout, block_q=BLOCK, block_k=BLOCK),
    )
    length = 56
    segments, prefix = (
        jnp.array([ROWS[kind][i][:length] for kind in ("packed_prefix_lm", "prefix_lm")])
        for i in (0, 1)
    )
    tokens = jax.random.randint(jax.random.key(2), (2, length), 0, TINY["vocab_size"])
    features = dict(decoder_segment_ids=segments, decoder_causal_attention=prefix)
    xla = Decoder(TransformerConfig(**TINY))
    pallas = Decoder(TransformerConfig(**TINY, attention_impl="pallas"))
    params = random_params(xla)

    def loss_and_grads(model):
        def loss(p):
            logits = model.apply({"params": p}, tokens, **features)
            return jnp.mean(logits**2), logits

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (loss_xla, logits_xla), grads_xla = loss_and_grads(xla)
    (loss_pallas, logits_pallas), grads_pallas = loss_and_grads(pallas)
    np.testing.assert_allclose(logits_pallas, logits_xla, atol=FORWARD_ATOL, rtol=0)
    np.testing.assert_allclose(loss_pallas, loss_xla, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=GRAD_ATOL, rtol=0),
        grads_pallas,
        grads_xla,
    )
