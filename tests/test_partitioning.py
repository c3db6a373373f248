"""On 8 fake CPU devices, sharded forward passes and train steps equal unsharded ones.

Tolerance: fp32, atol 1e-5 / rtol 1e-5 on logits, loss and parameters after one step.
Sharding changes the order of reductions (all-reduces of partial sums), so results agree to
float rounding, not bit for bit.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from codegen2_jax import gin_config, partitioning, train_state, trainer
from codegen2_jax.model import Decoder, TransformerConfig

CONFIG = TransformerConfig(
    vocab_size=128, num_layers=2, embed_dim=64, num_heads=4, rotary_dim=8, dtype="float32"
)
BATCH_SHAPE = (8, 16)
TOL = dict(atol=1e-5, rtol=1e-5)


def make_batch(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, CONFIG.vocab_size, size=BATCH_SHAPE).astype(np.int32)
    segments = np.repeat(np.array([[1] * 10 + [2] * 6]), 8, axis=0).astype(np.int32)
    positions = np.concatenate([np.arange(10), np.arange(6)])[None].repeat(8, 0).astype(np.int32)
    prefix = np.zeros(BATCH_SHAPE, np.int32)
    prefix[:, :4] = 1
    weights = (1 - prefix).astype(np.float32)
    return {
        "decoder_input_tokens": tokens,
        "decoder_target_tokens": np.roll(tokens, -1, axis=1),
        "decoder_loss_weights": weights,
        "decoder_segment_ids": segments,
        "decoder_positions": positions,
        "decoder_causal_attention": prefix,
    }


def partitioner_from(path):
    gin_config.parse([path])
    return gin_config.configured(partitioning.make_partitioner)()


def single_device_partitioner():
    return partitioning.make_partitioner(rules=(), data=1, devices=jax.devices()[:1])


def run_step(partitioner, optimizer, batch):
    model = Decoder(CONFIG)
    state = train_state.init_train_state(model, optimizer, BATCH_SHAPE, partitioner, seed=0)
    _, shardings = train_state.state_shardings(model, optimizer, BATCH_SHAPE, partitioner)
    batch_sharding = partitioner.batch_sharding()
    step = jax.jit(
        trainer.make_train_step(model, optimizer),
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, None),
    )
    forward = jax.jit(
        lambda p, b: model.apply({"params": p}, **trainer.model_inputs(b)),
        in_shardings=(shardings.params, batch_sharding),
    )
    with partitioner.activate():
        batch = jax.device_put(batch, batch_sharding)
        logits = forward(state.params, batch)
        new_state, metrics = step(state, batch)
    return state, logits, new_state, metrics


@pytest.mark.parametrize("mesh_file", gin_config.mesh_files())
def test_sharded_forward_and_train_step_equal_unsharded(mesh_file):
    # SGD keeps the comparison well-conditioned: Adam's first step is ~lr * sign(g), which
    # turns rounding noise in near-zero gradients into full-size differences.
    optimizer = optax.sgd(0.1)
    batch = make_batch()
    reference = run_step(single_device_partitioner(), optimizer, batch)
    sharded = run_step(partitioner_from(mesh_file), optimizer, batch)
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL)
    jax.tree.map(close, reference[0].params, sharded[0].params)  # same initialisation
    close(reference[1], sharded[1])  # forward
    jax.tree.map(close, reference[2].params, sharded[2].params)  # one optimizer step
    close(reference[3]["loss"], sharded[3]["loss"])


def test_fsdp_tp_splits_every_matrix_across_devices():
    partitioner = partitioner_from("mesh/fsdp_tp.gin")
    state = train_state.init_train_state(
        Decoder(CONFIG), optax.adamw(1e-3), BATCH_SHAPE, partitioner, seed=0
    )
    for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
        if leaf.ndim >= 2:
            shard = leaf.addressable_shards[0].data
            assert shard.size < leaf.size, f"{jax.tree_util.keystr(path)} is not sharded"


def test_activation_constraints_are_traced_under_the_rules():
    partitioner = partitioner_from("mesh/fsdp_tp.gin")
    model = Decoder(CONFIG)
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros(BATCH_SHAPE, jnp.int32)))
    with partitioner.activate():
        text = jax.jit(model.apply).lower(params, jnp.zeros(BATCH_SHAPE, jnp.int32)).as_text()
    assert "sharding" in text and "model" in text  # constraints reached the lowered program


def test_mesh_shape_errors_name_the_mismatch():
    with pytest.raises(ValueError, match="does not match the 8 devices"):
        partitioning.resolve_mesh_shape(2, 2, 1, 8)
    with pytest.raises(ValueError, match="at most one mesh axis"):
        partitioning.resolve_mesh_shape(-1, -1, 1, 8)
    with pytest.raises(ValueError, match="not in"):
        partitioning.expand_rules([("embed", "tensor")])
