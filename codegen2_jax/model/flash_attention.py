"""Block-skipping flash attention for packed prefix-LM rows, as a Pallas (Triton) kernel.

The dense [B, 1, T, T] mask that carries packing and prefixes into cuDNN makes every query
block visit every key block; here each query's allowed keys are bounded by one interval,
[start of its segment, max(i + 1, end of its segment's prefix)), so each query block visits
only the key blocks that its queries' intervals touch, and the backward pass visits, for each
key block, only the query blocks that reach it. Inside the visited blocks the mask of
attention.make_attention_mask is applied elementwise from the segment ids and prefix flags,
so the intervals only decide which blocks are skipped, never which scores are kept.

Scores and softmax are fp32, as in attention.xla_attention; the forward pass saves each
query's logsumexp for the backward pass (FlashAttention-2). On a backend other than the GPU
the kernels run in Pallas' interpret mode: correct, slow, for tests and CPU configurations.

Not tokamax: its 0.0.17 release requires jax>=0.11.1 and Python>=3.12, and this project's
environment pins jax 0.10.2 on Python 3.11.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Scores outside the mask; finite, so a row whose visited keys are all masked so far stays
# free of NaNs, and its weight vanishes once a real score raises the running maximum.
MASK_VALUE = float(jnp.finfo(jnp.float32).min) / 2
MIN_BLOCK = 16  # the smallest matmul dimension Triton's tensor-core dot accepts


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "segment_ids",
        "prefix",
        "key_block_start",
        "key_block_end",
        "query_block_start",
        "query_block_end",
    ],
    meta_fields=["block_q", "block_k"],
)
@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """Which blocks each block of a batch meets; computed once per forward, shared by layers.

    Attributes:
      segment_ids: int32 [batch, T], packed document ids (0 on padding).
      prefix: int32 [batch, T], 1 on bidirectional prefix tokens.
      key_block_start, key_block_end: int32 [batch, T / block_q], per query block the key
        blocks [start, end) that its queries may attend to.
      query_block_start, query_block_end: int32 [batch, T / block_k], per key block the query
        blocks [start, end) whose key ranges include it.
      block_q, block_k: rows of a query block and of a key block.
    """

    segment_ids: jax.Array
    prefix: jax.Array
    key_block_start: jax.Array
    key_block_end: jax.Array
    query_block_start: jax.Array
    query_block_end: jax.Array
    block_q: int
    block_k: int


@jax.jit
def query_key_bounds(segment_ids: jax.Array, prefix: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per query, keys [lo, hi) enclosing every key make_attention_mask lets it attend to.

    A query attends within its segment: from the segment's first token, up to itself, and,
    if it is a prefix token, up to its segment's last prefix token. This reads a segment as a
    run of equal ids; a row in which some id recurs in separate runs (so the run is not the
    whole segment) gets [0, T) for every query, which skips nothing and stays exact.

    Args:
      segment_ids, prefix: int [batch, T].

    Returns:
      lo, hi: int32 [batch, T].
    """
    length = segment_ids.shape[1]
    position = jnp.arange(length, dtype=jnp.int32)
    run_begins = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
        axis=1,
    )
    lo = jax.lax.cummax(jnp.where(run_begins, position, 0), axis=1)
    run_id = jnp.cumsum(run_begins, axis=1, dtype=jnp.int32) - 1
    prefix_position = jnp.where(prefix > 0, position, -1)
    last_prefix_of_run = jax.vmap(
        lambda values, runs: jax.ops.segment_max(values, runs, num_segments=length)[runs]
    )(prefix_position, run_id)
    hi = jnp.where(prefix > 0, jnp.maximum(position, last_prefix_of_run), position) + 1
    recurs = run_id[:, -1] + 1 > _distinct_ids(segment_ids)
    lo = jnp.where(recurs[:, None], 0, lo)
    hi = jnp.where(recurs[:, None], length, hi)
    return lo, hi


def _distinct_ids(segment_ids: jax.Array) -> jax.Array:
    """Number of distinct ids in each row, int32 [batch]."""
    ordered = jnp.sort(segment_ids, axis=1)
    return 1 + jnp.sum(ordered[:, 1:] != ordered[:, :-1], axis=1, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames=("batch", "length", "block_q", "block_k"))
def block_layout(
    batch: int,
    length: int,
    segment_ids: jax.Array | None = None,
    causal_attention: jax.Array | None = None,
    block_q: int = 128,
    block_k: int = 64,
) -> BlockLayout:
    """The BlockLayout of a batch of the contract (see attention.make_attention_mask).

    Blocks shrink to the sequence when it is shorter. A sequence the blocks do not divide is
    padded to one they do, the padding being a segment of its own (an id below the row's),
    so no real query sees it; flash_attention pads q, k and v to match and cuts the result.
    Raises ValueError when a block is not a power of two of at least MIN_BLOCK rows.
    """
    for name, block in (("block_q", block_q), ("block_k", block_k)):
        if block < MIN_BLOCK or block & (block - 1):
            raise ValueError(
                f"flash attention needs {name} to be a power of two >= {MIN_BLOCK}; got {block}"
            )
    shortest_block = max(MIN_BLOCK, 1 << (length - 1).bit_length())
    block_q, block_k = min(block_q, shortest_block), min(block_k, shortest_block)
    shape = (batch, length)
    segment_ids = jnp.ones(shape, jnp.int32) if segment_ids is None else segment_ids
    prefix = jnp.zeros(shape, jnp.int32) if causal_attention is None else causal_attention
    segment_ids, prefix = segment_ids.astype(jnp.int32), prefix.astype(jnp.int32)
    pad = -length % max(block_q, block_k)
    padding_id = jnp.min(segment_ids, axis=1, keepdims=True) - 1
    segment_ids = jnp.concatenate([segment_ids, jnp.broadcast_to(padding_id, (batch, pad))], 1)
    prefix = jnp.pad(prefix, ((0, 0), (0, pad)))
    lo, hi = query_key_bounds(segment_ids, prefix)
    key_start = jnp.min(lo.reshape(batch, -1, block_q), axis=2) // block_k
    key_end = (jnp.max(hi.reshape(batch, -1, block_q), axis=2) + block_k - 1) // block_k
    num_key_blocks = (length + pad) // block_k
    query_start, query_end = _query_blocks_per_key_block(key_start, key_end, num_key_blocks)
    return BlockLayout(
        segment_ids, prefix, key_start, key_end, query_start, query_end, block_q, block_k
    )


def _query_blocks_per_key_block(key_start, key_end, num_key_blocks: int):
    """Per key block, the first and one-past-last query block whose key range includes it."""
    key_block = jnp.arange(num_key_blocks)
    reaches = (key_start[:, :, None] <= key_block) & (key_block < key_end[:, :, None])  # [B,Q,K]
    num_query_blocks = key_start.shape[1]
    first = jnp.argmax(reaches, axis=1)
    last = num_query_blocks - 1 - jnp.argmax(reaches[:, ::-1], axis=1)
    return first.astype(jnp.int32), (last + 1).astype(jnp.int32)


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    layout: BlockLayout,
    interpret: bool | None = None,
) -> jax.Array:
    """attention.xla_attention under make_attention_mask's mask, skipping masked blocks.

    Args:
      q, k, v: [batch, T, heads, head_dim]. For the kernel, T is zero-padded to the layout's
        length and head_dim to a power of two (at least MIN_BLOCK); the result drops both.
      layout: block_layout of the batch.
      interpret: run the kernels in Pallas' interpreter; None: unless the backend is a GPU.

    Returns:
      [batch, T, heads, head_dim] in v's dtype.
    """
    _, length, _, head_dim = q.shape
    padded_head_dim = max(MIN_BLOCK, 1 << (head_dim - 1).bit_length())
    pad = [
        (0, 0),
        (0, layout.segment_ids.shape[1] - length),
        (0, 0),
        (0, padded_head_dim - head_dim),
    ]
    q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    out = _attention(q, k, v, layout, head_dim**-0.5, interpret)
    return out[:, :length, :, :head_dim]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention(q, k, v, layout, scale, interpret):
    return _forward(q, k, v, layout, scale, interpret)[0]


def _attention_fwd(q, k, v, layout, scale, interpret):
    out, lse = _forward(q, k, v, layout, scale, interpret)
    return out, (q, k, v, layout, out, lse)


def _attention_bwd(scale, interpret, residuals, d_out):
    q, k, v, layout, out, lse = residuals
    # delta_i = sum_d out_i * d_out_i, the softmax's correction term for every score of row i.
    delta = jnp.einsum("bthd,bthd->bht", out.astype(jnp.float32), d_out.astype(jnp.float32))
    dq = _backward_dq(q, k, v, d_out, lse, delta, layout, scale, interpret)
    dk, dv = _backward_dkdv(q, k, v, d_out, lse, delta, layout, scale, interpret)
    return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def _dot(a, b, contract_a: int = 1, contract_b: int = 0):
    """2-D matmul with an fp32 result, contracting the named dimension of each operand."""
    dims = (((contract_a,), (contract_b,)), ((), ()))
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _allowed(q_pos, k_pos, q_segment, k_segment, q_prefix, k_prefix):
    """make_attention_mask on one tile: same segment and (causal or both in the prefix)."""
    causal = q_pos[:, None] >= k_pos[None, :]
    both_prefix = (q_prefix[:, None] > 0) & (k_prefix[None, :] > 0)
    return (q_segment[:, None] == k_segment[None, :]) & (causal | both_prefix)


def _forward_kernel(
    key_start_ref, key_end_ref, q_ref, k_ref, v_ref, q_seg_ref, seg_ref, q_pre_ref, pre_ref,
    out_ref, lse_ref, *, scale: float, block_k: int,
):  # fmt: skip
    block_q = q_ref.shape[0]
    q_pos = pl.program_id(2) * block_q + jnp.arange(block_q)
    q, q_segment, q_prefix = q_ref[...], q_seg_ref[...], q_pre_ref[...]

    def visit(key_block, carry):
        acc, row_max, row_sum = carry
        keys = pl.ds(key_block * block_k, block_k)
        k_pos = key_block * block_k + jnp.arange(block_k)
        scores = _dot(q, k_ref[keys, :], 1, 1) * scale
        allowed = _allowed(q_pos, k_pos, q_segment, seg_ref[keys], q_prefix, pre_ref[keys])
        scores = jnp.where(allowed, scores, MASK_VALUE)
        new_max = jnp.maximum(row_max, jnp.max(scores, axis=1))
        weights = jnp.exp(scores - new_max[:, None])
        rescale = jnp.exp(row_max - new_max)
        row_sum = rescale * row_sum + jnp.sum(weights, axis=1)
        v = v_ref[keys, :]
        acc = rescale[:, None] * acc + _dot(weights.astype(v.dtype), v)
        return acc, new_max, row_sum

    init = (
        jnp.zeros(q.shape, jnp.float32),
        jnp.full((block_q,), MASK_VALUE, jnp.float32),
        jnp.zeros((block_q,), jnp.float32),
    )
    acc, row_max, row_sum = jax.lax.fori_loop(key_start_ref[()], key_end_ref[()], visit, init)
    out_ref[...] = (acc / row_sum[:, None]).astype(out_ref.dtype)
    lse_ref[...] = row_max + jnp.log(row_sum)


def _dq_kernel(
    key_start_ref, key_end_ref, q_ref, k_ref, v_ref, d_out_ref, lse_ref, delta_ref,
    q_seg_ref, seg_ref, q_pre_ref, pre_ref, dq_ref, *, scale: float, block_k: int,
):  # fmt: skip
    block_q = q_ref.shape[0]
    q_pos = pl.program_id(2) * block_q + jnp.arange(block_q)
    q, d_out, lse, delta = q_ref[...], d_out_ref[...], lse_ref[...], delta_ref[...]
    q_segment, q_prefix = q_seg_ref[...], q_pre_ref[...]

    def visit(key_block, dq):
        keys = pl.ds(key_block * block_k, block_k)
        k_pos = key_block * block_k + jnp.arange(block_k)
        k = k_ref[keys, :]
        scores = _dot(q, k, 1, 1) * scale
        allowed = _allowed(q_pos, k_pos, q_segment, seg_ref[keys], q_prefix, pre_ref[keys])
        probs = jnp.where(allowed, jnp.exp(scores - lse[:, None]), 0.0)
        d_scores = probs * (_dot(d_out, v_ref[keys, :], 1, 1) - delta[:, None])
        return dq + _dot(d_scores.astype(k.dtype), k)

    dq = jax.lax.fori_loop(
        key_start_ref[()], key_end_ref[()], visit, jnp.zeros(q.shape, jnp.float32)
    )
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkdv_kernel(
    query_start_ref, query_end_ref, q_ref, k_ref, v_ref, d_out_ref, lse_ref, delta_ref,
    seg_ref, k_seg_ref, pre_ref, k_pre_ref, dk_ref, dv_ref, *, scale: float, block_q: int,
):  # fmt: skip
    block_k = k_ref.shape[0]
    k_pos = pl.program_id(2) * block_k + jnp.arange(block_k)
    k, v = k_ref[...], v_ref[...]
    k_segment, k_prefix = k_seg_ref[...], k_pre_ref[...]

    def visit(query_block, carry):
        dk, dv = carry
        queries = pl.ds(query_block * block_q, block_q)
        q_pos = query_block * block_q + jnp.arange(block_q)
        q, d_out = q_ref[queries, :], d_out_ref[queries, :]
        scores = _dot(q, k, 1, 1) * scale
        allowed = _allowed(q_pos, k_pos, seg_ref[queries], k_segment, pre_ref[queries], k_prefix)
        probs = jnp.where(allowed, jnp.exp(scores - lse_ref[queries][:, None]), 0.0)
        dv = dv + _dot(probs.astype(d_out.dtype), d_out, 0, 0)
        d_scores = probs * (_dot(d_out, v, 1, 1) - delta_ref[queries][:, None])
        dk = dk + _dot(d_scores.astype(q.dtype), q, 0, 0)
        return dk, dv

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = jax.lax.fori_loop(query_start_ref[()], query_end_ref[()], visit, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


# Block specs over the grid (batch, head, block); arrays are [B, T, H, D], [B, H, T] or [B, T].
def _heads_block(rows: int, head_dim: int) -> pl.BlockSpec:
    return pl.BlockSpec((None, rows, None, head_dim), lambda b, h, i: (b, i, h, 0))


def _heads_whole(length: int, head_dim: int) -> pl.BlockSpec:
    return pl.BlockSpec((None, length, None, head_dim), lambda b, h, i: (b, 0, h, 0))


def _rows_block(rows: int) -> pl.BlockSpec:
    return pl.BlockSpec((None, None, rows), lambda b, h, i: (b, h, i))


def _rows_whole(length: int) -> pl.BlockSpec:
    return pl.BlockSpec((None, None, length), lambda b, h, i: (b, h, 0))


def _tokens_block(rows: int) -> pl.BlockSpec:
    return pl.BlockSpec((None, rows), lambda b, h, i: (b, i))


def _tokens_whole(length: int) -> pl.BlockSpec:
    return pl.BlockSpec((None, length), lambda b, h, i: (b, 0))


_BLOCK_SCALAR = pl.BlockSpec((None, None), lambda b, h, i: (b, i))


def _call(kernel, grid, in_specs, out_specs, out_shape, interpret: bool, name: str):
    """pallas_call lowered by Triton on a GPU (8 warps for the wider tiles of head_dim 128)."""
    head_dim = out_shape[0].shape[-1]
    return pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=2),
        interpret=interpret,
        name=name,
    )


def _forward(q, k, v, layout: BlockLayout, scale: float, interpret: bool):
    batch, length, heads, head_dim = q.shape
    bq, bk = layout.block_q, layout.block_k
    q_block, whole = _heads_block(bq, head_dim), _heads_whole(length, head_dim)
    kernel = functools.partial(_forward_kernel, scale=scale, block_k=bk)
    return _call(
        kernel,
        grid=(batch, heads, length // bq),
        in_specs=[
            _BLOCK_SCALAR, _BLOCK_SCALAR, q_block, whole, whole,
            _tokens_block(bq), _tokens_whole(length), _tokens_block(bq), _tokens_whole(length),
        ],  # fmt: skip
        out_specs=[q_block, _rows_block(bq)],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, v.dtype),
            jax.ShapeDtypeStruct((batch, heads, length), jnp.float32),
        ],
        interpret=interpret,
        name="flash_attention_forward",
    )(
        layout.key_block_start, layout.key_block_end, q, k, v,
        layout.segment_ids, layout.segment_ids, layout.prefix, layout.prefix,
    )  # fmt: skip


def _backward_dq(q, k, v, d_out, lse, delta, layout, scale, interpret):
    batch, length, heads, head_dim = q.shape
    bq, bk = layout.block_q, layout.block_k
    q_block, whole = _heads_block(bq, head_dim), _heads_whole(length, head_dim)
    kernel = functools.partial(_dq_kernel, scale=scale, block_k=bk)
    (dq,) = _call(
        kernel,
        grid=(batch, heads, length // bq),
        in_specs=[
            _BLOCK_SCALAR, _BLOCK_SCALAR, q_block, whole, whole, q_block,
            _rows_block(bq), _rows_block(bq),
            _tokens_block(bq), _tokens_whole(length), _tokens_block(bq), _tokens_whole(length),
        ],  # fmt: skip
        out_specs=[q_block],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype)],
        interpret=interpret,
        name="flash_attention_backward_dq",
    )(
        layout.key_block_start, layout.key_block_end, q, k, v, d_out, lse, delta,
        layout.segment_ids, layout.segment_ids, layout.prefix, layout.prefix,
    )  # fmt: skip
    return dq


def _backward_dkdv(q, k, v, d_out, lse, delta, layout, scale, interpret):
    batch, length, heads, head_dim = q.shape
    bq, bk = layout.block_q, layout.block_k
    k_block, whole = _heads_block(bk, head_dim), _heads_whole(length, head_dim)
    kernel = functools.partial(_dkdv_kernel, scale=scale, block_q=bq)
    return _call(
        kernel,
        grid=(batch, heads, length // bk),
        in_specs=[
            _BLOCK_SCALAR, _BLOCK_SCALAR, whole, k_block, k_block, whole,
            _rows_whole(length), _rows_whole(length),
            _tokens_whole(length), _tokens_block(bk), _tokens_whole(length), _tokens_block(bk),
        ],  # fmt: skip
        out_specs=[k_block, k_block],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        interpret=interpret,
        name="flash_attention_backward_dkdv",
    )(
        layout.query_block_start, layout.query_block_end, q, k, v, d_out, lse, delta,
        layout.segment_ids, layout.segment_ids, layout.prefix, layout.prefix,
    )  # fmt: skip
