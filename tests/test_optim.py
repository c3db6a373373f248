"""The optimizer: which parameters decay, the warmup + cosine schedule's values, AdamW's step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from codegen2_jax import optim
from codegen2_jax.model import Decoder, TransformerConfig

PEAK, END, WARMUP, TOTAL = 1e-3, 1e-4, 10, 110


def _decoder_params():
    """A tiny Decoder's parameter tree as init returns it (metadata boxes included), abstractly."""
    config = TransformerConfig(vocab_size=32, num_layers=2, embed_dim=16, num_heads=2, rotary_dim=4)
    init = lambda: Decoder(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
    return jax.eval_shape(init)["params"]


def _by_path(tree) -> dict[str, object]:
    """Leaves keyed by their dict-key path, e.g. "layers/mlp/fc_in/bias" (boxes unwrapped)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(e.key for e in path if isinstance(e, jax.tree_util.DictKey)): leaf
        for path, leaf in leaves
    }


def test_kernels_and_embeddings_decay_biases_and_layernorm_scales_do_not():
    mask = _by_path(optim.decay_mask(_decoder_params()))
    assert {path for path, decays in mask.items() if decays} == {
        "embed/embedding",
        "layers/attn/qkv/kernel",
        "layers/attn/out/kernel",
        "layers/mlp/fc_in/kernel",
        "layers/mlp/fc_out/kernel",
        "lm_head/kernel",
    }
    assert {path for path, decays in mask.items() if not decays} == {
        "layers/ln/scale",
        "layers/ln/bias",
        "layers/mlp/fc_in/bias",
        "layers/mlp/fc_out/bias",
        "lm_head/bias",
        "ln_f/scale",
        "ln_f/bias",
    }


def test_decay_mask_reads_the_leaf_name_of_plain_and_nested_trees():
    params = {"a": {"kernel": 1.0, "bias": 2.0, "b": {"scale": 3.0, "embedding": 4.0}}}
    assert optim.decay_mask(params) == {
        "a": {"kernel": True, "bias": False, "b": {"scale": False, "embedding": True}}
    }


def test_schedule_warms_up_linearly_from_zero_then_decays_to_the_end_value():
    schedule = optim.make_schedule(
        peak_learning_rate=PEAK, end_learning_rate=END, warmup_steps=WARMUP, total_steps=TOTAL
    )
    at = lambda step: float(schedule(step))
    assert at(0) == 0.0  # warmup starts at zero
    np.testing.assert_allclose(at(WARMUP // 2), PEAK / 2, rtol=1e-6)  # linear
    np.testing.assert_allclose(at(WARMUP), PEAK, rtol=1e-6)  # the peak, after warmup
    np.testing.assert_allclose(at((WARMUP + TOTAL) // 2), (PEAK + END) / 2, rtol=1e-5)  # cosine
    np.testing.assert_allclose(at(TOTAL), END, rtol=1e-6)  # the end value at total_steps
    np.testing.assert_allclose(at(10 * TOTAL), END, rtol=1e-6)  # and after it
    values = [at(step) for step in range(TOTAL + 1)]
    assert values[: WARMUP + 1] == sorted(values[: WARMUP + 1])
    assert values[WARMUP:] == sorted(values[WARMUP:], reverse=True)


@pytest.mark.parametrize("total_steps", [WARMUP, WARMUP - 1])
def test_schedule_refuses_total_steps_within_the_warmup(total_steps):
    with pytest.raises(ValueError, match="must exceed warmup_steps"):
        optim.make_schedule(
            peak_learning_rate=PEAK,
            end_learning_rate=END,
            warmup_steps=WARMUP,
            total_steps=total_steps,
        )


def test_adamw_decays_only_the_masked_parameters_at_the_scheduled_rate():
    """With zero gradients Adam's term is 0: an update is -lr(step) * weight_decay * param."""
    params = {"dense": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 2.0)}}
    optimizer = optim.make_optimizer(
        peak_learning_rate=PEAK,
        end_learning_rate=END,
        warmup_steps=WARMUP,
        total_steps=TOTAL,
        weight_decay=0.1,
    )
    state = optimizer.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for step in range(3):
        updates, state = optimizer.update(zeros, state, params)
        lr = PEAK * step / WARMUP
        np.testing.assert_allclose(updates["dense"]["kernel"], -lr * 0.1 * 2.0, rtol=1e-6)
        np.testing.assert_array_equal(updates["dense"]["bias"], 0.0)


def test_gradients_are_clipped_to_the_global_norm_before_adam_sees_them():
    params = {"kernel": jnp.zeros((4,))}
    optimizer = optim.make_optimizer(warmup_steps=WARMUP, total_steps=TOTAL, clip_norm=1.0, b1=0.9)
    state = optimizer.init(params)
    _, state = optimizer.update({"kernel": jnp.full((4,), 3.0)}, state, params)  # norm 6
    first_moment = optax.tree_utils.tree_get(state, "mu")["kernel"]
    np.testing.assert_allclose(first_moment, (1 - 0.9) * 3.0 / 6.0, rtol=1e-6)  # of norm 1
