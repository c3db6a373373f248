"""Device digests: the same however an array is sharded, and changed by any flipped bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from codegen2_jax import partitioning
from codegen2_jax.checkpointing import checksums

ARRAY = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)


def digest(array, placement=None) -> str:
    return checksums.fingerprint({"x": jax.device_put(array, placement)})["x"]["digest"]


def test_the_digest_does_not_depend_on_sharding():
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))
    placements = [
        jax.devices()[3],
        NamedSharding(mesh, P(("a", "b"))),  # rows over all eight devices
        NamedSharding(mesh, P(None, "b")),  # columns over four, replicated over two
    ]
    assert len({digest(ARRAY, placement) for placement in placements}) == 1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8", "bool"])
def test_one_flipped_bit_changes_the_digest(dtype):
    array = (ARRAY > 0) if dtype == "bool" else ARRAY.astype(dtype)
    flipped = array.copy()
    flipped.reshape(-1).view(np.uint8)[37] ^= 1  # bool: True <-> False
    assert digest(flipped) != digest(array)


def test_fingerprints_are_taken_inside_the_training_mesh_context():
    """Saves run inside partitioner.activate(): the per-device digests use their own meshes."""
    partitioner = partitioning.make_partitioner(rules=[("activation_batch", ("data", "fsdp"))])
    sharded = jax.device_put(
        np.arange(64, dtype=np.float32), partitioner.sharding(("activation_batch",))
    )
    tree = {"sharded": sharded, "replicated": jnp.ones(3)}
    outside = checksums.PendingFingerprints(tree).result()
    with partitioner.activate():
        assert checksums.PendingFingerprints(tree).result() == outside
