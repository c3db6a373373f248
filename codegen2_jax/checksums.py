"""Per-array fingerprints of a pytree (path → shape, dtype, SHA-256 of its bytes) and checks.

Orbax stores arrays without end-to-end checksums: a few flipped bytes in a data file restore
with no error and silently change weights. checkpointing.py records a fingerprint of every
saved array and compares it with the restored one.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

Fingerprint = dict[str, Any]  # {"shape": [int, ...], "dtype": str, "sha256": hex str}


def named_leaves(tree) -> dict[str, Any]:
    """{"params/embed/embedding": leaf, ...}: the names that error messages and records use."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf for path, leaf in flat}


def host_copy(x: jax.Array) -> np.ndarray:
    """The whole global array on this host, however it is sharded.

    In a single process, device_get assembles the array from its addressable shards. An array
    that spans processes is gathered to every process (a collective: all processes must call
    this in the same order, which they do by walking the same pytree), costing one whole leaf
    in device and host memory at a time plus the transfer. Per-shard digests would avoid that
    but tie the record to one sharding, and a restore onto a different mesh must still verify.
    """
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def sha256(host: np.ndarray) -> str:
    """Digest of the array's bytes in C order (viewed as uint8, so bf16 and 0-d arrays work)."""
    return hashlib.sha256(np.ascontiguousarray(host).reshape(-1).view(np.uint8)).hexdigest()


def _fingerprint_leaf(leaf: jax.Array) -> Fingerprint:
    return {"shape": list(leaf.shape), "dtype": str(leaf.dtype), "sha256": sha256(host_copy(leaf))}


def fingerprint(tree) -> dict[str, Fingerprint]:
    """Shape, dtype and digest of every leaf.

    Single-process, leaves are copied and hashed on a few threads (both release the GIL; at
    most that many leaves sit in host memory at once). Across processes the gathers are
    collectives, so they run one at a time in tree order.
    """
    leaves = named_leaves(tree)
    if jax.process_count() > 1:
        records = [_fingerprint_leaf(leaf) for leaf in leaves.values()]
    else:
        with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            records = list(pool.map(_fingerprint_leaf, leaves.values()))
    return dict(zip(leaves, records, strict=True))


@jax.jit
def _finite_flags(tree):
    def finite(x):
        return jnp.isfinite(x).all() if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)

    return jax.tree.map(finite, tree)


def non_finite_leaves(tree) -> list[str]:
    """Names of floating-point leaves holding a NaN or an infinity.

    Reduced on device in one compiled call (cached per state layout), so only one boolean per
    leaf crosses to the host.
    """
    flags = named_leaves(jax.device_get(_finite_flags(tree)))
    return [name for name, finite in flags.items() if not finite]


def layout_mismatches(saved: dict[str, Fingerprint], target) -> list[str]:
    """Differences in parameter set, shape or dtype between a saved record and a target tree.

    Args:
      saved: name → fingerprint, as written at save time.
      target: pytree of arrays or ShapeDtypeStructs to restore into.

    Returns:
      One line per difference, naming the leaf; empty when the layouts agree.
    """
    wanted = named_leaves(target)
    problems = [
        f"{name}: in the checkpoint but not in the target" for name in saved.keys() - wanted
    ]
    problems += [
        f"{name}: in the target but not in the checkpoint" for name in wanted.keys() - saved
    ]
    for name in sorted(wanted.keys() & saved.keys()):
        have = (tuple(saved[name]["shape"]), saved[name]["dtype"])
        want = (tuple(wanted[name].shape), str(wanted[name].dtype))
        if have != want:
            problems.append(
                f"{name}: checkpoint has shape {have[0]} dtype {have[1]}, "
                f"target has shape {want[0]} dtype {want[1]}"
            )
    return sorted(problems)
