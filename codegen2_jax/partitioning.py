"""Device mesh over ("data", "fsdp", "model") and the logical-axis rules that shard onto it.

Parameters and activations carry logical axis names (model/layers.py); a rule table maps each
name to mesh axes. The tables live in gin/mesh/ so that a run switches between data
parallelism, FSDP and FSDP + tensor parallelism without touching code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "model")
LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]
BATCH_AXES = ("activation_batch", "activation_length")


def resolve_mesh_shape(data: int, fsdp: int, model: int, num_devices: int) -> tuple[int, ...]:
    """Fills at most one -1 axis so the mesh covers every device; errors name the mismatch."""
    shape = [data, fsdp, model]
    if shape.count(-1) > 1:
        raise ValueError(
            f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} model={model}"
        )
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"{num_devices} devices do not divide into mesh axes of size {known}")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"mesh data={shape[0]} x fsdp={shape[1]} x model={shape[2]} = {math.prod(shape)} "
            f"does not match the {num_devices} devices"
        )
    return tuple(shape)


@dataclasses.dataclass(frozen=True)
class Partitioner:
    """A mesh plus the rule table that maps logical axis names onto it."""

    mesh: Mesh
    rules: tuple[tuple[str, str | tuple[str, ...] | None], ...]

    @contextlib.contextmanager
    def activate(self):
        """Context for tracing: activation constraints resolve against this mesh and rules."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    def sharding(self, logical_axes: Sequence[str | None]) -> NamedSharding:
        """NamedSharding for one array with the given logical axis names."""
        spec = nn.logical_to_mesh_axes(PartitionSpec(*logical_axes), self.rules)
        return NamedSharding(self.mesh, spec)

    def tree_shardings(self, logical_specs):
        """NamedShardings for a pytree of logical PartitionSpecs (nn.get_partition_spec output)."""
        return nn.logical_to_mesh_sharding(logical_specs, self.mesh, self.rules)

    def batch_sharding(self) -> NamedSharding:
        """Sharding of [batch, length] feature arrays."""
        return self.sharding(BATCH_AXES)

    def global_batch(self, local: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """Assembles this process's rows of each feature into global batch-sharded arrays."""
        sharding = self.batch_sharding()
        return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}

    @property
    def data_parallel_size(self) -> int:
        """How many ways the batch dimension is split (the product of its mesh axes)."""
        spec = self.batch_sharding().spec[0]
        axes = (spec,) if isinstance(spec, str) else (spec or ())
        return math.prod(self.mesh.shape[a] for a in axes)


def make_partitioner(
    *,
    rules: LogicalRules,
    data: int = -1,
    fsdp: int = 1,
    model: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Partitioner:
    """Builds the (data, fsdp, model) mesh over all devices (one axis may be -1: the rest).

    Args:
      rules: (logical name or names, mesh axis or axes or None) pairs; names not listed are
        replicated.
      data, fsdp, model: mesh axis sizes.
      devices: defaults to jax.devices() (every process's devices in a multi-host run).
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(data, fsdp, model, len(devices))
    try:
        device_array = mesh_utils.create_device_mesh(shape, devices)
    except (AssertionError, NotImplementedError, ValueError):
        # Fake CPU devices and odd slices have no physical topology: plain row-major order.
        device_array = np.asarray(devices).reshape(shape)
    return Partitioner(mesh=Mesh(device_array, MESH_AXES), rules=expand_rules(rules))


def expand_rules(rules: LogicalRules) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """Flax's rule pairs; a tuple of names on the left is shorthand for one rule per name."""
    expanded = []
    for names, axes in rules:
        axes = tuple(axes) if isinstance(axes, list) else axes
        if axes is not None and not set((axes,) if isinstance(axes, str) else axes) <= set(
            MESH_AXES
        ):
            raise ValueError(f"rule for {names!r} names mesh axes {axes!r}, not in {MESH_AXES}")
        for name in (names,) if isinstance(names, str) else names:
            expanded.append((name, axes))
    return tuple(expanded)
