"""TrainState and its sharded initialisation from abstract shapes (no host-side parameters)."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from codegen2_jax.partitioning import Partitioner


class TrainState(flax.struct.PyTreeNode):
    """Everything a training step reads and writes.

    Attributes:
      step: batches consumed (skipped non-finite updates included, so data position and step
        stay in lockstep).
      params: model parameters (fp32).
      opt_state: optax state.
      skipped_updates: total updates not applied because the loss or gradient was non-finite.
      consecutive_skips: non-finite updates in a row, reset by the next finite one.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    skipped_updates: jax.Array
    consecutive_skips: jax.Array


def _initial_state(model: nn.Module, optimizer, batch_shape: tuple[int, int], rng) -> TrainState:
    params = model.init(rng, jnp.zeros(batch_shape, jnp.int32))[
        "params"
    ]  # boxed: carries logical axis names
    zero = jnp.zeros((), jnp.int32)
    return TrainState(
        step=zero,
        params=params,
        opt_state=optimizer.init(params),  # optax maps over the boxes, so its state keeps them
        skipped_updates=zero,
        consecutive_skips=zero,
    )


def abstract_train_state(
    model: nn.Module, optimizer: optax.GradientTransformation, batch_shape: tuple[int, int]
):
    """(abstract TrainState of ShapeDtypeStructs, logical PartitionSpecs), nothing allocated."""
    init = functools.partial(_initial_state, model, optimizer, batch_shape)
    boxed = jax.eval_shape(init, jax.random.key(0))
    return _unbox_shapes(boxed), nn.get_partition_spec(boxed)


def _unbox_shapes(boxed):
    # Shapes carry no data to constrain: unbox without a sharding constraint, which would
    # otherwise fail on ShapeDtypeStructs whenever a mesh is active.
    return jax.tree.map(
        lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.Partitioned) else x,
        boxed,
        is_leaf=lambda x: isinstance(x, nn.Partitioned),
    )


def state_shardings(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    batch_shape: tuple[int, int],
    partitioner: Partitioner,
):
    """(abstract TrainState, NamedSharding for every leaf)."""
    abstract, specs = abstract_train_state(model, optimizer, batch_shape)
    return abstract, partitioner.tree_shardings(specs)


def param_shardings(model: nn.Module, batch_shape: tuple[int, int], partitioner: Partitioner):
    """(abstract params, NamedSharding for every leaf): what reading the parameters alone needs."""

    def init(rng):
        return model.init(rng, jnp.zeros(batch_shape, jnp.int32))["params"]

    boxed = jax.eval_shape(init, jax.random.key(0))
    return _unbox_shapes(boxed), partitioner.tree_shardings(nn.get_partition_spec(boxed))


def init_train_state(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    batch_shape: tuple[int, int],
    partitioner: Partitioner,
    seed: int,
    *,
    shardings=None,
) -> TrainState:
    """Initialises every array directly in its sharded layout on the mesh.

    shardings: the state's shardings where the caller already has them (state_shardings'
    second value); computed here otherwise.
    """
    if shardings is None:
        _, shardings = state_shardings(model, optimizer, batch_shape, partitioner)

    def init(rng):
        return nn.unbox(_initial_state(model, optimizer, batch_shape, rng))

    with partitioner.activate():
        return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))


def train_state_from_params(
    params,
    abstract_state: TrainState,
    optimizer: optax.GradientTransformation,
    partitioner: Partitioner,
    shardings,
) -> TrainState:
    """A fresh TrainState (step 0, new optimizer state) around given host parameters.

    Args:
      params: host arrays in the Decoder's tree (e.g. imported from Hugging Face).
      abstract_state, shardings: state_shardings()'s values, which params must match.

    Raises:
      ValueError: params differ from the model's parameters in tree, shape or dtype (each
        difference is named); nothing has been placed or compiled then.
    """
    expected = {jax.tree_util.keystr(k): v for k, v in _flat(abstract_state.params)}
    given = {jax.tree_util.keystr(k): v for k, v in _flat(params)}
    problems = [f"missing {name}" for name in sorted(expected.keys() - given.keys())]
    problems += [f"unexpected {name}" for name in sorted(given.keys() - expected.keys())]
    problems += [
        f"{name}: given {given[name].shape} {given[name].dtype}, model {x.shape} {x.dtype}"
        for name, x in expected.items()
        if name in given and (given[name].shape, given[name].dtype) != (x.shape, x.dtype)
    ]
    if problems:
        raise ValueError("parameters do not fit the model:\n  " + "\n  ".join(problems))
    # Each process places only its own shards (multi-host safe).
    placed = jax.tree.map(
        lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: x[index]),
        jax.tree.unflatten(
            jax.tree.structure(abstract_state.params), [given[name] for name in expected]
        ),
        shardings.params,
    )

    def fresh(p):
        zero = jnp.zeros((), jnp.int32)
        return TrainState(zero, p, optimizer.init(p), zero, zero)

    with partitioner.activate():
        return jax.jit(fresh, out_shardings=shardings, donate_argnums=0)(placed)


def _flat(tree):
    return jax.tree_util.tree_flatten_with_path(tree)[0]
