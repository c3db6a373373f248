"""Pure, jit-able train and eval steps over the batch contract, with microbatching."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from codegen2_jax import batch_contract, losses
from codegen2_jax.train_state import TrainState

Batch = Mapping[str, jax.Array]


def model_inputs(batch: Batch) -> dict[str, jax.Array]:
    """The features the Decoder reads; absent packing/prefix features mean unpacked causal rows."""
    return {name: batch[name] for name in batch_contract.MODEL_INPUTS if name in batch}


def _loss_sums(model: nn.Module, params, batch: Batch, z_loss: float):
    logits = model.apply({"params": params}, **model_inputs(batch))
    return losses.cross_entropy_sums(
        logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"], z_loss
    )


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
    def split(x):
        if x.shape[0] % num_microbatches:
            raise ValueError(
                f"batch size {x.shape[0]} is not divisible by {num_microbatches} microbatches"
            )
        return x.reshape(num_microbatches, x.shape[0] // num_microbatches, *x.shape[1:])

    return {name: split(x) for name, x in batch.items()}


def _accumulated_gradients(model, params, batch: Batch, z_loss: float, num_microbatches: int):
    """Gradient of the summed objective and (ce, z, weight) sums, scanned over microbatches."""

    def objective(p, microbatch):
        ce, z, weight = _loss_sums(model, p, microbatch, z_loss)
        return ce + z, (ce, z, weight)

    grad_fn = jax.grad(objective, has_aux=True)
    if num_microbatches == 1:
        return grad_fn(params, batch)

    def accumulate(carry, microbatch):
        grads, sums = grad_fn(params, microbatch)
        return jax.tree.map(jnp.add, carry, (grads, sums)), None

    zeros = (jax.tree.map(jnp.zeros_like, params), (jnp.zeros(()),) * 3)
    (grads, sums), _ = jax.lax.scan(accumulate, zeros, _split_microbatches(batch, num_microbatches))
    return grads, sums


def make_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    *,
    z_loss: float = 1e-4,
    num_microbatches: int = 1,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds step(state, batch) -> (state, metrics); jit it with the partitioner's shardings.

    The loss is normalised by the batch's total loss weight, so every scored token counts the
    same whatever the microbatching. A non-finite loss or gradient leaves params and optimizer
    state bit-identical and is counted in the state.
    """

    def step(state: TrainState, batch: Batch):
        grads, (ce, z, weight) = _accumulated_gradients(
            model, state.params, batch, z_loss, num_microbatches
        )
        denominator = jnp.maximum(weight, 1.0)
        grads = jax.tree.map(lambda g: g / denominator, grads)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(ce + z) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        skipped = (~finite).astype(jnp.int32)
        new_state = state.replace(
            step=state.step + 1,
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            skipped_updates=state.skipped_updates + skipped,
            consecutive_skips=(state.consecutive_skips + 1) * skipped,
        )
        metrics = {
            "loss": ce / denominator,
            "z_loss": z / denominator,
            "grad_norm": grad_norm,
            "tokens": weight,
            "finite": finite,
            "skipped_updates": new_state.skipped_updates,
            "consecutive_skips": new_state.consecutive_skips,
        }
        return new_state, metrics

    return step


def make_eval_step(model: nn.Module) -> Callable[[dict, Batch], dict[str, jax.Array]]:
    """Builds eval(params, batch) -> {"loss_sum", "weight_sum"} for exact dataset-level means."""

    def evaluate(params, batch: Batch):
        ce, _, weight = _loss_sums(model, params, batch, 0.0)
        return {"loss_sum": ce, "weight_sum": weight}

    return evaluate
