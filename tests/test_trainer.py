"""The train step: microbatching equals the full batch; non-finite updates are skipped."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from codegen2_jax import partitioning, train_state, trainer
from codegen2_jax.model import Decoder, TransformerConfig

CONFIG = TransformerConfig(
    vocab_size=64, num_layers=2, embed_dim=32, num_heads=4, rotary_dim=4, dtype="float32"
)
SHAPE = (8, 16)


def batch(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, CONFIG.vocab_size, size=SHAPE).astype(np.int32)
    weights = rng.integers(0, 2, size=SHAPE).astype(np.float32)  # uneven scored tokens per row
    return {
        "decoder_input_tokens": tokens,
        "decoder_target_tokens": np.roll(tokens, -1, 1),
        "decoder_loss_weights": weights,
    }


def initial_state(optimizer):
    partitioner = partitioning.make_partitioner(rules=(), devices=jax.devices()[:1])
    return train_state.init_train_state(Decoder(CONFIG), optimizer, SHAPE, partitioner, seed=0)


def run(optimizer, features, num_microbatches=1, state=None):
    step = jax.jit(
        trainer.make_train_step(Decoder(CONFIG), optimizer, num_microbatches=num_microbatches)
    )
    return step(initial_state(optimizer) if state is None else state, features)


def test_microbatched_update_equals_full_batch():
    optimizer = optax.sgd(1.0)  # the update is the gradient itself: compare gradients exactly
    full, full_metrics = run(optimizer, batch())
    for num_microbatches in (2, 4, 8):
        micro, micro_metrics = run(optimizer, batch(), num_microbatches)
        np.testing.assert_allclose(micro_metrics["loss"], full_metrics["loss"], rtol=1e-6)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
            micro.params,
            full.params,
        )


def test_non_finite_loss_leaves_weights_bit_identical_and_is_counted():
    optimizer = optax.adamw(1e-2)
    before = initial_state(optimizer)
    poisoned = dict(batch(), decoder_loss_weights=np.full(SHAPE, np.nan, np.float32))
    expected = jax.tree.map(np.asarray, (before.params, before.opt_state))
    after, step_metrics = run(optimizer, poisoned, state=before)
    assert not bool(step_metrics["finite"])
    assert (int(after.step), int(after.skipped_updates), int(after.consecutive_skips)) == (1, 1, 1)
    got = jax.tree.map(np.asarray, (after.params, after.opt_state))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), got, expected)
    recovered, _ = run(optimizer, batch(), state=after)
    assert int(recovered.consecutive_skips) == 0 and int(recovered.skipped_updates) == 1
    assert not np.array_equal(recovered.params["lm_head"]["bias"], expected[0]["lm_head"]["bias"])


def test_non_finite_gradient_alone_is_caught():
    optimizer = optax.sgd(0.1)
    state = initial_state(optimizer)
    params = jax.tree.map(lambda x: x, state.params)
    params["ln_f"]["scale"] = params["ln_f"]["scale"].at[0].set(jnp.inf)
    after, step_metrics = run(optimizer, batch(), state=state.replace(params=params))
    assert not bool(step_metrics["finite"]) and int(after.skipped_updates) == 1
